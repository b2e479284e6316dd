/* cdaphne._layer: the C core of cdaphne.layers.InMemoryChannelLayer.
 *
 * Three heap types:
 *   Core     one per layer: channels, groups, expiry settings, sweep timer.
 *   Channel  one per channel name: a ring of (message, deadline) pairs and a
 *            FIFO of waiting receivers.
 *   Receive  the awaitable returned by Core.receive(): completes at once when
 *            a message is queued, else yields one loop future and is handed
 *            a message directly by the sender that wakes it.
 *
 * Invariant: a channel never holds queued messages and waiters at the same
 * time.  A sender hands its message to the first waiter; a waiter is queued
 * only when the ring is empty.
 *
 * Locking: every Core has one mutex that guards its dicts, the channel rings
 * and the waiter lists.  Inside a critical section we run no Python code and
 * allocate no GC-tracked object (on 3.11 that can start a collection, which
 * runs finalizers): references that must be dropped are collected in a
 * cd_bag and released after unlocking; futures are woken after unlocking.
 * Deep copies (which may call copy.deepcopy) happen outside the lock too.
 * Waiters are woken on their own loop: directly when the sender runs on it,
 * else with loop.call_soon_threadsafe().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>
#include <time.h>

#define CD_MAX_NAME_LENGTH 100
#define CD_COPY_MAX_DEPTH 64
#define CD_CAP_CACHE_MAX 4096
#define CD_SHRINK_MIN 1024

/* ---- module state ---------------------------------------------------- */

typedef struct {
    PyTypeObject *Core_type;    /* strong */
    PyTypeObject *Channel_type; /* strong */
    PyTypeObject *Receive_type; /* strong */
    PyObject *get_running_loop; /* strong: asyncio.events._get_running_loop */
    PyObject *deepcopy;         /* strong: copy.deepcopy */
    PyObject *wake;             /* strong: this module's _wake() */
    PyObject *future_type;      /* strong: asyncio.Future */
    PyObject *base_create_future; /* strong: BaseEventLoop.create_future */
    PyObject *kwnames_loop;       /* strong: ("loop",) */
    PyObject *s_create_future;    /* strong: interned method names */
    PyObject *s_set_result;
    PyObject *s_call_soon_threadsafe;
    PyObject *s_call_later;
    PyObject *s_cancel;
    PyObject *s_is_closed;
    PyObject *s_blocking;
    PyObject *s_on_timer;
    PyObject *s_asgi_channel;
} cd_layer_state;

static struct PyModuleDef cd_layer_module_def;

static inline cd_layer_state *
cd_layer_get_state(PyObject *module)
{
    return (cd_layer_state *)PyModule_GetState(module);
}

/* ---- mutex ----------------------------------------------------------- */

#if PY_VERSION_HEX >= 0x030D0000
#define CD_HAVE_PYMUTEX 1
#endif

typedef struct {
#ifdef CD_HAVE_PYMUTEX
    PyMutex m;
#else
    PyThread_type_lock l; /* owned */
#endif
} cd_lock;

static int
cd_lock_init(cd_lock *lk)
{
#ifdef CD_HAVE_PYMUTEX
    memset(lk, 0, sizeof(*lk));
#else
    lk->l = PyThread_allocate_lock();
    if (lk->l == NULL) {
        PyErr_NoMemory();
        return -1;
    }
#endif
    return 0;
}

static void
cd_lock_fini(cd_lock *lk)
{
#ifndef CD_HAVE_PYMUTEX
    if (lk->l != NULL) {
        PyThread_free_lock(lk->l);
        lk->l = NULL;
    }
#else
    (void)lk;
#endif
}

/* Takes the lock; waits with the GIL released if another thread holds it. */
static inline void
cd_lock_acquire(cd_lock *lk)
{
#ifdef CD_HAVE_PYMUTEX
    PyMutex_Lock(&lk->m);
#else
    if (!PyThread_acquire_lock(lk->l, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(lk->l, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
#endif
}

static inline void
cd_lock_release(cd_lock *lk)
{
#ifdef CD_HAVE_PYMUTEX
    PyMutex_Unlock(&lk->m);
#else
    PyThread_release_lock(lk->l);
#endif
}

/* ---- bags: references to drop, waiters to wake, after unlocking ------- */

typedef struct {
    PyObject **items; /* owned when != inline_items */
    Py_ssize_t n;
    Py_ssize_t cap;
    PyObject *inline_items[16];
} cd_bag;

static void
cd_bag_init(cd_bag *b)
{
    b->items = b->inline_items;
    b->n = 0;
    b->cap = (Py_ssize_t)(sizeof(b->inline_items) / sizeof(PyObject *));
}

/* Steals o (which may be NULL: nothing to do).  Safe with the lock held:
 * it only calls the raw allocator.  If that fails the reference is leaked
 * rather than dropped inside the critical section. */
static void
cd_bag_put(cd_bag *b, PyObject *o)
{
    if (o == NULL) {
        return;
    }
    if (b->n == b->cap) {
        Py_ssize_t ncap = b->cap * 2;
        PyObject **items;
        if (b->items == b->inline_items) {
            items = PyMem_RawMalloc(ncap * sizeof(PyObject *));
            if (items != NULL) {
                memcpy(items, b->items, b->n * sizeof(PyObject *));
            }
        }
        else {
            items = PyMem_RawRealloc(b->items, ncap * sizeof(PyObject *));
        }
        if (items == NULL) {
            return;
        }
        b->items = items;
        b->cap = ncap;
    }
    b->items[b->n++] = o;
}

/* Drops every reference; call without the lock. */
static void
cd_bag_clear(cd_bag *b)
{
    for (Py_ssize_t i = 0; i < b->n; i++) {
        Py_DECREF(b->items[i]);
    }
    if (b->items != b->inline_items) {
        PyMem_RawFree(b->items);
    }
    cd_bag_init(b);
}

/* ---- object layouts -------------------------------------------------- */

typedef struct cd_receive cd_receive;

typedef struct {
    PyObject *msg;   /* strong */
    double deadline; /* monotonic seconds */
} cd_entry;

typedef struct {
    PyObject_HEAD
    /* Read-only after creation. */
    PyObject *name; /* strong: exact str */
    Py_ssize_t capacity;
    /* Private, guarded by the core's lock. */
    cd_entry *ring; /* owned: PyMem array of size entries */
    Py_ssize_t head;
    Py_ssize_t len;
    Py_ssize_t size;
    cd_receive *wfirst; /* strong: one reference per queued waiter */
    cd_receive *wlast;  /* borrowed: tail of the same list */
    Py_ssize_t nwaiters;
    Py_ssize_t handed; /* messages handed to waiters not yet resumed */
    PyObject *groups;  /* strong: dict group -> float add time, or NULL */
    int attached;      /* 1 while core->channels maps name to us */
} cd_channel;

enum cd_receive_state {
    CD_RECEIVE_INIT,
    CD_RECEIVE_WAITING,
    CD_RECEIVE_DONE,
};

struct cd_receive {
    PyObject_HEAD
    PyObject *core; /* strong: the cd_core */
    PyObject *name; /* strong: channel name as given */
    /* Set while WAITING; guarded by the core's lock. */
    cd_channel *chan; /* strong */
    PyObject *loop;   /* strong: loop of the awaiting task */
    PyObject *fut;    /* strong: future yielded to that task */
    PyObject *result; /* strong: message handed over by a sender */
    double result_deadline;
    cd_receive *prev; /* borrowed: links in chan's waiter list */
    cd_receive *next; /* borrowed */
    int queued;       /* 1 while in chan's waiter list */
    enum cd_receive_state state;
};

typedef struct {
    PyObject_HEAD
    /* Read-only after __init__. */
    cd_layer_state *st; /* borrowed: our type keeps the module alive */
    double expiry;
    double group_expiry;
    Py_ssize_t capacity;
    PyObject *capacity_for;  /* strong: callable(prefix) -> int, or None */
    PyObject *channel_full;  /* strong: exception class */
    PyObject *check_channel; /* strong: slow-path validators (raise) */
    PyObject *check_group;   /* strong */
    /* Private, guarded by lock. */
    cd_lock lock;
    int lock_ready;
    PyObject *channels;  /* strong: dict name -> cd_channel */
    PyObject *groups;    /* strong: dict group -> dict name -> chan */
    PyObject *cap_cache; /* strong: dict prefix -> int */
    Py_ssize_t channels_peak;
    Py_ssize_t groups_peak;
    double next_sweep;
    double next_group_sweep;
    /* Timer state: touched only with the GIL, never inside the lock. */
    PyObject *timer;      /* strong: TimerHandle or NULL */
    PyObject *timer_loop; /* strong: loop of timer, or NULL */
} cd_core;

static inline double
cd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double
cd_clamp(double v, double lo, double hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static double
cd_sweep_interval(cd_core *self)
{
    return cd_clamp(self->expiry / 2.0, 0.01, 1.0);
}

static double
cd_group_sweep_interval(cd_core *self)
{
    return cd_clamp(self->group_expiry / 2.0, 0.01, 60.0);
}

/* ---- message copies -------------------------------------------------- */

static inline int
cd_is_atomic(PyObject *o)
{
    PyTypeObject *tp = Py_TYPE(o);
    return (tp == &PyUnicode_Type || tp == &PyLong_Type ||
            tp == &PyFloat_Type || tp == &PyBytes_Type || tp == &PyBool_Type ||
            o == Py_None);
}

static PyObject *cd_copy(cd_layer_state *st, PyObject *o, int depth,
                         PyObject **memo, int *too_deep);

/* cd_copy of an exact dict: the values that are not atomic are copied. */
static PyObject *
cd_copy_dict(cd_layer_state *st, PyObject *o, int depth, PyObject **memo,
             int *too_deep)
{
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    PyObject *res = PyDict_Copy(o);
    if (res == NULL) {
        return NULL;
    }
    while (PyDict_Next(o, &pos, &k, &v)) {
        if (cd_is_atomic(v)) {
            continue;
        }
        Py_INCREF(k);
        Py_INCREF(v);
        PyObject *vc = cd_copy(st, v, depth + 1, memo, too_deep);
        int rc = vc == NULL ? -1 : PyDict_SetItem(res, k, vc);
        Py_XDECREF(vc);
        Py_DECREF(k);
        Py_DECREF(v);
        if (rc < 0) {
            Py_DECREF(res);
            return NULL;
        }
    }
    return res;
}

/* cd_copy of an exact list. */
static PyObject *
cd_copy_list(cd_layer_state *st, PyObject *o, int depth, PyObject **memo,
             int *too_deep)
{
    Py_ssize_t n = PyList_GET_SIZE(o);
    PyObject *res = PyList_New(n);
    if (res == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PyList_GET_SIZE(o)) {
            /* Shrunk by code run from deepcopy: keep what we have. */
            if (PyList_SetSlice(res, i, n, NULL) < 0) {
                goto error;
            }
            break;
        }
        PyObject *item = Py_NewRef(PyList_GET_ITEM(o, i));
        PyObject *ic = cd_copy(st, item, depth + 1, memo, too_deep);
        Py_DECREF(item);
        if (ic == NULL) {
            goto error;
        }
        PyList_SET_ITEM(res, i, ic);
    }
    return res;

error:
    Py_DECREF(res);
    return NULL;
}

/* cd_copy of an exact tuple: o itself when no item needed a copy. */
static PyObject *
cd_copy_tuple(cd_layer_state *st, PyObject *o, int depth, PyObject **memo,
              int *too_deep)
{
    Py_ssize_t n = PyTuple_GET_SIZE(o);
    int same = 1;
    PyObject *res = PyTuple_New(n);
    if (res == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(o, i);
        PyObject *ic = cd_copy(st, item, depth + 1, memo, too_deep);
        if (ic == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        same &= (ic == item);
        PyTuple_SET_ITEM(res, i, ic);
    }
    if (same) {
        Py_SETREF(res, Py_NewRef(o));
    }
    return res;
}

/* Returns a new reference to a copy of o that shares nothing mutable with
 * it.  dict, list and tuple are copied here; str, bytes, int, float, bool
 * and None are shared; anything else goes through copy.deepcopy with one
 * memo per message.  Returns NULL with an exception set, or NULL without
 * one and *too_deep set when nesting passes CD_COPY_MAX_DEPTH (a cycle). */
static PyObject *
cd_copy(cd_layer_state *st, PyObject *o, int depth, PyObject **memo,
        int *too_deep)
{
    PyTypeObject *tp = Py_TYPE(o);

    if (cd_is_atomic(o)) {
        return Py_NewRef(o);
    }
    if (depth > CD_COPY_MAX_DEPTH) {
        *too_deep = 1;
        return NULL;
    }
    if (tp == &PyDict_Type) {
        return cd_copy_dict(st, o, depth, memo, too_deep);
    }
    if (tp == &PyList_Type) {
        return cd_copy_list(st, o, depth, memo, too_deep);
    }
    if (tp == &PyTuple_Type) {
        return cd_copy_tuple(st, o, depth, memo, too_deep);
    }
    if (*memo == NULL) {
        *memo = PyDict_New();
        if (*memo == NULL) {
            return NULL;
        }
    }
    return PyObject_CallFunctionObjArgs(st->deepcopy, o, *memo, NULL);
}

/* New reference: the copy stored for one receiver. */
static PyObject *
cd_copy_message(cd_layer_state *st, PyObject *msg)
{
    PyObject *memo = NULL;
    int too_deep = 0;
    PyObject *res = cd_copy(st, msg, 0, &memo, &too_deep);
    if (res == NULL && too_deep && !PyErr_Occurred()) {
        /* Self-referencing or very deep: let deepcopy keep the shape. */
        res = PyObject_CallOneArg(st->deepcopy, msg);
    }
    Py_XDECREF(memo);
    return res;
}

/* ---- names ----------------------------------------------------------- */

static inline int
cd_name_char(unsigned char c)
{
    return ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.');
}

/* 1 if name is certainly valid (ASCII fast path), 0 if the Python
 * validator must decide (non-ASCII, odd or invalid names). */
static int
cd_name_fast_valid(PyObject *name, int allow_bang)
{
    if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_ASCII(name)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    const unsigned char *s = PyUnicode_1BYTE_DATA(name);
    Py_ssize_t i = 0;
    if (n == 0 || n >= CD_MAX_NAME_LENGTH) {
        return 0;
    }
    while (i < n && s[i] != '!') {
        if (!cd_name_char(s[i])) {
            return 0;
        }
        i++;
    }
    if (i == 0) {
        return 0;
    }
    if (i < n) {
        if (!allow_bang) {
            return 0;
        }
        for (i++; i < n; i++) {
            if (!cd_name_char(s[i])) {
                return 0;
            }
        }
    }
    return 1;
}

/* Validates name and returns a new reference to it as an exact str, or
 * NULL with TypeError set. */
static PyObject *
cd_checked_name(PyObject *checker, PyObject *name, int allow_bang)
{
    if (cd_name_fast_valid(name, allow_bang)) {
        return Py_NewRef(name);
    }
    PyObject *r = PyObject_CallOneArg(checker, name);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str");
        return NULL;
    }
    /* A valid str subclass: key our dicts by a plain str. */
    return PyUnicode_CheckExact(name) ? Py_NewRef(name)
                                      : PyUnicode_FromObject(name);
}

/* New reference to the capacity of a channel: patterns are matched
 * against the non-local part (up to and including '!'), cached. */
static int
cd_capacity_for(cd_core *self, PyObject *name, Py_ssize_t *out)
{
    PyObject *prefix = NULL, *cap = NULL;
    int rc = -1;

    if (self->capacity_for == Py_None) {
        *out = self->capacity;
        return 0;
    }
    Py_ssize_t bang =
        PyUnicode_FindChar(name, '!', 0, PyUnicode_GET_LENGTH(name), 1);
    if (bang == -2) {
        goto done;
    }
    prefix =
        bang < 0 ? Py_NewRef(name) : PyUnicode_Substring(name, 0, bang + 1);
    if (prefix == NULL) {
        goto done;
    }
    cap = PyDict_GetItemWithError(self->cap_cache, prefix);
    if (cap != NULL) {
        Py_INCREF(cap);
    }
    else {
        if (PyErr_Occurred()) {
            goto done;
        }
        cap = PyObject_CallOneArg(self->capacity_for, prefix);
        if (cap == NULL) {
            goto done;
        }
        if (PyDict_GET_SIZE(self->cap_cache) >= CD_CAP_CACHE_MAX) {
            PyDict_Clear(self->cap_cache);
        }
        if (PyDict_SetItem(self->cap_cache, prefix, cap) < 0) {
            goto done;
        }
    }
    *out = PyLong_AsSsize_t(cap);
    if (*out == -1 && PyErr_Occurred()) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(prefix);
    Py_XDECREF(cap);
    return rc;
}

/* ---- channels -------------------------------------------------------- */

static inline int
cd_channel_idle(cd_channel *ch)
{
    /* A waiter holding a handed-over message may still give it back (if
     * its task is cancelled): keep the channel until it has resumed. */
    return (ch->len == 0 && ch->wfirst == NULL && ch->handed == 0 &&
            (ch->groups == NULL || PyDict_GET_SIZE(ch->groups) == 0));
}

/* Lock held.  Makes room for one more entry; -1 if out of memory. */
static int
cd_channel_reserve(cd_channel *ch)
{
    if (ch->len < ch->size) {
        return 0;
    }
    Py_ssize_t nsize = ch->size ? ch->size * 2 : 4;
    cd_entry *ring = PyMem_RawMalloc(nsize * sizeof(cd_entry));
    if (ring == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < ch->len; i++) {
        ring[i] = ch->ring[(ch->head + i) % ch->size];
    }
    PyMem_RawFree(ch->ring);
    ch->ring = ring;
    ch->head = 0;
    ch->size = nsize;
    return 0;
}

/* Lock held.  Steals msg. */
static int
cd_channel_push(cd_channel *ch, PyObject *msg, double deadline, int front)
{
    if (cd_channel_reserve(ch) < 0) {
        return -1;
    }
    Py_ssize_t i;
    if (front) {
        ch->head = (ch->head + ch->size - 1) % ch->size;
        i = ch->head;
    }
    else {
        i = (ch->head + ch->len) % ch->size;
    }
    ch->ring[i].msg = msg;
    ch->ring[i].deadline = deadline;
    ch->len++;
    return 0;
}

/* Lock held.  Returns a stolen reference to the oldest entry. */
static PyObject *
cd_channel_shift(cd_channel *ch, double *deadline)
{
    cd_entry *e = &ch->ring[ch->head];
    PyObject *msg = e->msg;
    if (deadline != NULL) {
        *deadline = e->deadline;
    }
    e->msg = NULL;
    ch->head = (ch->head + 1) % ch->size;
    ch->len--;
    return msg;
}

/* Lock held.  Drops expired messages at the head of the ring.  Unlike
 * Channels' own in-memory layer, the channel keeps its groups: membership
 * ends only with group_discard(), group_expiry or flush() (as in
 * channels_redis).  Returns how many were dropped. */
static Py_ssize_t
cd_channel_expire(cd_channel *ch, double now, cd_bag *trash)
{
    Py_ssize_t n = 0;
    while (ch->len > 0 && ch->ring[ch->head].deadline <= now) {
        cd_bag_put(trash, cd_channel_shift(ch, NULL));
        n++;
    }
    return n;
}

/* Lock held.  Unlinks a queued waiter; its list reference goes to trash. */
static void
cd_channel_unlink(cd_channel *ch, cd_receive *w, cd_bag *trash)
{
    if (!w->queued) {
        return;
    }
    if (w->prev) {
        w->prev->next = w->next;
    }
    else {
        ch->wfirst = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    else {
        ch->wlast = w->prev;
    }
    w->prev = w->next = NULL;
    w->queued = 0;
    ch->nwaiters--;
    cd_bag_put(trash, (PyObject *)w);
}

/* Lock held.  Delivers msg (stolen): to the first waiter, whose list
 * reference moves into wakes, or into the ring.  Returns 0, 1 if the ring
 * is full (msg not stolen), -1 out of memory (msg not stolen). */
static int
cd_channel_put(cd_channel *ch, PyObject *msg, double deadline, int front,
               int force, cd_bag *wakes)
{
    cd_receive *w = ch->wfirst;
    if (w != NULL) {
        ch->wfirst = w->next;
        if (w->next) {
            w->next->prev = NULL;
        }
        else {
            ch->wlast = NULL;
        }
        w->prev = w->next = NULL;
        w->queued = 0;
        ch->nwaiters--;
        w->result = msg;
        w->result_deadline = deadline;
        ch->handed++;
        cd_bag_put(wakes, (PyObject *)w);
        return 0;
    }
    if (!force && ch->len >= ch->capacity) {
        return 1;
    }
    return cd_channel_push(ch, msg, deadline, front) < 0 ? -1 : 0;
}

/* Lock held.  Finds or creates the channel for an already validated exact
 * str name.  *spare is a fresh channel (strong) used if none exists; it is
 * set to NULL when consumed.  Returns borrowed, or NULL if the caller must
 * unlock and build a spare first (no exception), or NULL with an
 * exception. */
static cd_channel *
cd_core_find(cd_core *self, PyObject *name, cd_channel **spare)
{
    PyObject *ch = PyDict_GetItemWithError(self->channels, name);
    if (ch != NULL || PyErr_Occurred()) {
        return (cd_channel *)ch;
    }
    if (*spare == NULL) {
        return NULL;
    }
    if (PyDict_SetItem(self->channels, name, (PyObject *)*spare) < 0) {
        return NULL;
    }
    ch = (PyObject *)*spare;
    (*spare)->attached = 1;
    Py_DECREF(ch); /* The dict holds it now. */
    *spare = NULL;
    Py_ssize_t n = PyDict_GET_SIZE(self->channels);
    if (n > self->channels_peak) {
        self->channels_peak = n;
    }
    return (cd_channel *)ch;
}

/* New channel object for a validated name, or NULL with an exception. */
static cd_channel *
cd_channel_new(cd_core *self, PyObject *name)
{
    Py_ssize_t capacity;
    if (cd_capacity_for(self, name, &capacity) < 0) {
        return NULL;
    }
    PyTypeObject *tp = self->st->Channel_type;
    cd_channel *ch = (cd_channel *)tp->tp_alloc(tp, 0);
    if (ch == NULL) {
        return NULL;
    }
    ch->name = Py_NewRef(name);
    ch->capacity = capacity;
    return ch;
}

/* Takes the lock and returns the channel (borrowed) with the lock held,
 * creating and validating it on a miss.  On error returns NULL with an
 * exception set and the lock released.  *name_out receives a new
 * reference to the exact str used as the key. */
static cd_channel *
cd_core_lock_channel(cd_core *self, PyObject *name, PyObject **name_out)
{
    cd_channel *spare = NULL, *ch = NULL;
    PyObject *key = NULL;

    if (PyUnicode_CheckExact(name)) {
        cd_lock_acquire(&self->lock);
        ch = (cd_channel *)PyDict_GetItemWithError(self->channels, name);
        if (ch != NULL) {
            *name_out = Py_NewRef(name);
            return ch;
        }
        cd_lock_release(&self->lock);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    key = cd_checked_name(self->check_channel, name, 1);
    if (key == NULL) {
        return NULL;
    }
    spare = cd_channel_new(self, key);
    if (spare == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    cd_lock_acquire(&self->lock);
    ch = cd_core_find(self, key, &spare);
    if (ch == NULL) {
        cd_lock_release(&self->lock);
        Py_XDECREF(spare);
        Py_DECREF(key);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "channel lookup failed");
        }
        return NULL;
    }
    if (spare != NULL) {
        /* Another thread created it meanwhile: drop ours after unlock.
         * A fresh channel holds nothing that could run code when freed,
         * but we still avoid freeing under the lock. */
        cd_lock_release(&self->lock);
        Py_DECREF(spare);
        cd_lock_acquire(&self->lock);
        ch = (cd_channel *)PyDict_GetItemWithError(self->channels, key);
        if (ch == NULL) {
            cd_lock_release(&self->lock);
            Py_DECREF(key);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "channel vanished");
            }
            return NULL;
        }
    }
    *name_out = key;
    return ch;
}

/* ---- waking ---------------------------------------------------------- */

static void cd_receive_abandon(cd_receive *self);

/* New reference to the running loop of this thread, or None. */
static PyObject *
cd_running_loop(cd_layer_state *st)
{
    PyObject *loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        PyErr_Clear();
        loop = Py_NewRef(Py_None);
    }
    return loop;
}

/* 1 if loop has create_future in its own __dict__ (where it beats the
 * class's method, as in asyncio's own loop.create_future() calls), 0 if
 * not, -1 with an exception. */
static int
cd_loop_shadows_create_future(cd_layer_state *st, PyObject *loop)
{
    if (Py_TYPE(loop)->tp_dictoffset == 0) {
        return 0;
    }
    PyObject *d = PyObject_GenericGetDict(loop, NULL);
    if (d == NULL) {
        return -1;
    }
    int r = PyDict_Contains(d, st->s_create_future);
    Py_DECREF(d);
    return r;
}

/* New reference: loop.create_future().  A loop whose class keeps
 * BaseEventLoop's method, and whose instance does not replace it, gets
 * asyncio.Future(loop=loop) directly, which is what that method returns,
 * without its Python frame.  Anything else is called, through the same
 * lookup as loop.create_future() (instance attribute first). */
static PyObject *
cd_new_future(cd_layer_state *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    PyObject *m = PyObject_GetAttr((PyObject *)tp, st->s_create_future);
    if (m == NULL) {
        return NULL;
    }
    int base = m == st->base_create_future &&
               tp->tp_getattro == PyObject_GenericGetAttr;
    Py_DECREF(m);
    if (base) {
        int shadowed = cd_loop_shadows_create_future(st, loop);
        if (shadowed < 0) {
            return NULL;
        }
        base = !shadowed;
    }
    if (!base) {
        return PyObject_CallMethodNoArgs(loop, st->s_create_future);
    }
    PyObject *args[1] = {loop};
    return PyObject_Vectorcall(st->future_type, args, 0, st->kwnames_loop);
}

/* Wakes every waiter in wakes (each holding a handed-over message) and
 * empties the bag.  Call without the lock.  Never raises: a waiter whose
 * loop is closed gives its message back. */
static void
cd_wake_all(cd_layer_state *st, cd_bag *wakes)
{
    PyObject *cur = NULL;
    if (wakes->n == 0) {
        return;
    }
    for (Py_ssize_t i = 0; i < wakes->n; i++) {
        cd_receive *w = (cd_receive *)wakes->items[i];
        /* Read under the GIL; the waiter cannot resume before its future
         * is done, and only we complete it. */
        PyObject *fut = Py_XNewRef(w->fut);
        PyObject *loop = Py_XNewRef(w->loop);
        PyObject *r = NULL;
        if (fut == NULL || loop == NULL) {
            goto next;
        }
        if (cur == NULL) {
            cur = cd_running_loop(st);
        }
        if (loop == cur) {
            r = PyObject_CallMethodOneArg(fut, st->s_set_result, Py_None);
            if (r == NULL) {
                /* Already cancelled: its task will throw into us. */
                PyErr_Clear();
            }
        }
        else {
            PyObject *args[3] = {loop, st->wake, fut};
            r = PyObject_VectorcallMethod(st->s_call_soon_threadsafe, args,
                                          3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
            if (r == NULL) {
                /* Loop closed: nobody will resume this waiter. */
                PyErr_Clear();
                cd_receive_abandon(w);
            }
        }
        Py_XDECREF(r);
    next:
        Py_XDECREF(fut);
        Py_XDECREF(loop);
    }
    Py_XDECREF(cur);
    cd_bag_clear(wakes);
}

/* ---- sweeping and the timer ------------------------------------------ */

/* Rebuilds a dict that shrank far below its peak: dicts never give their
 * table back on deletion.  Lock held; fresh is an empty dict (strong,
 * consumed or dropped into trash). */
static void
cd_shrink(PyObject **dp, Py_ssize_t *peak, PyObject *fresh, cd_bag *trash)
{
    Py_ssize_t n = PyDict_GET_SIZE(*dp);
    if (fresh == NULL || *peak < CD_SHRINK_MIN || n * 4 > *peak) {
        cd_bag_put(trash, fresh);
        return;
    }
    if (PyDict_Update(fresh, *dp) < 0) {
        PyErr_Clear();
        cd_bag_put(trash, fresh);
        return;
    }
    cd_bag_put(trash, *dp);
    *dp = fresh;
    *peak = n;
}

/* Lock held.  Ends the memberships of ch older than oldest; dead is an
 * empty scratch list, left empty. */
static void
cd_channel_expire_groups(cd_core *self, PyObject *name, cd_channel *ch,
                         double oldest, PyObject *dead, cd_bag *trash)
{
    PyObject *g, *t;
    Py_ssize_t gpos = 0;
    if (ch->groups == NULL) {
        return;
    }
    while (PyDict_Next(ch->groups, &gpos, &g, &t)) {
        if (PyFloat_AS_DOUBLE(t) < oldest) {
            (void)PyList_Append(dead, g);
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
        g = PyList_GET_ITEM(dead, i);
        PyObject *members = PyDict_GetItemWithError(self->groups, g);
        if (members != NULL &&
            PyDict_GetItemWithError(members, name) != NULL) {
            cd_bag_put(trash, Py_NewRef((PyObject *)ch));
            (void)PyDict_DelItem(members, name);
            if (PyDict_GET_SIZE(members) == 0) {
                cd_bag_put(trash, Py_NewRef(members));
                (void)PyDict_DelItem(self->groups, g);
            }
        }
        cd_bag_put(trash, Py_NewRef(g));
        (void)PyDict_DelItem(ch->groups, g);
    }
    PyErr_Clear();
    (void)PyList_SetSlice(dead, 0, PyList_GET_SIZE(dead), NULL);
}

/* Lock held.  Forgets the channels named in dead (they go to trash). */
static void
cd_core_detach(cd_core *self, PyObject *dead, cd_bag *trash)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
        PyObject *name = PyList_GET_ITEM(dead, i);
        PyObject *value = PyDict_GetItemWithError(self->channels, name);
        if (value != NULL) {
            ((cd_channel *)value)->attached = 0;
            cd_bag_put(trash, Py_NewRef(value));
            (void)PyDict_DelItem(self->channels, name);
        }
    }
    PyErr_Clear();
}

/* Lock held.  Drops expired messages and forgets idle channels; their
 * names are left in dead (an empty list), which keeps them alive until
 * after unlock. */
static void
cd_core_forget_idle(cd_core *self, double now, PyObject *dead, cd_bag *trash)
{
    PyObject *name, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(self->channels, &pos, &name, &value)) {
        cd_channel *ch = (cd_channel *)value;
        cd_channel_expire(ch, now, trash);
        if (cd_channel_idle(ch)) {
            (void)PyList_Append(dead, name);
        }
    }
    cd_core_detach(self, dead, trash);
}

/* Drops expired messages and memberships and forgets idle channels. */
static int
cd_core_sweep(cd_core *self, int force_groups)
{
    cd_bag trash;
    PyObject *dead = NULL, *fresh_c = NULL, *fresh_g = NULL;
    PyObject *name, *value;
    Py_ssize_t pos;
    int rc = -1;

    cd_bag_init(&trash);
    dead = PyList_New(0);
    fresh_c = PyDict_New();
    fresh_g = PyDict_New();
    if (dead == NULL || fresh_c == NULL || fresh_g == NULL) {
        goto done;
    }
    cd_lock_acquire(&self->lock);
    double now = cd_now();
    self->next_sweep = now + cd_sweep_interval(self);
    if (force_groups || now >= self->next_group_sweep) {
        double oldest = now - self->group_expiry;
        self->next_group_sweep = now + cd_group_sweep_interval(self);
        pos = 0;
        while (PyDict_Next(self->channels, &pos, &name, &value)) {
            cd_channel_expire_groups(self, name, (cd_channel *)value, oldest,
                                     dead, &trash);
        }
    }
    cd_core_forget_idle(self, now, dead, &trash);
    cd_shrink(&self->channels, &self->channels_peak, fresh_c, &trash);
    fresh_c = NULL;
    cd_shrink(&self->groups, &self->groups_peak, fresh_g, &trash);
    fresh_g = NULL;
    cd_lock_release(&self->lock);
    rc = 0;
done:
    cd_bag_clear(&trash);
    Py_XDECREF(dead);
    Py_XDECREF(fresh_c);
    Py_XDECREF(fresh_g);
    return rc;
}

/* Lazy sweep, run by every operation: cheap unless one is due. */
static inline int
cd_core_maybe_sweep(cd_core *self, double now)
{
    if (now < self->next_sweep) {
        return 0;
    }
    return cd_core_sweep(self, 0);
}

/* Schedules the periodic sweep on the running loop if there is anything
 * left to reclaim and no live timer.  Never raises. */
static void
cd_core_arm_timer(cd_core *self, PyObject *loop)
{
    PyObject *own = NULL, *cb = NULL, *delay = NULL, *handle = NULL;
    cd_layer_state *st = self->st;

    if (self->channels == NULL || self->groups == NULL) {
        return;
    }
    if (PyDict_GET_SIZE(self->channels) == 0 &&
        PyDict_GET_SIZE(self->groups) == 0) {
        return;
    }
    if (loop == NULL) {
        loop = own = cd_running_loop(st);
    }
    if (loop == Py_None) {
        goto done;
    }
    if (self->timer != NULL) {
        if (self->timer_loop == loop) {
            goto done;
        }
        /* Armed on another loop: keep it unless that loop is closed, in
         * which case the timer will never fire. */
        PyObject *closed =
            PyObject_CallMethodNoArgs(self->timer_loop, st->s_is_closed);
        int is_closed = closed == NULL ? 1 : PyObject_IsTrue(closed);
        Py_XDECREF(closed);
        PyErr_Clear();
        if (is_closed == 0) {
            goto done;
        }
        Py_CLEAR(self->timer);
        Py_CLEAR(self->timer_loop);
    }
    cb = PyObject_GetAttr((PyObject *)self, st->s_on_timer);
    delay = PyFloat_FromDouble(cd_sweep_interval(self));
    if (cb == NULL || delay == NULL) {
        goto done;
    }
    PyObject *args[3] = {loop, delay, cb};
    handle = PyObject_VectorcallMethod(
        st->s_call_later, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (handle == NULL) {
        goto done;
    }
    self->timer = handle;
    self->timer_loop = Py_NewRef(loop);
    handle = NULL;
done:
    PyErr_Clear();
    Py_XDECREF(own);
    Py_XDECREF(cb);
    Py_XDECREF(delay);
    Py_XDECREF(handle);
}

/* Methods of a Core whose __init__ failed or never ran must not touch the
 * (NULL) dicts. */
static int
cd_core_ready(cd_core *self)
{
    if (self->channels == NULL || self->groups == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is not initialized");
        return 0;
    }
    return 1;
}

/* ---- Core methods ---------------------------------------------------- */

static int
cd_check_message(PyObject *msg, cd_layer_state *st)
{
    if (!PyDict_Check(msg)) {
        PyErr_SetString(PyExc_AssertionError, "message is not a dict");
        return -1;
    }
    int has = PyDict_Contains(msg, st->s_asgi_channel);
    if (has != 0) {
        if (has > 0) {
            PyErr_SetString(PyExc_AssertionError,
                            "message must not contain __asgi_channel__");
        }
        return -1;
    }
    return 0;
}

static PyObject *
Core_send(cd_core *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *copy = NULL, *key = NULL;
    cd_bag trash, wakes;
    cd_channel *ch;
    int r;

    if (!cd_core_ready(self)) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(channel, message)");
        return NULL;
    }
    cd_bag_init(&trash);
    cd_bag_init(&wakes);
    if (cd_check_message(args[1], self->st) < 0) {
        return NULL;
    }
    double now = cd_now();
    if (cd_core_maybe_sweep(self, now) < 0) {
        return NULL;
    }
    copy = cd_copy_message(self->st, args[1]);
    if (copy == NULL) {
        return NULL;
    }
    ch = cd_core_lock_channel(self, args[0], &key);
    if (ch == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    cd_channel_expire(ch, now, &trash);
    r = cd_channel_put(ch, copy, now + self->expiry, 0, 0, &wakes);
    cd_lock_release(&self->lock);
    if (r == 0) {
        copy = NULL;
    }
    cd_wake_all(self->st, &wakes);
    cd_bag_clear(&trash);
    Py_XDECREF(copy);
    if (r == 1) {
        PyErr_SetObject(self->channel_full, key);
    }
    else if (r < 0) {
        PyErr_NoMemory();
    }
    Py_DECREF(key);
    if (r != 0) {
        return NULL;
    }
    if (self->timer == NULL) {
        cd_core_arm_timer(self, NULL);
    }
    Py_RETURN_NONE;
}

/* Snapshot of the live members of group: *chans receives a PyMem array of
 * *k strong references (NULL when the group is unknown).  Returns -1 with
 * an exception set if out of memory. */
static int
cd_core_members(cd_core *self, PyObject *group, double now,
                cd_channel ***chans, Py_ssize_t *k)
{
    cd_channel **arr = NULL;
    Py_ssize_t n = 0;

    cd_lock_acquire(&self->lock);
    PyObject *members = PyDict_GetItemWithError(self->groups, group);
    if (members != NULL) {
        n = PyDict_GET_SIZE(members);
        arr = PyMem_RawMalloc((n ? n : 1) * sizeof(cd_channel *));
    }
    if (arr != NULL) {
        double oldest = now - self->group_expiry;
        PyObject *name, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(members, &pos, &name, &value)) {
            cd_channel *ch = (cd_channel *)value;
            PyObject *t =
                ch->groups ? PyDict_GetItemWithError(ch->groups, group) : NULL;
            if (t != NULL && PyFloat_AS_DOUBLE(t) < oldest) {
                continue; /* Expired: the sweep removes it. */
            }
            arr[(*k)++] = (cd_channel *)Py_NewRef(value);
        }
        PyErr_Clear();
        if (*k < n) {
            self->next_group_sweep = now;
        }
    }
    cd_lock_release(&self->lock);
    *chans = arr;
    if (members != NULL && arr == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* A PyMem array of k copies of msg (new references), made outside the
 * lock, or NULL with an exception set. */
static PyObject **
cd_copy_each(cd_layer_state *st, PyObject *msg, Py_ssize_t k)
{
    PyObject **copies = PyMem_RawCalloc(k, sizeof(PyObject *));
    if (copies == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        copies[i] = cd_copy_message(st, msg);
        if (copies[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) {
                Py_DECREF(copies[j]);
            }
            PyMem_RawFree(copies);
            return NULL;
        }
    }
    return copies;
}

/* Hands copies[i] to chans[i] (taken: set to NULL) and wakes the waiters;
 * full members drop the message silently.  Returns how many dropped. */
static Py_ssize_t
cd_core_deliver(cd_core *self, cd_channel **chans, PyObject **copies,
                Py_ssize_t k, double now)
{
    cd_bag trash, wakes;
    Py_ssize_t dropped = 0;

    cd_bag_init(&trash);
    cd_bag_init(&wakes);
    cd_lock_acquire(&self->lock);
    double deadline = now + self->expiry;
    for (Py_ssize_t i = 0; i < k; i++) {
        cd_channel *ch = chans[i];
        if (!ch->attached) {
            continue; /* Forgotten meanwhile: it left every group. */
        }
        cd_channel_expire(ch, now, &trash);
        int r = cd_channel_put(ch, copies[i], deadline, 0, 0, &wakes);
        if (r == 0) {
            copies[i] = NULL;
        }
        else {
            dropped++;
        }
    }
    cd_lock_release(&self->lock);
    cd_wake_all(self->st, &wakes);
    cd_bag_clear(&trash);
    return dropped;
}

/* Drops the references of a PyMem array of n objects and frees it. */
static void
cd_free_refs(PyObject **items, Py_ssize_t n)
{
    if (items == NULL) {
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(items[i]);
    }
    PyMem_RawFree(items);
}

static PyObject *
Core_group_send(cd_core *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *group = NULL, *res = NULL;
    cd_channel **chans = NULL;
    PyObject **copies = NULL;
    Py_ssize_t k = 0;

    if (!cd_core_ready(self)) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "group_send(group, message)");
        return NULL;
    }
    if (cd_check_message(args[1], self->st) < 0) {
        return NULL;
    }
    group = cd_checked_name(self->check_group, args[0], 0);
    if (group == NULL) {
        return NULL;
    }
    double now = cd_now();
    if (cd_core_maybe_sweep(self, now) < 0 ||
        cd_core_members(self, group, now, &chans, &k) < 0) {
        goto done;
    }
    if (k == 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    copies = cd_copy_each(self->st, args[1], k);
    if (copies == NULL) {
        goto done;
    }
    Py_ssize_t dropped = cd_core_deliver(self, chans, copies, k, now);
    if (dropped > 0) {
        res = Py_BuildValue("(nn)", dropped, k);
    }
    else {
        res = Py_NewRef(Py_None);
    }
    if (self->timer == NULL) {
        cd_core_arm_timer(self, NULL);
    }
done:
    cd_free_refs(copies, copies != NULL ? k : 0);
    if (chans != NULL) {
        for (Py_ssize_t i = 0; i < k; i++) {
            Py_DECREF(chans[i]);
        }
        PyMem_RawFree(chans);
    }
    Py_XDECREF(group);
    return res;
}

static PyObject *
Core_group_add(cd_core *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *group = NULL, *key = NULL, *res = NULL;
    PyObject *new_members = NULL, *new_groups = NULL, *t = NULL;
    cd_bag trash;
    cd_channel *ch;

    if (!cd_core_ready(self)) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "group_add(group, channel)");
        return NULL;
    }
    cd_bag_init(&trash);
    group = cd_checked_name(self->check_group, args[0], 0);
    if (group == NULL) {
        return NULL;
    }
    double now = cd_now();
    if (cd_core_maybe_sweep(self, now) < 0) {
        goto done;
    }
    new_members = PyDict_New();
    new_groups = PyDict_New();
    t = PyFloat_FromDouble(now);
    if (new_members == NULL || new_groups == NULL || t == NULL) {
        goto done;
    }
    ch = cd_core_lock_channel(self, args[1], &key);
    if (ch == NULL) {
        goto done;
    }
    PyObject *members = PyDict_GetItemWithError(self->groups, group);
    int rc = 0;
    if (members == NULL) {
        members = new_members;
        rc = PyDict_SetItem(self->groups, group, members);
        if (PyDict_GET_SIZE(self->groups) > self->groups_peak) {
            self->groups_peak = PyDict_GET_SIZE(self->groups);
        }
    }
    if (ch->groups == NULL) {
        ch->groups = new_groups;
        new_groups = NULL;
    }
    if (rc == 0 && PyDict_GetItemWithError(members, key) == NULL) {
        rc = PyDict_SetItem(members, key, (PyObject *)ch);
    }
    if (rc == 0) {
        /* The old float, if any, goes after unlock. */
        PyObject *old = PyDict_GetItemWithError(ch->groups, group);
        cd_bag_put(&trash, Py_XNewRef(old));
        rc = PyDict_SetItem(ch->groups, group, t);
    }
    cd_lock_release(&self->lock);
    if (rc == 0) {
        res = Py_NewRef(Py_None);
        if (self->timer == NULL) {
            cd_core_arm_timer(self, NULL);
        }
    }
done:
    cd_bag_clear(&trash);
    Py_XDECREF(group);
    Py_XDECREF(key);
    Py_XDECREF(new_members);
    Py_XDECREF(new_groups);
    Py_XDECREF(t);
    return res;
}

static PyObject *
Core_group_discard(cd_core *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *group = NULL, *key = NULL, *res = NULL;
    cd_bag trash;

    if (!cd_core_ready(self)) {
        return NULL;
    }
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "group_discard(group, channel)");
        return NULL;
    }
    cd_bag_init(&trash);
    key = cd_checked_name(self->check_channel, args[1], 1);
    if (key == NULL) {
        return NULL;
    }
    group = cd_checked_name(self->check_group, args[0], 0);
    if (group == NULL) {
        goto done;
    }
    cd_lock_acquire(&self->lock);
    PyObject *members = PyDict_GetItemWithError(self->groups, group);
    PyObject *ch = members ? PyDict_GetItemWithError(members, key) : NULL;
    if (ch != NULL) {
        cd_channel *c = (cd_channel *)ch;
        cd_bag_put(&trash, Py_NewRef(ch));
        (void)PyDict_DelItem(members, key);
        if (c->groups != NULL &&
            PyDict_GetItemWithError(c->groups, group) != NULL) {
            cd_bag_put(&trash, Py_NewRef(group));
            (void)PyDict_DelItem(c->groups, group);
        }
        if (PyDict_GET_SIZE(members) == 0) {
            cd_bag_put(&trash, Py_NewRef(members));
            (void)PyDict_DelItem(self->groups, group);
        }
    }
    PyErr_Clear();
    cd_lock_release(&self->lock);
    res = Py_NewRef(Py_None);
done:
    cd_bag_clear(&trash);
    Py_XDECREF(group);
    Py_XDECREF(key);
    return res;
}

static PyObject *
Core_flush(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    cd_bag trash;
    PyObject *dead = NULL, *fresh_g = NULL, *name, *value;
    Py_ssize_t pos = 0;

    cd_bag_init(&trash);
    dead = PyList_New(0);
    fresh_g = PyDict_New();
    if (dead == NULL || fresh_g == NULL) {
        goto error;
    }
    cd_lock_acquire(&self->lock);
    while (PyDict_Next(self->channels, &pos, &name, &value)) {
        cd_channel *ch = (cd_channel *)value;
        while (ch->len > 0) {
            cd_bag_put(&trash, cd_channel_shift(ch, NULL));
        }
        cd_bag_put(&trash, ch->groups);
        ch->groups = NULL;
        if (ch->wfirst == NULL) {
            (void)PyList_Append(dead, name);
        }
    }
    cd_core_detach(self, dead, &trash);
    cd_bag_put(&trash, self->groups);
    self->groups = fresh_g;
    fresh_g = NULL;
    self->groups_peak = 0;
    cd_lock_release(&self->lock);
    PyDict_Clear(self->cap_cache);
    cd_bag_clear(&trash);
    Py_DECREF(dead);
    Py_RETURN_NONE;
error:
    Py_XDECREF(dead);
    Py_XDECREF(fresh_g);
    return NULL;
}

static PyObject *
Core_close(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    /* Cancel the sweep timer if it lives on this thread's loop; a timer on
     * another loop fires once more and finds nothing to do. */
    if (self->timer != NULL) {
        PyObject *cur = cd_running_loop(self->st);
        if (cur == self->timer_loop) {
            PyObject *r =
                PyObject_CallMethodNoArgs(self->timer, self->st->s_cancel);
            Py_XDECREF(r);
            PyErr_Clear();
            Py_CLEAR(self->timer);
            Py_CLEAR(self->timer_loop);
        }
        Py_DECREF(cur);
    }
    Py_RETURN_NONE;
}

static PyObject *
Core_sweep(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    if (cd_core_sweep(self, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core_on_timer(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->timer);
    Py_CLEAR(self->timer_loop);
    if (self->channels == NULL) {
        Py_RETURN_NONE;
    }
    if (cd_core_sweep(self, 0) < 0) {
        PyErr_Clear();
    }
    cd_core_arm_timer(self, NULL);
    Py_RETURN_NONE;
}

static PyObject *cd_receive_new(cd_core *core, PyObject *name);

static PyObject *
Core_receive(cd_core *self, PyObject *name)
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    return cd_receive_new(self, name);
}

/* Debug views: snapshots built without the lock (GIL only). */
static PyObject *
Core_debug_channels(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    PyObject *res = PyDict_New(), *name, *value;
    Py_ssize_t pos = 0;
    if (res == NULL) {
        return NULL;
    }
    while (PyDict_Next(self->channels, &pos, &name, &value)) {
        cd_channel *ch = (cd_channel *)value;
        if (ch->len == 0 && ch->wfirst == NULL) {
            continue;
        }
        PyObject *v = Py_BuildValue("(nn)", ch->len, ch->nwaiters);
        if (v == NULL || PyDict_SetItem(res, name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(v);
    }
    return res;
}

static PyObject *
Core_debug_groups(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    PyObject *res = PyDict_New(), *name, *value;
    Py_ssize_t pos = 0;
    if (res == NULL) {
        return NULL;
    }
    while (PyDict_Next(self->groups, &pos, &name, &value)) {
        PyObject *v = PyDict_Keys(value);
        if (v == NULL || PyDict_SetItem(res, name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(v);
    }
    return res;
}

static PyObject *
Core_stats(cd_core *self, PyObject *Py_UNUSED(ignored))
{
    if (!cd_core_ready(self)) {
        return NULL;
    }
    Py_ssize_t messages = 0, waiters = 0, members = 0;
    PyObject *name, *value;
    Py_ssize_t pos = 0;
    cd_lock_acquire(&self->lock);
    while (PyDict_Next(self->channels, &pos, &name, &value)) {
        messages += ((cd_channel *)value)->len;
        waiters += ((cd_channel *)value)->nwaiters;
    }
    pos = 0;
    while (PyDict_Next(self->groups, &pos, &name, &value)) {
        members += PyDict_GET_SIZE(value);
    }
    Py_ssize_t nch = PyDict_GET_SIZE(self->channels);
    Py_ssize_t ngr = PyDict_GET_SIZE(self->groups);
    cd_lock_release(&self->lock);
    return Py_BuildValue("{snsnsnsnsnsO}", "channels", nch, "groups", ngr,
                         "messages", messages, "waiters", waiters,
                         "memberships", members, "timer",
                         self->timer ? Py_True : Py_False);
}

static int
Core_init(cd_core *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "expiry",       "group_expiry",  "capacity",    "capacity_for",
        "channel_full", "check_channel", "check_group", NULL};
    double expiry, group_expiry;
    Py_ssize_t capacity;
    PyObject *capacity_for, *channel_full, *check_channel, *check_group;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ddnOOOO:Core", kwlist,
                                     &expiry, &group_expiry, &capacity,
                                     &capacity_for, &channel_full,
                                     &check_channel, &check_group)) {
        return -1;
    }
    if (self->channels != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is already initialized");
        return -1;
    }
    self->expiry = expiry;
    self->group_expiry = group_expiry;
    self->capacity = capacity;
    self->capacity_for = Py_NewRef(capacity_for);
    self->channel_full = Py_NewRef(channel_full);
    self->check_channel = Py_NewRef(check_channel);
    self->check_group = Py_NewRef(check_group);
    self->channels = PyDict_New();
    self->groups = PyDict_New();
    self->cap_cache = PyDict_New();
    if (self->channels == NULL || self->groups == NULL ||
        self->cap_cache == NULL) {
        return -1;
    }
    if (cd_lock_init(&self->lock) < 0) {
        return -1;
    }
    self->lock_ready = 1;
    double now = cd_now();
    self->next_sweep = now + cd_sweep_interval(self);
    self->next_group_sweep = now + cd_group_sweep_interval(self);
    return 0;
}

static PyObject *
Core_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
         PyObject *Py_UNUSED(kwds))
{
    cd_core *self = (cd_core *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    PyObject *mod = PyType_GetModuleByDef(type, &cd_layer_module_def);
    if (mod == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->st = cd_layer_get_state(mod);
    return (PyObject *)self;
}

static int
Core_traverse(cd_core *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->capacity_for);
    Py_VISIT(self->channel_full);
    Py_VISIT(self->check_channel);
    Py_VISIT(self->check_group);
    Py_VISIT(self->channels);
    Py_VISIT(self->groups);
    Py_VISIT(self->cap_cache);
    Py_VISIT(self->timer);
    Py_VISIT(self->timer_loop);
    return 0;
}

static int
Core_clear(cd_core *self)
{
    Py_CLEAR(self->capacity_for);
    Py_CLEAR(self->channel_full);
    Py_CLEAR(self->check_channel);
    Py_CLEAR(self->check_group);
    Py_CLEAR(self->channels);
    Py_CLEAR(self->groups);
    Py_CLEAR(self->cap_cache);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->timer_loop);
    return 0;
}

static void
Core_dealloc(cd_core *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)Core_clear(self);
    if (self->lock_ready) {
        cd_lock_fini(&self->lock);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef Core_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Core_send, METH_FASTCALL,
     "send(channel, message): queue a copy or raise ChannelFull."},
    {"group_send", (PyCFunction)(void (*)(void))Core_group_send, METH_FASTCALL,
     "group_send(group, message) -> None or (dropped, members)."},
    {"group_add", (PyCFunction)(void (*)(void))Core_group_add, METH_FASTCALL,
     "group_add(group, channel)."},
    {"group_discard", (PyCFunction)(void (*)(void))Core_group_discard,
     METH_FASTCALL, "group_discard(group, channel)."},
    {"receive", (PyCFunction)Core_receive, METH_O,
     "receive(channel) -> awaitable message."},
    {"flush", (PyCFunction)Core_flush, METH_NOARGS,
     "Drop every message and group."},
    {"close", (PyCFunction)Core_close, METH_NOARGS,
     "Cancel the sweep timer of this thread's loop."},
    {"sweep", (PyCFunction)Core_sweep, METH_NOARGS,
     "Drop expired messages and memberships, forget idle channels."},
    {"_on_timer", (PyCFunction)Core_on_timer, METH_NOARGS, NULL},
    {"debug_channels", (PyCFunction)Core_debug_channels, METH_NOARGS,
     "{name: (queued, waiters)} for busy channels."},
    {"debug_groups", (PyCFunction)Core_debug_groups, METH_NOARGS,
     "{group: [channel, ...]}."},
    {"stats", (PyCFunction)Core_stats, METH_NOARGS, "Counters."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Core_slots[] = {
    {Py_tp_doc, "C core of cdaphne.layers.InMemoryChannelLayer."},
    {Py_tp_new, Core_new},
    {Py_tp_init, Core_init},
    {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "cdaphne._layer.Core",
    .basicsize = sizeof(cd_core),
    .flags =
        (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE),
    .slots = Core_slots,
};

/* ---- Channel type (internal) ----------------------------------------- */

static int
Channel_traverse(cd_channel *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->name);
    Py_VISIT(self->groups);
    for (Py_ssize_t i = 0; i < self->len; i++) {
        Py_VISIT(self->ring[(self->head + i) % self->size].msg);
    }
    for (cd_receive *w = self->wfirst; w != NULL; w = w->next) {
        Py_VISIT((PyObject *)w);
    }
    return 0;
}

static int
Channel_clear(cd_channel *self)
{
    while (self->len > 0) {
        PyObject *msg = cd_channel_shift(self, NULL);
        Py_DECREF(msg);
    }
    while (self->wfirst != NULL) {
        cd_receive *w = self->wfirst;
        self->wfirst = w->next;
        if (self->wfirst != NULL) {
            self->wfirst->prev = NULL;
        }
        w->prev = w->next = NULL;
        w->queued = 0;
        self->nwaiters--;
        Py_DECREF(w);
    }
    self->wlast = NULL;
    Py_CLEAR(self->groups);
    Py_CLEAR(self->name);
    return 0;
}

static void
Channel_dealloc(cd_channel *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)Channel_clear(self);
    PyMem_RawFree(self->ring);
    self->ring = NULL;
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot Channel_slots[] = {
    {Py_tp_dealloc, Channel_dealloc},
    {Py_tp_traverse, Channel_traverse},
    {Py_tp_clear, Channel_clear},
    {0, NULL},
};

static PyType_Spec Channel_spec = {
    .name = "cdaphne._layer.Channel",
    .basicsize = sizeof(cd_channel),
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
              Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION),
    .slots = Channel_slots,
};

/* ---- Receive awaitable ----------------------------------------------- */

static PyObject *
cd_receive_new(cd_core *core, PyObject *name)
{
    PyTypeObject *tp = core->st->Receive_type;
    cd_receive *self = (cd_receive *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->core = Py_NewRef((PyObject *)core);
    self->name = Py_NewRef(name);
    self->state = CD_RECEIVE_INIT;
    return (PyObject *)self;
}

/* Lock held.  Moves the waiting-only references into trash. */
static void
cd_receive_detach(cd_receive *self, cd_bag *trash)
{
    cd_bag_put(trash, (PyObject *)self->chan);
    cd_bag_put(trash, self->loop);
    cd_bag_put(trash, self->fut);
    self->chan = NULL;
    self->loop = NULL;
    self->fut = NULL;
    self->state = CD_RECEIVE_DONE;
}

/* Leaves the wait: unqueues us, or gives a message that was handed to us
 * back to the channel (to the next waiter, else to the front of the ring)
 * so that a cancelled receive loses nothing. */
static void
cd_receive_abandon(cd_receive *self)
{
    cd_core *core = (cd_core *)self->core;
    cd_bag trash, wakes;

    if (self->state != CD_RECEIVE_WAITING || core == NULL) {
        self->state = CD_RECEIVE_DONE;
        return;
    }
    cd_bag_init(&trash);
    cd_bag_init(&wakes);
    cd_lock_acquire(&core->lock);
    cd_channel *ch = self->chan;
    PyObject *msg = self->result;
    self->result = NULL;
    if (ch != NULL) {
        cd_channel_unlink(ch, self, &trash);
        if (msg != NULL) {
            ch->handed--;
            int r =
                cd_channel_put(ch, msg, self->result_deadline, 1, 1, &wakes);
            if (r == 0) {
                msg = NULL;
            }
        }
    }
    cd_bag_put(&trash, msg);
    cd_receive_detach(self, &trash);
    cd_lock_release(&core->lock);
    cd_wake_all(core->st, &wakes);
    cd_bag_clear(&trash);
}

/* Lock held.  Queues self as ch's last waiter, on loop (stolen) with fut
 * (not stolen); the list owns one reference to self. */
static void
cd_receive_enqueue(cd_receive *self, cd_channel *ch, PyObject *loop,
                   PyObject *fut)
{
    self->prev = ch->wlast;
    self->next = NULL;
    if (ch->wlast) {
        ch->wlast->next = self;
    }
    else {
        ch->wfirst = self;
    }
    ch->wlast = self;
    ch->nwaiters++;
    self->queued = 1;
    Py_INCREF(self);
    self->chan = (cd_channel *)Py_NewRef((PyObject *)ch);
    self->loop = loop;
    self->fut = Py_NewRef(fut);
    self->state = CD_RECEIVE_WAITING;
}

static PySendResult
cd_receive_start(cd_receive *self, PyObject **presult)
{
    cd_core *core = (cd_core *)self->core;
    cd_layer_state *st = core->st;
    PyObject *key = NULL, *loop = NULL, *fut = NULL, *msg = NULL;
    cd_bag trash;
    cd_channel *ch;
    PySendResult res = PYGEN_ERROR;

    cd_bag_init(&trash);
    double now = cd_now();
    if (cd_core_maybe_sweep(core, now) < 0) {
        goto done;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        ch = cd_core_lock_channel(core, self->name, &key);
        if (ch == NULL) {
            goto done;
        }
        cd_channel_expire(ch, now, &trash);
        if (ch->len > 0) {
            msg = cd_channel_shift(ch, NULL);
            cd_lock_release(&core->lock);
            self->state = CD_RECEIVE_DONE;
            *presult = msg;
            res = PYGEN_RETURN;
            goto done;
        }
        if (fut != NULL) {
            cd_receive_enqueue(self, ch, loop, fut);
            loop = NULL;
            cd_lock_release(&core->lock);
            if (PyObject_SetAttr(fut, st->s_blocking, Py_True) < 0) {
                cd_receive_abandon(self);
                goto done;
            }
            cd_core_arm_timer(core, self->loop);
            *presult = fut;
            fut = NULL;
            res = PYGEN_NEXT;
            goto done;
        }
        cd_lock_release(&core->lock);
        Py_CLEAR(key);
        /* Nothing queued: make a future outside the lock and look again. */
        loop = cd_running_loop(st);
        if (loop == Py_None) {
            PyErr_SetString(PyExc_RuntimeError,
                            "receive() must be awaited in a running loop");
            goto done;
        }
        fut = cd_new_future(st, loop);
        if (fut == NULL) {
            goto done;
        }
        now = cd_now();
    }
done:
    cd_bag_clear(&trash);
    Py_XDECREF(key);
    Py_XDECREF(loop);
    Py_XDECREF(fut);
    if (res == PYGEN_ERROR) {
        *presult = NULL;
    }
    return res;
}

static PySendResult
cd_receive_resume(cd_receive *self, PyObject **presult)
{
    cd_core *core = (cd_core *)self->core;
    cd_bag trash;
    PyObject *fut = NULL, *r = NULL;

    cd_bag_init(&trash);
    cd_lock_acquire(&core->lock);
    PyObject *msg = self->result;
    self->result = NULL;
    if (msg != NULL) {
        if (self->chan != NULL) {
            self->chan->handed--;
        }
        cd_receive_detach(self, &trash);
        cd_lock_release(&core->lock);
        cd_bag_clear(&trash);
        *presult = msg;
        return PYGEN_RETURN;
    }
    fut = Py_XNewRef(self->fut);
    cd_lock_release(&core->lock);
    /* Woken without a message: only a cancelled future does that. */
    r = fut ? PyObject_CallMethod(fut, "result", NULL) : NULL;
    Py_XDECREF(fut);
    if (r == NULL) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        cd_receive_abandon(self);
        if (et == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "receive() lost its future");
        }
        else {
            PyErr_Restore(et, ev, tb);
        }
        *presult = NULL;
        return PYGEN_ERROR;
    }
    Py_DECREF(r);
    cd_receive_abandon(self);
    PyErr_SetString(PyExc_RuntimeError,
                    "receive() resumed before a message arrived");
    *presult = NULL;
    return PYGEN_ERROR;
}

static PySendResult
Receive_am_send(cd_receive *self, PyObject *Py_UNUSED(arg), PyObject **presult)
{
    switch (self->state) {
    case CD_RECEIVE_INIT: return cd_receive_start(self, presult);
    case CD_RECEIVE_WAITING: return cd_receive_resume(self, presult);
    case CD_RECEIVE_DONE: break;
    }
    PyErr_SetString(PyExc_RuntimeError,
                    "cannot reuse already awaited receive()");
    *presult = NULL;
    return PYGEN_ERROR;
}

/* Sets StopIteration(value); steals value. */
static void
cd_set_stop_iteration(PyObject *value)
{
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

static PyObject *
Receive_iternext(cd_receive *self)
{
    PyObject *res;
    PySendResult r = Receive_am_send(self, Py_None, &res);
    if (r == PYGEN_RETURN) {
        cd_set_stop_iteration(res);
        return NULL;
    }
    return res;
}

static PyObject *
Receive_send(cd_receive *self, PyObject *Py_UNUSED(arg))
{
    return Receive_iternext(self);
}

static PyObject *
Receive_throw(cd_receive *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(exc)");
        return NULL;
    }
    cd_receive_abandon(self);
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must derive from BaseException");
    }
    return NULL;
}

static PyObject *
Receive_close(cd_receive *self, PyObject *Py_UNUSED(ignored))
{
    cd_receive_abandon(self);
    Py_RETURN_NONE;
}

static PyObject *
Receive_await(cd_receive *self)
{
    return Py_NewRef((PyObject *)self);
}

static int
Receive_traverse(cd_receive *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->core);
    Py_VISIT(self->name);
    Py_VISIT((PyObject *)self->chan);
    Py_VISIT(self->loop);
    Py_VISIT(self->fut);
    Py_VISIT(self->result);
    return 0;
}

static int
Receive_clear(cd_receive *self)
{
    /* The channel's list keeps us alive while queued, so a clear only
     * happens when that channel is garbage too; it unlinks us itself. */
    Py_CLEAR(self->core);
    Py_CLEAR(self->name);
    Py_CLEAR(self->chan);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->fut);
    Py_CLEAR(self->result);
    return 0;
}

static void
Receive_dealloc(cd_receive *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)Receive_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef Receive_methods[] = {
    {"send", (PyCFunction)Receive_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))Receive_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)Receive_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Receive_slots[] = {
    {Py_tp_dealloc, Receive_dealloc},
    {Py_tp_traverse, Receive_traverse},
    {Py_tp_clear, Receive_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Receive_iternext},
    {Py_tp_methods, Receive_methods},
    {Py_am_await, Receive_await},
    {Py_am_send, Receive_am_send},
    {0, NULL},
};

static PyType_Spec Receive_spec = {
    .name = "cdaphne._layer.Receive",
    .basicsize = sizeof(cd_receive),
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
              Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION),
    .slots = Receive_slots,
};

/* ---- module ---------------------------------------------------------- */

/* _wake(fut): run by call_soon_threadsafe on the waiter's loop. */
static PyObject *
layer_wake(PyObject *module, PyObject *fut)
{
    cd_layer_state *st = cd_layer_get_state(module);
    PyObject *r = PyObject_CallMethodOneArg(fut, st->s_set_result, Py_None);
    if (r == NULL) {
        /* Cancelled meanwhile: the task throws into the receive, which
         * gives the message back. */
        PyErr_Clear();
    }
    Py_XDECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef layer_methods[] = {
    {"_wake", layer_wake, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject *
cd_import_attr(const char *module, const char *attr)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_GetAttrString(mod, attr);
    Py_DECREF(mod);
    return res;
}

static int
layer_exec(PyObject *module)
{
    cd_layer_state *st = cd_layer_get_state(module);

#define CD_TYPE(field, spec)                                                  \
    do {                                                                      \
        st->field =                                                           \
            (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);    \
        if (st->field == NULL) {                                              \
            return -1;                                                        \
        }                                                                     \
    } while (0)
    CD_TYPE(Core_type, Core_spec);
    CD_TYPE(Channel_type, Channel_spec);
    CD_TYPE(Receive_type, Receive_spec);
#undef CD_TYPE
    if (PyModule_AddType(module, st->Core_type) < 0) {
        return -1;
    }
#define CD_STR(field, text)                                                   \
    do {                                                                      \
        st->field = PyUnicode_InternFromString(text);                         \
        if (st->field == NULL) {                                              \
            return -1;                                                        \
        }                                                                     \
    } while (0)
    CD_STR(s_create_future, "create_future");
    CD_STR(s_set_result, "set_result");
    CD_STR(s_call_soon_threadsafe, "call_soon_threadsafe");
    CD_STR(s_call_later, "call_later");
    CD_STR(s_cancel, "cancel");
    CD_STR(s_is_closed, "is_closed");
    CD_STR(s_blocking, "_asyncio_future_blocking");
    CD_STR(s_on_timer, "_on_timer");
    CD_STR(s_asgi_channel, "__asgi_channel__");
#undef CD_STR
    st->get_running_loop =
        cd_import_attr("asyncio.events", "_get_running_loop");
    st->deepcopy = cd_import_attr("copy", "deepcopy");
    st->wake = PyObject_GetAttrString(module, "_wake");
    st->future_type = cd_import_attr("asyncio", "Future");
    PyObject *base = cd_import_attr("asyncio", "BaseEventLoop");
    if (base != NULL) {
        st->base_create_future = PyObject_GetAttr(base, st->s_create_future);
        Py_DECREF(base);
    }
    st->kwnames_loop = Py_BuildValue("(s)", "loop");
    if (st->get_running_loop == NULL || st->deepcopy == NULL ||
        st->wake == NULL || st->future_type == NULL ||
        st->base_create_future == NULL || st->kwnames_loop == NULL) {
        return -1;
    }
    return 0;
}

static int
layer_traverse(PyObject *module, visitproc visit, void *arg)
{
    cd_layer_state *st = cd_layer_get_state(module);
    Py_VISIT(st->Core_type);
    Py_VISIT(st->Channel_type);
    Py_VISIT(st->Receive_type);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->deepcopy);
    Py_VISIT(st->wake);
    Py_VISIT(st->future_type);
    Py_VISIT(st->base_create_future);
    Py_VISIT(st->kwnames_loop);
    return 0;
}

static int
layer_clear(PyObject *module)
{
    cd_layer_state *st = cd_layer_get_state(module);
    Py_CLEAR(st->Core_type);
    Py_CLEAR(st->Channel_type);
    Py_CLEAR(st->Receive_type);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->deepcopy);
    Py_CLEAR(st->wake);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->base_create_future);
    Py_CLEAR(st->kwnames_loop);
    Py_CLEAR(st->s_create_future);
    Py_CLEAR(st->s_set_result);
    Py_CLEAR(st->s_call_soon_threadsafe);
    Py_CLEAR(st->s_call_later);
    Py_CLEAR(st->s_cancel);
    Py_CLEAR(st->s_is_closed);
    Py_CLEAR(st->s_blocking);
    Py_CLEAR(st->s_on_timer);
    Py_CLEAR(st->s_asgi_channel);
    return 0;
}

static void
layer_free(void *module)
{
    (void)layer_clear((PyObject *)module);
}

static PyModuleDef_Slot layer_slots[] = {
    {Py_mod_exec, layer_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* No process-wide state; every object lives in module state. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef cd_layer_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cdaphne._layer",
    .m_doc = "C core of cdaphne's in-memory channel layer.",
    .m_size = sizeof(cd_layer_state),
    .m_methods = layer_methods,
    .m_slots = layer_slots,
    .m_traverse = layer_traverse,
    .m_clear = layer_clear,
    .m_free = layer_free,
};

PyMODINIT_FUNC PyInit__layer(void);

PyMODINIT_FUNC
PyInit__layer(void)
{
    return PyModuleDef_Init(&cd_layer_module_def);
}
