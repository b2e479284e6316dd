/* cdaphne.pubsub: topics, their WebSocket subscribers, and the fan-out.
 *
 * A publish builds one WebSocket frame (a bytes object holding header and
 * payload) and queues that same object on every subscriber's connection:
 * no copy and no Python per member.  The registry belongs to the loop
 * (loop->pubsub): a dict from topic name to a capsule of its member
 * array.  Each WebSocket cycle keeps the topics it joined (cy->pubsub);
 * member and subscription point at each other's slots so that either
 * side leaves in O(1).
 *
 * A subscriber whose output (bytes plus a charge per queued buffer)
 * would pass --pubsub-max-queue after a flush attempt is closed with
 * 1013 (Try Again Later): the client is too slow for the room right now,
 * and reconnecting is the right answer, not a policy violation (1008).
 *
 * Other threads publish through an inbox (a mutex, and the loop's own
 * wake-up, cd_loop_wake, when it turns non-empty): select() drains it
 * (cd_pubsub_drain) and fans out in arrival order, so each publisher's
 * order holds.  Measured against loop.call_soon_threadsafe(pubsub_publish,
 * ...) from one thread: 0.9-1.7 M publishes/s on the publishing thread
 * against 0.10-0.21 M/s, and no asyncio Handle or self-pipe write per
 * message.  Hooks (st->pubsub_forward, st->pubsub_on_topic) let Python
 * carry messages to other workers and hosts; they run on the loop thread
 * only.  The inbox is bounded from its creation by config.py's defaults,
 * until a server gives its own. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define CD_PUBSUB_MAX_NAME 100
/* Bytes charged per queued buffer: the queue's own bookkeeping (outq
 * entry, write request slot) for a frame, however small. */
#define CD_PUBSUB_BUF_COST 64

typedef struct {
    cd_cycle_t *cy; /* borrowed: it leaves (cd_pubsub_drop) before dying */
    int slot;       /* its index in cy->pubsub->subs */
} cd_pubsub_member_t;

typedef struct {
    PyObject *name;              /* strong: str */
    cd_pubsub_member_t *members; /* owned */
    int n, cap;
} cd_pubsub_topic_t;

typedef struct {
    cd_pubsub_topic_t *topic; /* borrowed: lives while it has members */
    int slot;                 /* our index in topic->members */
} cd_pubsub_ref_t;

/* One WebSocket's subscriptions. */
struct cd_pubsub_sub_s {
    cd_pubsub_ref_t *subs; /* owned */
    int n, cap;
};

/* A publish from another thread, waiting for the loop. */
typedef struct {
    PyObject *topic; /* strong */
    PyObject *frame; /* strong */
    int forward;
    PyObject *data; /* strong: for the forward hook, or NULL */
    int is_text;
} cd_pubsub_item_t;

struct cd_pubsub_s {
    cd_loop_t *loop;         /* borrowed: detaches us before it closes */
    cd_state *st;            /* borrowed */
    unsigned long thread;    /* the loop's thread */
    PyObject *topics;        /* strong: dict str -> capsule(topic) */
    uv_mutex_t lock;         /* guards the inbox */
    cd_pubsub_item_t *inbox; /* owned array */
    size_t inbox_n, inbox_cap, inbox_bytes;
    /* 1 while the inbox holds items (set and cleared under lock): the
     * loop reads it without the lock at every select(). */
    atomic_int inbox_pending;
    /* Messages from other threads waiting for the loop: beyond either
     * bound publish() says "full" and the Python wrapper retries.  From
     * config.py's defaults at attach, then the server's config
     * (--pubsub-max-inbox, --pubsub-max-inbox-bytes); 0: no bound.
     * Guarded by lock. */
    uint64_t inbox_max, inbox_max_bytes;
    /* Counters for pubsub_stats(). */
    uint64_t published, delivered, slow_closed, subscriptions;
};

typedef struct cd_pubsub_s cd_pubsub_t;

/* ---- names and frames --------------------------------------------- */

static int
topic_char(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
}

/* Channels' group name rule: ASCII alnum, '-', '_', '.', < 100 chars. */
static int
check_topic(PyObject *topic)
{
    if (PyUnicode_Check(topic) && PyUnicode_IS_ASCII(topic)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(topic);
        const char *p = (const char *)PyUnicode_1BYTE_DATA(topic);
        int ok = n > 0 && n < CD_PUBSUB_MAX_NAME;
        for (Py_ssize_t i = 0; ok && i < n; i++) {
            ok = topic_char((unsigned char)p[i]);
        }
        if (ok) {
            return 0;
        }
    }
    PyErr_Format(PyExc_TypeError,
                 "Topic name must be a valid unicode string with length < "
                 "%d containing only ASCII alphanumerics, hyphens, "
                 "underscores, or periods, not %R",
                 CD_PUBSUB_MAX_NAME, topic);
    return -1;
}

/* New reference: a whole unmasked frame, FIN set, around data. */
static PyObject *
build_frame(const char *data, size_t n, int is_text)
{
    char head[10];
    size_t hl;
    head[0] = (char)(0x80 | (is_text ? 0x1 : 0x2));
    if (n < 126) {
        head[1] = (char)n;
        hl = 2;
    }
    else if (n < 65536) {
        head[1] = 126;
        head[2] = (char)(n >> 8);
        head[3] = (char)n;
        hl = 4;
    }
    else {
        head[1] = 127;
        for (int i = 0; i < 8; i++) {
            head[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
        }
        hl = 10;
    }
    PyObject *f = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(hl + n));
    if (f != NULL) {
        memcpy(PyBytes_AS_STRING(f), head, hl);
        memcpy(PyBytes_AS_STRING(f) + hl, data, n);
    }
    return f;
}

/* New reference: the frame for text (str) or bytes (bytes-like). */
static PyObject *
frame_for(PyObject *data, int is_text)
{
    if (is_text) {
        if (!PyUnicode_Check(data)) {
            PyErr_SetString(PyExc_TypeError, "'text' must be a str");
            return NULL;
        }
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(data, &n);
        return p ? build_frame(p, (size_t)n, 1) : NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_SetString(PyExc_TypeError, "'bytes' must be bytes");
        return NULL;
    }
    PyObject *f = build_frame(view.buf, (size_t)view.len, 0);
    PyBuffer_Release(&view);
    return f;
}

/* ---- the registry ------------------------------------------------- */

static void
topic_capsule_free(PyObject *cap)
{
    cd_pubsub_topic_t *t = PyCapsule_GetPointer(cap, NULL);
    Py_XDECREF(t->name);
    free(t->members);
    free(t);
}

static void
call_on_topic(cd_pubsub_t *ps, PyObject *topic, int subscribed)
{
    PyObject *hook = ps->st->pubsub_on_topic;
    if (hook == NULL) {
        return;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(
        hook, topic, subscribed ? Py_True : Py_False, NULL);
    if (r == NULL) {
        cd_log_exception("cdaphne.pubsub: topic hook failed");
    }
    Py_XDECREF(r);
}

/* Borrowed: the topic, made if `create`; NULL (maybe with an exception)
 * if absent. */
static cd_pubsub_topic_t *
topic_find(cd_pubsub_t *ps, PyObject *name, int create)
{
    PyObject *cap = PyDict_GetItemWithError(ps->topics, name);
    if (cap != NULL) {
        return PyCapsule_GetPointer(cap, NULL);
    }
    if (PyErr_Occurred() || !create) {
        return NULL;
    }
    cd_pubsub_topic_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    cap = PyCapsule_New(t, NULL, topic_capsule_free);
    if (cap == NULL) {
        free(t);
        return NULL;
    }
    t->name = Py_NewRef(name);
    int r = PyDict_SetItem(ps->topics, name, cap);
    Py_DECREF(cap);
    return r < 0 ? NULL : t;
}

static cd_pubsub_t *
registry_of(cd_cycle_t *cy)
{
    return cy->server->loop->pubsub;
}

/* Index of the topic in cy's subscriptions, or -1. */
static int
sub_index(cd_cycle_t *cy, PyObject *name)
{
    struct cd_pubsub_sub_s *s = cy->pubsub;
    for (int i = 0; s != NULL && i < s->n; i++) {
        PyObject *tn = s->subs[i].topic->name;
        if (tn == name || PyUnicode_Compare(tn, name) == 0) {
            return i;
        }
    }
    return -1;
}

static int
grow(void **arr, int *cap, int need, size_t size)
{
    if (need <= *cap) {
        return 0;
    }
    int c = *cap ? *cap * 2 : 4;
    while (c < need) {
        c *= 2;
    }
    void *p = realloc(*arr, (size_t)c * size);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = p;
    *cap = c;
    return 0;
}

static int
subscribe(cd_pubsub_t *ps, cd_cycle_t *cy, PyObject *name)
{
    if (sub_index(cy, name) >= 0) {
        return 0; /* Idempotent, like group_add. */
    }
    uint64_t limit = cy->server->cfg.pubsub_max_topics;
    struct cd_pubsub_sub_s *s = cy->pubsub;
    if (limit && s != NULL && (uint64_t)s->n >= limit) {
        PyErr_Format(PyExc_RuntimeError,
                     "cdaphne.pubsub.subscribe: a connection may subscribe "
                     "to at most %llu topics (--pubsub-max-topics)",
                     (unsigned long long)limit);
        return -1;
    }
    if (s == NULL) {
        s = cy->pubsub = calloc(1, sizeof(*s));
        if (s == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int created = PyDict_GetItemWithError(ps->topics, name) == NULL;
    cd_pubsub_topic_t *t = topic_find(ps, name, 1);
    if (t == NULL ||
        grow((void **)&s->subs, &s->cap, s->n + 1, sizeof(*s->subs)) < 0 ||
        grow((void **)&t->members, &t->cap, t->n + 1, sizeof(*t->members)) <
            0) {
        if (t != NULL && t->n == 0) {
            PyDict_DelItem(ps->topics, name);
        }
        return -1;
    }
    s->subs[s->n] = (cd_pubsub_ref_t){t, t->n};
    t->members[t->n] = (cd_pubsub_member_t){cy, s->n};
    s->n++;
    t->n++;
    ps->subscriptions++;
    if (created) {
        call_on_topic(ps, name, 1);
    }
    return 0;
}

/* Removes subscription i of cy; the topic goes with its last member. */
static void
unsubscribe_at(cd_pubsub_t *ps, cd_cycle_t *cy, int i, int hooks)
{
    struct cd_pubsub_sub_s *s = cy->pubsub;
    cd_pubsub_topic_t *t = s->subs[i].topic;
    int slot = s->subs[i].slot;
    /* Swap the last member into our slot, and tell its owner. */
    t->members[slot] = t->members[--t->n];
    if (slot < t->n) {
        cd_pubsub_member_t *m = &t->members[slot];
        m->cy->pubsub->subs[m->slot].slot = slot;
    }
    /* Likewise on our side. */
    s->subs[i] = s->subs[--s->n];
    if (i < s->n) {
        cd_pubsub_ref_t *r = &s->subs[i];
        r->topic->members[r->slot].slot = i;
    }
    ps->subscriptions--;
    if (t->n == 0) {
        PyObject *name = Py_NewRef(t->name);
        if (PyDict_DelItem(ps->topics, name) < 0) {
            PyErr_Clear();
        }
        if (hooks) {
            call_on_topic(ps, name, 0);
        }
        Py_DECREF(name);
    }
}

void
cd_pubsub_drop(cd_cycle_t *cy)
{
    if (cy->pubsub == NULL) {
        return;
    }
    cd_pubsub_t *ps = registry_of(cy);
    while (ps != NULL && cy->pubsub->n > 0) {
        unsubscribe_at(ps, cy, cy->pubsub->n - 1, 1);
    }
    free(cy->pubsub->subs);
    free(cy->pubsub);
    cy->pubsub = NULL;
}

/* ---- the fan-out -------------------------------------------------- */

static size_t
queued(cd_conn_t *c)
{
    return c->write_queued +
           ((size_t)c->outq.n + c->inflight_bufs) * CD_PUBSUB_BUF_COST;
}

/* 1 if the subscriber's queue has room for len more bytes, after trying
 * to hand what waits to the kernel. */
static int
has_room(cd_cycle_t *cy, size_t len)
{
    cd_conn_t *c = cy->conn;
    uint64_t bound = cy->server->cfg.pubsub_max_queue;
    if (bound == 0 || queued(c) == 0 || queued(c) + len <= bound) {
        return 1;
    }
    cd_conn_flush(c);
    return c->state != CD_CONN_CLOSING &&
           (queued(c) == 0 || queued(c) + len <= bound);
}

static void
deliver(cd_pubsub_t *ps, cd_cycle_t *cy, PyObject *frame)
{
    cd_conn_t *c = cy->conn;
    if (c == NULL || c->state == CD_CONN_CLOSING || cd_ws_phase(cy) != 0) {
        return;
    }
    size_t len = (size_t)PyBytes_GET_SIZE(frame) + CD_PUBSUB_BUF_COST;
    if (!has_room(cy, len)) {
        if (c->state != CD_CONN_CLOSING) {
            ps->slow_closed++;
            cd_ws_close_with(cy, 1013, "subscriber too slow");
        }
        return;
    }
    cd_ws_write_prepared(cy, frame);
    ps->delivered++;
}

/* Writes frame to every subscriber of topic but `exclude`.  Members are
 * copied first: a close on the way (a slow subscriber, a failed flush)
 * unsubscribes, which reorders or frees the topic's array. */
static int
fanout(cd_pubsub_t *ps, PyObject *topic, PyObject *frame, cd_cycle_t *exclude)
{
    ps->published++;
    cd_pubsub_topic_t *t = topic_find(ps, topic, 0);
    if (t == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int n = t->n;
    cd_cycle_t *small[64];
    cd_cycle_t **snap = small;
    if (n > 64) {
        snap = malloc((size_t)n * sizeof(*snap));
        if (snap == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        snap[i] = (cd_cycle_t *)Py_NewRef((PyObject *)t->members[i].cy);
    }
    for (int i = 0; i < n; i++) {
        if (snap[i] != exclude) {
            deliver(ps, snap[i], frame);
        }
    }
    for (int i = 0; i < n; i++) {
        Py_DECREF(snap[i]);
    }
    if (snap != small) {
        free(snap);
    }
    return 0;
}

static void
call_forward(cd_pubsub_t *ps, PyObject *topic, PyObject *data, int is_text)
{
    PyObject *hook = ps->st->pubsub_forward;
    if (hook == NULL) {
        return;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(
        hook, topic, data, is_text ? Py_True : Py_False, NULL);
    if (r == NULL) {
        cd_log_exception("cdaphne.pubsub: forwarding failed");
    }
    Py_XDECREF(r);
}

/* ---- ASGI send() messages ----------------------------------------- */

/* Borrowed: msg["topic"], checked. */
static PyObject *
msg_topic(cd_state *st, PyObject *msg)
{
    PyObject *topic = PyDict_GetItemWithError(msg, st->s_topic);
    if (topic == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError,
                            "cdaphne.pubsub message without a 'topic'");
        }
        return NULL;
    }
    return check_topic(topic) < 0 ? NULL : topic;
}

static int
send_publish(cd_pubsub_t *ps, cd_cycle_t *cy, PyObject *msg)
{
    cd_state *st = cy->st;
    PyObject *topic = msg_topic(st, msg);
    if (topic == NULL) {
        return -1;
    }
    PyObject *data = PyDict_GetItemWithError(msg, st->s_bytes);
    int is_text = 0;
    if (data == NULL || data == Py_None) {
        if (PyErr_Occurred()) {
            return -1;
        }
        data = PyDict_GetItemWithError(msg, st->s_text);
        if (data == NULL || data == Py_None) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "cdaphne.pubsub.publish needs 'bytes' or "
                                "'text'");
            }
            return -1;
        }
        is_text = 1;
    }
    PyObject *ex = PyDict_GetItemWithError(msg, st->s_exclude_self);
    if (ex == NULL && PyErr_Occurred()) {
        return -1;
    }
    int exclude = ex != NULL ? PyObject_IsTrue(ex) : 0;
    if (exclude < 0) {
        return -1;
    }
    PyObject *frame = frame_for(data, is_text);
    if (frame == NULL) {
        return -1;
    }
    int r = fanout(ps, topic, frame, exclude ? cy : NULL);
    Py_DECREF(frame);
    if (r == 0) {
        call_forward(ps, topic, data, is_text);
    }
    return r;
}

/* subscribe / unsubscribe: WebSocket scopes, after the accept. */
static int
send_membership(cd_pubsub_t *ps, cd_cycle_t *cy, PyObject *type, PyObject *msg,
                int join)
{
    if (cd_cycle_is_http(cy)) {
        PyErr_Format(PyExc_RuntimeError, "%S needs a WebSocket scope", type);
        return -1;
    }
    int phase = cd_ws_phase(cy);
    if (phase < 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "%S before websocket.accept (state %s)", type,
                     cd_ws_state_of(cy));
        return -1;
    }
    PyObject *topic = msg_topic(cy->st, msg);
    if (topic == NULL) {
        return -1;
    }
    if (phase > 0 || cy->conn == NULL) {
        return 0; /* Closed: ignored, as sends after the close are. */
    }
    if (join) {
        return subscribe(ps, cy, topic);
    }
    int i = sub_index(cy, topic);
    if (i >= 0) {
        unsubscribe_at(ps, cy, i, 1);
    }
    return 0;
}

int
cd_pubsub_on_send(cd_cycle_t *cy, PyObject *type, PyObject *msg)
{
    cd_state *st = cy->st;
    int which;
    if (cd_cycle_type_is(type, st->s_pubsub_publish)) {
        which = 0;
    }
    else if (cd_cycle_type_is(type, st->s_pubsub_subscribe)) {
        which = 1;
    }
    else if (cd_cycle_type_is(type, st->s_pubsub_unsubscribe)) {
        which = 2;
    }
    else {
        return 0;
    }
    cd_pubsub_t *ps = registry_of(cy);
    if (ps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cdaphne.pubsub: no loop");
        return -1;
    }
    int r = which == 0 ? send_publish(ps, cy, msg)
                       : send_membership(ps, cy, type, msg, which == 1);
    return r < 0 ? -1 : 1;
}

/* ---- other threads ------------------------------------------------ */

static void
item_clear(cd_pubsub_item_t *it)
{
    Py_XDECREF(it->topic);
    Py_XDECREF(it->frame);
    Py_XDECREF(it->data);
}

void
cd_pubsub_drain(cd_loop_t *loop)
{
    cd_pubsub_t *ps = loop->pubsub;
    if (ps == NULL || atomic_load(&ps->inbox_pending) == 0) {
        return;
    }
    /* One batch: what is pushed from now on turns the inbox non-empty
     * again and wakes the next poll, so callbacks run in between. */
    uv_mutex_lock(&ps->lock);
    cd_pubsub_item_t *items = ps->inbox;
    size_t n = ps->inbox_n;
    ps->inbox = NULL;
    ps->inbox_n = ps->inbox_cap = ps->inbox_bytes = 0;
    atomic_store(&ps->inbox_pending, 0);
    uv_mutex_unlock(&ps->lock);
    for (size_t i = 0; i < n; i++) {
        cd_pubsub_item_t *it = &items[i];
        if (fanout(ps, it->topic, it->frame, NULL) < 0) {
            cd_log_exception("cdaphne.pubsub: publish failed");
        }
        else if (it->forward) {
            call_forward(ps, it->topic, it->data, it->is_text);
        }
        item_clear(it);
    }
    free(items);
}

/* 0 queued, 1 full, -1 no memory.  Steals nothing. */
static int
inbox_push(cd_pubsub_t *ps, cd_pubsub_item_t *it)
{
    int r = 0;
    uv_mutex_lock(&ps->lock);
    size_t len = (size_t)PyBytes_GET_SIZE(it->frame);
    if ((ps->inbox_max > 0 && ps->inbox_n >= ps->inbox_max) ||
        (ps->inbox_max_bytes > 0 && ps->inbox_n > 0 &&
         ps->inbox_bytes + len > ps->inbox_max_bytes)) {
        r = 1;
    }
    else if (ps->inbox_n == ps->inbox_cap) {
        size_t cap = ps->inbox_cap ? ps->inbox_cap * 2 : 64;
        cd_pubsub_item_t *p = realloc(ps->inbox, cap * sizeof(*p));
        if (p == NULL) {
            r = -1;
        }
        else {
            ps->inbox = p;
            ps->inbox_cap = cap;
        }
    }
    int first = 0;
    if (r == 0) {
        first = ps->inbox_n == 0;
        ps->inbox[ps->inbox_n++] = *it;
        ps->inbox_bytes += len;
        Py_INCREF(it->topic);
        Py_INCREF(it->frame);
        Py_XINCREF(it->data);
        if (first) {
            atomic_store(&ps->inbox_pending, 1);
        }
    }
    uv_mutex_unlock(&ps->lock);
    if (first) {
        /* Later pushes find the inbox non-empty: the loop, woken for
         * this one, drains them with it.  We hold the GIL, so the loop
         * (which detaches us under it) is still open. */
        cd_loop_wake(ps->loop);
    }
    return r;
}

/* ---- module functions --------------------------------------------- */

PyObject *
cd_pubsub_publish_fn(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    cd_state *st = cd_get_state(module);
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError,
                        "pubsub_publish(topic, data, is_text, forward=True)");
        return NULL;
    }
    int is_text = PyObject_IsTrue(args[2]);
    int forward = nargs > 3 ? PyObject_IsTrue(args[3]) : 1;
    if (is_text < 0 || forward < 0 || check_topic(args[0]) < 0) {
        return NULL;
    }
    cd_pubsub_t *ps = st->pubsub;
    if (ps == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cdaphne.pubsub.publish: no cdaphne server is "
                        "running in this process");
        return NULL;
    }
    PyObject *frame = frame_for(args[1], is_text);
    if (frame == NULL) {
        return NULL;
    }
    int r;
    if (PyThread_get_thread_ident() == ps->thread) {
        r = fanout(ps, args[0], frame, NULL);
        if (r == 0 && forward) {
            call_forward(ps, args[0], args[1], is_text);
        }
    }
    else {
        cd_pubsub_item_t it = {args[0], frame, forward,
                               forward ? args[1] : NULL, is_text};
        r = inbox_push(ps, &it);
        if (r < 0) {
            PyErr_NoMemory();
        }
    }
    Py_DECREF(frame);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r == 0);
}

PyObject *
cd_pubsub_stats_fn(PyObject *module, PyObject *unused)
{
    cd_pubsub_t *ps = cd_get_state(module)->pubsub;
    if (ps == NULL) {
        return Py_BuildValue("{sOsisisisisi}", "running", Py_False, "topics",
                             0, "subscriptions", 0, "published", 0,
                             "delivered", 0, "slow_closed", 0);
    }
    return Py_BuildValue("{sOsnsKsKsKsK}", "running", Py_True, "topics",
                         PyDict_GET_SIZE(ps->topics), "subscriptions",
                         (unsigned long long)ps->subscriptions, "published",
                         (unsigned long long)ps->published, "delivered",
                         (unsigned long long)ps->delivered, "slow_closed",
                         (unsigned long long)ps->slow_closed);
}

PyObject *
cd_pubsub_set_hooks_fn(PyObject *module, PyObject *const *args,
                       Py_ssize_t nargs)
{
    cd_state *st = cd_get_state(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "pubsub_set_hooks(forward, on_topic)");
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (args[i] != Py_None && !PyCallable_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "hooks must be callables");
            return NULL;
        }
    }
    Py_XSETREF(st->pubsub_forward,
               args[0] == Py_None ? NULL : Py_NewRef(args[0]));
    Py_XSETREF(st->pubsub_on_topic,
               args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* ---- attach / detach ---------------------------------------------- */

/* config.py's default for the Config field `name` (a non-negative int)
 * in *out: 0, or -1 with an exception. */
static int
config_default(PyObject *config, const char *name, uint64_t *out)
{
    PyObject *v = PyObject_GetAttrString(config, name);
    if (v == NULL) {
        return -1;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = n;
    return 0;
}

/* The inbox's bounds before any server gives its own: config.py's
 * defaults (the only place they live).  0, or -1 with an exception. */
static int
inbox_default_limits(cd_pubsub_t *ps)
{
    PyObject *mod = PyImport_ImportModule("cdaphne.config");
    if (mod == NULL) {
        return -1;
    }
    PyObject *config = PyObject_GetAttrString(mod, "Config");
    Py_DECREF(mod);
    if (config == NULL) {
        return -1;
    }
    int r = config_default(config, "pubsub_max_inbox", &ps->inbox_max);
    if (r == 0) {
        r = config_default(config, "pubsub_max_inbox_bytes",
                           &ps->inbox_max_bytes);
    }
    Py_DECREF(config);
    return r;
}

int
cd_pubsub_attach(cd_loop_t *loop)
{
    if (loop->pubsub != NULL) {
        return 0;
    }
    cd_pubsub_t *ps = calloc(1, sizeof(*ps));
    if (ps == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    atomic_init(&ps->inbox_pending, 0);
    if (inbox_default_limits(ps) < 0) {
        free(ps);
        return -1;
    }
    ps->topics = PyDict_New();
    if (ps->topics == NULL || uv_mutex_init(&ps->lock) < 0) {
        Py_XDECREF(ps->topics);
        free(ps);
        PyErr_NoMemory();
        return -1;
    }
    ps->loop = loop;
    ps->st = loop->st;
    ps->thread = PyThread_get_thread_ident();
    loop->pubsub = ps;
    /* The process's registry (where publish() goes) is the first loop's
     * until a server claims its own loop's: another loop made meanwhile
     * (app code may make one in a thread) must not take it over. */
    if (loop->st->pubsub == NULL) {
        loop->st->pubsub = ps;
    }
    return 0;
}

void
cd_pubsub_set_inbox_limits(cd_loop_t *loop, uint64_t max_items,
                           uint64_t max_bytes)
{
    cd_pubsub_t *ps = loop->pubsub;
    if (ps != NULL) {
        loop->st->pubsub = ps; /* A server's loop: publish() comes here. */
        uv_mutex_lock(&ps->lock);
        ps->inbox_max = max_items;
        ps->inbox_max_bytes = max_bytes;
        uv_mutex_unlock(&ps->lock);
    }
}

void
cd_pubsub_detach(cd_loop_t *loop)
{
    cd_pubsub_t *ps = loop->pubsub;
    if (ps == NULL) {
        return;
    }
    if (loop->st->pubsub == ps) {
        loop->st->pubsub = NULL;
    }
    /* Members still listed (servers abort their conns first, so normally
     * none) forget their subscriptions without hooks. */
    PyObject *key, *cap;
    Py_ssize_t pos = 0;
    while (PyDict_Next(ps->topics, &pos, &key, &cap)) {
        cd_pubsub_topic_t *t = PyCapsule_GetPointer(cap, NULL);
        for (int i = 0; i < t->n; i++) {
            cd_cycle_t *cy = t->members[i].cy;
            if (cy->pubsub != NULL) {
                free(cy->pubsub->subs);
                free(cy->pubsub);
                cy->pubsub = NULL;
            }
        }
        t->n = 0;
    }
    Py_CLEAR(ps->topics);
    for (size_t i = 0; i < ps->inbox_n; i++) {
        item_clear(&ps->inbox[i]);
    }
    free(ps->inbox);
    ps->inbox = NULL;
    ps->inbox_n = 0;
    loop->pubsub = NULL;
    uv_mutex_destroy(&ps->lock);
    free(ps);
}
