/* The scheduling core: asyncio's call_soon(), timers and run-once step in
 * C.
 *
 * It works on asyncio's own data, so that everything else in asyncio
 * (close(), the tests that look at loop._ready or loop._scheduled) keeps
 * working unchanged: the ready queue is a ring of handles in C
 * (readyq.c) that is the loop's `_ready` with the deque methods asyncio
 * uses, the timers its `_scheduled` list, kept in heapq's order by heapq's own
 * algorithms with the comparison made in C, and handles are
 * real asyncio.Handle objects (isinstance checks, repr, cancel(),
 * get_context() are asyncio's; timers are of a subclass of
 * asyncio.TimerHandle whose cancel() is in C, timer.c), created here
 * without running their
 * Python __init__: the slots are stored at the offsets their member
 * descriptors give, exactly as __init__ fills them outside debug mode.
 *
 * Debug mode (thread checks, slow-callback warnings, source tracebacks)
 * takes asyncio's own Python paths, call for call. */
#include "internal.h"

#include <math.h>
#include <structmember.h>
#include <time.h>

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

/* asyncio.base_events' constants. */
#define CD_MIN_SCHEDULED_TIMER_HANDLES 100
#define CD_MIN_CANCELLED_FRACTION 0.5
#define CD_MAXIMUM_SELECT_TIMEOUT (24.0 * 3600.0)
/* The entries the core's copy of the heap keeps room for, however few
 * timers are left (16 bytes each). */
#define CD_HEAP_KEEP 4096

static int
slot_offset(PyObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL) {
        return -1;
    }
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == Py_T_OBJECT_EX;
    if (ok) {
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_DECREF(d);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "asyncio.Handle.%s is not a slot", name);
        return -1;
    }
    return 0;
}

#if PY_VERSION_HEX >= 0x030C0000
/* The GIL guards it; the module lives in one interpreter only. */
static uint64_t attrs_gen = 1;

static int
sched_on_dict_event(PyDict_WatchEvent event, PyObject *dict, PyObject *key,
                    PyObject *new_value)
{
    attrs_gen++;
    return 0;
}

/* A loop's class or one of its bases changed (its version tag goes):
 * what core_dict_check found may no longer hold. */
static int
sched_on_type_event(PyTypeObject *type)
{
    attrs_gen++;
    return 0;
}
#endif

int
cd_sched_init(cd_state *st)
{
    int rc = -1;
    cd_handle_slots_t *o = &st->handle_slots;
    PyObject *h = st->asyncio_Handle;
    if (slot_offset(h, "_callback", &o->callback) < 0 ||
        slot_offset(h, "_args", &o->args) < 0 ||
        slot_offset(h, "_cancelled", &o->cancelled) < 0 ||
        slot_offset(h, "_loop", &o->loop) < 0 ||
        slot_offset(h, "_source_traceback", &o->source_traceback) < 0 ||
        slot_offset(h, "_repr", &o->repr) < 0 ||
        slot_offset(h, "_context", &o->context) < 0 ||
        slot_offset(st->asyncio_TimerHandle, "_when", &o->when) < 0 ||
        slot_offset(st->asyncio_TimerHandle, "_scheduled", &o->scheduled) <
            0) {
        goto done;
    }
    /* A Handle may be reused once run if no weak reference can see it:
     * the list is at tp_weaklistoffset from the object, also when the
     * type manages it (a negative offset, as CPython 3.12 and 3.13 read
     * it); later versions do not promise that. */
    PyTypeObject *htp = (PyTypeObject *)st->asyncio_Handle;
    PyTypeObject *ttp = (PyTypeObject *)st->asyncio_TimerHandle;
    st->handle_weaklist = htp->tp_weaklistoffset;
    st->handle_reuse =
        ttp->tp_weaklistoffset == htp->tp_weaklistoffset &&
        st->Timer_type->tp_weaklistoffset == htp->tp_weaklistoffset;
#if PY_VERSION_HEX >= 0x030E0000
    if (st->handle_weaklist < 0) {
        st->handle_reuse = 0;
    }
#endif
#if PY_VERSION_HEX >= 0x030C0000
    int id = PyDict_AddWatcher(sched_on_dict_event);
    if (id < 0) {
        goto done;
    }
    st->dict_watcher = id + 1;
    id = PyType_AddWatcher(sched_on_type_event);
    if (id < 0) {
        goto done;
    }
    st->type_watcher = id + 1;
#endif
    cd_timer_note_slots(o);
    rc = 0;
done:
    return rc;
}

void
cd_sched_state_clear(cd_state *st)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (st->dict_watcher != 0) {
        if (PyDict_ClearWatcher(st->dict_watcher - 1) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        st->dict_watcher = 0;
        attrs_gen++; /* Nothing watches the loops' dicts any more. */
    }
    if (st->type_watcher != 0) {
        if (PyType_ClearWatcher(st->type_watcher - 1) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        st->type_watcher = 0;
        attrs_gen++;
    }
#endif
}

#define CD_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* isinstance(h, asyncio.TimerHandle or Handle: cls), without walking the
 * MRO for the core's own timers. */
static inline int
handle_is(cd_state *st, PyObject *h, PyObject *cls)
{
    return Py_IS_TYPE(h, st->Timer_type) ||
           PyObject_TypeCheck(h, (PyTypeObject *)cls);
}

/* New reference: asyncio.Handle(callback, args, loop, context) as its
 * __init__ makes it when the loop is not in debug mode (cls Handle or
 * TimerHandle, whose own slots the caller fills).  Steals args;
 * context NULL or None means a copy of the current context.  A Handle is
 * a spare one when there is one (its slots are all NULL). */
static PyObject *
handle_new(cd_loop_t *core, PyObject *cls, PyObject *callback, PyObject *args,
           PyObject *context)
{
    cd_state *st = core->st;
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *ctx = NULL, *h = NULL;
    if (context == NULL || context == Py_None) {
        ctx = PyContext_CopyCurrent();
    }
    else {
        ctx = Py_NewRef(context);
    }
    if (ctx != NULL && cls == st->asyncio_Handle && core->nspare > 0) {
        h = core->spare_handles[--core->nspare];
    }
    else if (ctx != NULL && cls == (PyObject *)st->Timer_type &&
             core->nspare_timers > 0) {
        h = core->spare_timers[--core->nspare_timers];
    }
    else if (ctx != NULL && tp == st->Timer_type) {
        h = cd_timer_alloc(tp);
    }
    else if (ctx != NULL) {
        h = tp->tp_alloc(tp, 0);
    }
    if (h != NULL && (core->aio_loop == NULL || core->ready_q == NULL)) {
        /* What ran since the caller's check (an attribute read, the
         * collector during an allocation) let another thread close the
         * loop, which drops both. */
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        Py_CLEAR(h);
    }
    if (h == NULL) {
        Py_XDECREF(ctx);
        Py_DECREF(args);
        return NULL;
    }
    const cd_handle_slots_t *o = &st->handle_slots;
    CD_SLOT(h, o->context) = ctx;
    CD_SLOT(h, o->loop) = Py_NewRef(core->aio_loop);
    CD_SLOT(h, o->callback) = Py_NewRef(callback);
    CD_SLOT(h, o->args) = args;
    CD_SLOT(h, o->cancelled) = Py_NewRef(Py_False);
    CD_SLOT(h, o->repr) = Py_NewRef(Py_None);
    CD_SLOT(h, o->source_traceback) = Py_NewRef(Py_None);
    return h;
}

/* Takes the Handle h's _args (at offset off) as the core's spare 1-tuple
 * when it is one that nothing else holds, its item replaced by None (the
 * argument is released now, as it would be with the tuple). */
static void
handle_keep_args(cd_loop_t *core, PyObject *h, Py_ssize_t off)
{
    PyObject *a = CD_SLOT(h, off);
    if (core->nspare_args == CD_SPARE_ARGS || a == NULL ||
        !PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 1 ||
        Py_REFCNT(a) != 1) {
        return;
    }
    CD_SLOT(h, off) = NULL;
    PyObject *item = PyTuple_GET_ITEM(a, 0);
    PyTuple_SET_ITEM(a, 0, Py_NewRef(Py_None));
    core->spare_args[core->nspare_args++] = a;
    Py_DECREF(item); /* May run code: the tuple is in its place already. */
}

/* Drops the core's reference to a Handle or TimerHandle it ran or
 * skipped.  One of exactly these types that nothing else holds, not even
 * a weak reference, is as good as freed: its slots are cleared and it
 * waits for handle_new.  Not with a finalizer (a __del__ patched on
 * asyncio's classes): it must run, from the dealloc.  Steals h. */
static void
handle_release(cd_loop_t *core, PyObject *h)
{
    cd_state *st = core->st;
    int timer = Py_IS_TYPE(h, st->Timer_type);
    int *n = timer ? &core->nspare_timers : &core->nspare;
    int cap = timer ? CD_SPARE_TIMERS : CD_SPARE_HANDLES;
    if (*n == cap || !st->handle_reuse ||
        !(timer || Py_IS_TYPE(h, (PyTypeObject *)st->asyncio_Handle)) ||
        Py_REFCNT(h) != 1 || Py_TYPE(h)->tp_finalize != NULL ||
        *(PyObject **)((char *)h + st->handle_weaklist) != NULL) {
        Py_DECREF(h);
        return;
    }
    const cd_handle_slots_t *o = &st->handle_slots;
    handle_keep_args(core, h, o->args);
    Py_CLEAR(CD_SLOT(h, o->callback));
    Py_CLEAR(CD_SLOT(h, o->args));
    Py_CLEAR(CD_SLOT(h, o->context));
    Py_CLEAR(CD_SLOT(h, o->loop));
    Py_CLEAR(CD_SLOT(h, o->cancelled));
    Py_CLEAR(CD_SLOT(h, o->repr));
    Py_CLEAR(CD_SLOT(h, o->source_traceback));
    if (timer) {
        Py_CLEAR(CD_SLOT(h, o->when));
        Py_CLEAR(CD_SLOT(h, o->scheduled));
    }
    /* What was cleared may have run code (a finalizer). */
    if (Py_REFCNT(h) != 1 || *n == cap) {
        Py_DECREF(h);
        return;
    }
    (timer ? core->spare_timers : core->spare_handles)[(*n)++] = h;
}

/* 1 if obj.<name> is true, 0 if false, -1 on error. */
static int
obj_flag(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -1;
    }
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* The loop's attributes that the core reads from its __dict__. */
#define CD_SCHED_NNAMES 7
static void
sched_names(cd_state *st, PyObject *names[CD_SCHED_NNAMES])
{
    PyObject *n[CD_SCHED_NNAMES] = {
        st->s__debug,       st->s__closed,   st->s__scheduled,
        st->s__stopping,    st->s__selector, st->s__clock_resolution,
        st->s__task_factory};
    memcpy(names, n, sizeof(n));
}

/* Notes in core->dict_plain whether the loop's class lets the core read
 * its attributes from its __dict__: no data descriptor (a property) for
 * any of the names, which would win over the __dict__.  One walk of the
 * class's MRO, kept in core->dict_tag with the class's version tag, which
 * setting an attribute of the class or of a base changes.  -1 on
 * error. */
static int
core_dict_check(cd_loop_t *core)
{
    PyTypeObject *tp = Py_TYPE(core->aio_loop);
    PyObject *names[CD_SCHED_NNAMES];
    sched_names(core->st, names);
    if (cd_type_tag(tp, names[0]) < 0) {
        return -1;
    }
    unsigned int tag = tp->tp_version_tag;
    int plain = 1;
    for (int i = 0; i < CD_SCHED_NNAMES && plain; i++) {
        PyObject *d = cd_loopmeth_lookup(tp, names[i]); /* borrowed */
        if (d == NULL && PyErr_Occurred()) {
            return -1;
        }
        plain = d == NULL || Py_TYPE(d)->tp_descr_set == NULL;
    }
    core->dict_plain = plain;
    /* A walk that ran code (a key's __eq__) holds for this use only. */
    core->dict_tag = tp->tp_version_tag == tag ? tag : 0;
    return 0;
}

/* Borrowed: the loop's __dict__, where the core reads the names above,
 * or NULL (an exception set on error) when they must be read with
 * getattr: the __dict__ is not read, or the loop's class has a data
 * descriptor for one of them (checked again whenever the class's version
 * tag changes). */
static inline PyObject *
core_dict(cd_loop_t *core)
{
    if (core->aio_dict == NULL) {
        return NULL;
    }
    if (core->aio_loop != NULL) {
        unsigned int tag = Py_TYPE(core->aio_loop)->tp_version_tag;
        if ((tag == 0 || tag != core->dict_tag) && core_dict_check(core) < 0) {
            return NULL;
        }
    }
    return core->dict_plain ? core->aio_dict : NULL;
}

/* New reference: loop.<name>.  The loop's instance attributes (_debug,
 * _closed, _scheduled...) are read from its __dict__ directly when its
 * class defines no data descriptor for them (core_dict): the same value
 * getattr finds, without the walk of the class's MRO. */
static PyObject *
core_get(cd_loop_t *core, PyObject *name)
{
    PyObject *d = core_dict(core);
    if (d != NULL) {
        PyObject *v = PyDict_GetItemWithError(d, name);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (core->aio_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is not attached");
        return NULL;
    }
    return PyObject_GetAttr(core->aio_loop, name);
}

/* loop.<name> = v (what `self.<name> = v` does, for the same names). */
static int
core_set(cd_loop_t *core, PyObject *name, PyObject *v)
{
    PyObject *d = core_dict(core);
    if (d != NULL) {
        return PyDict_SetItem(d, name, v);
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    return PyObject_SetAttr(core->aio_loop, name, v);
}

/* 1 if loop.<name> is true, 0 if false, -1 on error. */
static int
core_flag_read(cd_loop_t *core, PyObject *name)
{
    PyObject *v = core_get(core, name);
    if (v == NULL) {
        return -1;
    }
    int r = v == Py_False ? 0 : v == Py_True ? 1 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* time.monotonic(), which BaseEventLoop.time() returns: the same clock
 * and the same conversion to seconds. */
static int
monotonic(double *out)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_Monotonic(&t) < 0) {
        return -1;
    }
    *out = PyTime_AsSecondsDouble(t);
#else
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    /* _PyTime_AsSecondsDouble. */
    if (ns % 1000000000 == 0) {
        *out = (double)(ns / 1000000000);
    }
    else {
        *out = (double)ns / 1e9;
    }
#endif
    return 0;
}

/* 1 when no instance attribute replaces the loop's method `name` (what
 * the class resolves it to is cd_loopmeth_plain's), 0 when it must be
 * called (or the __dict__ is not read), -1 on error. */
static int
core_no_instance_attr(cd_loop_t *core, PyObject *name)
{
    if (core->aio_dict == NULL) {
        return 0;
    }
    PyObject *v = PyDict_GetItemWithError(core->aio_dict, name);
    if (v != NULL) {
        return 0;
    }
    return PyErr_Occurred() ? -1 : 1;
}

/* 1 when loop._task_factory is None, 0 if not (or missing), -1 on
 * error. */
static int
core_no_factory_read(cd_loop_t *core)
{
    PyObject *tf = core_get(core, core->st->s__task_factory);
    if (tf == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    int r = tf == Py_None;
    Py_DECREF(tf);
    return r;
}

/* ---- What the step reads of the loop, cached.
 *
 * A dict watcher (Python 3.12+) on the loop's __dict__ bumps a generation
 * number at every change of any watched __dict__ (rare: set_debug, stop,
 * close, a cancelled timer's count); the values read at the current
 * generation are the ones getattr would find.  Without watchers every
 * read goes to the __dict__. */

static void
attrs_clear(cd_loop_t *core)
{
    core->attrs.gen = 0;
    Py_CLEAR(core->attrs.scheduled);
    Py_CLEAR(core->attrs.selector);
}

#if PY_VERSION_HEX >= 0x030C0000
/* 0/1 for a bool, -1 for anything else; -2 on error. */
static int
attrs_read_flag(cd_loop_t *core, PyObject *name)
{
    PyObject *v = core_get(core, name);
    if (v == NULL) {
        return -2;
    }
    int r = v == Py_True ? 1 : v == Py_False ? 0 : -1;
    Py_DECREF(v);
    return r;
}

/* The flags that say no instance attribute replaces a loop method. */
static const struct {
    cd_attr_flag_t flag;
    cd_lm_t lm;
} attr_methods[] = {
    {CD_ATTR_TIME_IS_CLOCK, CD_LM_TIME},
    {CD_ATTR_WAKE_IS_OURS, CD_LM_WRITE_TO_SELF},
    {CD_ATTR_TC_IS_OURS, CD_LM_TIMER_CANCELLED},
    {CD_ATTR_DEBUG_IS_OURS, CD_LM_GET_DEBUG},
    {CD_ATTR_CF_IS_OURS, CD_LM_CREATE_FUTURE},
    {CD_ATTR_CS_IS_OURS, CD_LM_CALL_SOON},
    {CD_ATTR_CST_IS_OURS, CD_LM_CALL_SOON_THREADSAFE},
};
#endif

/* core_attrs when the values must be read again. */
static int
core_attrs_load(cd_loop_t *core)
{
#if PY_VERSION_HEX >= 0x030C0000
    cd_state *st = core->st;
    if (core->aio_loop == NULL || core->dict_watch == 0) {
        return 0;
    }
    uint64_t gen = attrs_gen;
    attrs_clear(core);
    if (core_dict(core) == NULL) {
        /* A property of the class: getattr, one by one. */
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *names[] = {st->s__debug, st->s__closed, st->s__stopping};
    for (int i = 0; i < 3; i++) {
        int f = attrs_read_flag(core, names[i]);
        if (f == -2) {
            return -1;
        }
        core->attrs.flag[i] = (signed char)f;
    }
    int nofactory = core_no_factory_read(core);
    if (nofactory < 0) {
        return -1;
    }
    core->attrs.flag[CD_ATTR_NO_FACTORY] = (signed char)nofactory;
    for (size_t i = 0; i < sizeof attr_methods / sizeof *attr_methods; i++) {
        int f = core_no_instance_attr(core, st->lm_name[attr_methods[i].lm]);
        if (f < 0) {
            return -1;
        }
        core->attrs.flag[attr_methods[i].flag] = (signed char)f;
    }
    PyObject *sched = core_get(core, st->s__scheduled);
    PyObject *sel = sched ? core_get(core, st->s__selector) : NULL;
    if (sel == NULL) {
        Py_XDECREF(sched);
        return -1;
    }
    core->attrs.selector = sel;
    if (PyList_Check(sched)) {
        core->attrs.scheduled = sched;
    }
    else {
        Py_DECREF(sched);
    }
    /* A read through getattr may have run code that changed them; a
     * class without a version tag is checked at every use. */
    core->attrs.gen = attrs_gen == gen && core->dict_tag != 0 ? gen : 0;
    return core->attrs.gen != 0;
#else
    return 0;
#endif
}

/* 1 when core->attrs holds the current values, 0 when they must be read
 * one by one, -1 on error.  The values stay current while the generation
 * they were read at is the watchers' (0 is never current: attrs_clear
 * sets it when the loop stops being watched). */
static inline int
core_attrs_current(const cd_loop_t *core)
{
#if PY_VERSION_HEX >= 0x030C0000
    return core->attrs.gen == attrs_gen;
#else
    return 0;
#endif
}

static inline int
core_attrs(cd_loop_t *core)
{
    if (core_attrs_current(core)) {
        return 1;
    }
    return core_attrs_load(core);
}

/* 1 if the flag is true, 0 if false, -1 on error. */
static inline int
core_flag(cd_loop_t *core, cd_attr_flag_t which, PyObject *name)
{
    int c = core_attrs(core);
    if (c < 0) {
        return -1;
    }
    if (c > 0 && core->attrs.flag[which] >= 0) {
        return core->attrs.flag[which];
    }
    return core_flag_read(core, name);
}

/* New reference: loop._scheduled, which must be a list. */
static PyObject *
core_scheduled(cd_loop_t *core)
{
    int c = core_attrs(core);
    if (c < 0) {
        return NULL;
    }
    if (c > 0 && core->attrs.scheduled != NULL) {
        return Py_NewRef(core->attrs.scheduled);
    }
    PyObject *sched = core_get(core, core->st->s__scheduled);
    if (sched != NULL && !PyList_Check(sched)) {
        PyErr_SetString(PyExc_TypeError, "loop._scheduled is not a list");
        Py_CLEAR(sched);
    }
    return sched;
}

/* New reference: loop._selector. */
static PyObject *
core_selector(cd_loop_t *core)
{
    int c = core_attrs(core);
    if (c < 0) {
        return NULL;
    }
    if (c > 0) {
        return Py_NewRef(core->attrs.selector);
    }
    return core_get(core, core->st->s__selector);
}

/* 1 when the loop's method `which` is the one the core stands for: its
 * class keeps it (cd_loopmeth_plain) and no instance attribute replaces
 * it (the step's cached flag, else a look in the __dict__); 0 if not, -1
 * on error. */
static int
core_method_is_ours(cd_loop_t *core, cd_lm_t which, int flag)
{
    int plain = cd_loopmeth_plain(core->st, core->aio_loop, which);
    if (plain <= 0) {
        return plain;
    }
    int c = core_attrs(core);
    if (c < 0) {
        return -1;
    }
    if (c > 0) {
        return core->attrs.flag[flag];
    }
    return core_no_instance_attr(core, core->st->lm_name[which]);
}

/* cd_sched_no_instance_attr when the attributes are not current (flag:
 * the one that says it, or -1), out of line: the call that finds them
 * current (two a WebSocket echo message) saves no registers for it. */
static __attribute__((noinline)) int
no_instance_attr_load(cd_loop_t *core, cd_lm_t which, int flag)
{
    if (flag >= 0) {
        int c = core_attrs(core);
        if (c != 0) {
            return c < 0 ? -1 : core->attrs.flag[flag];
        }
    }
    return core_no_instance_attr(core, core->st->lm_name[which]);
}

int
cd_sched_no_instance_attr(cd_loop_t *core, cd_lm_t which)
{
    int flag = which == CD_LM_TIMER_CANCELLED ? CD_ATTR_TC_IS_OURS
               : which == CD_LM_GET_DEBUG     ? CD_ATTR_DEBUG_IS_OURS
               : which == CD_LM_CREATE_FUTURE ? CD_ATTR_CF_IS_OURS
               : which == CD_LM_CALL_SOON     ? CD_ATTR_CS_IS_OURS
                                              : -1;
    if (flag >= 0 && core_attrs_current(core)) {
        return core->attrs.flag[flag];
    }
    return no_instance_attr_load(core, which, flag);
}

/* 1 when loop.time() is the monotonic clock (BaseEventLoop.time). */
static int
core_time_is_clock(cd_loop_t *core)
{
    return core_method_is_ours(core, CD_LM_TIME, CD_ATTR_TIME_IS_CLOCK);
}

/* loop.time() as a double. */
static int
core_time(cd_loop_t *core, double *out)
{
    int clock = core_time_is_clock(core);
    if (clock != 0) {
        return clock < 0 ? -1 : monotonic(out);
    }
    PyObject *t = PyObject_CallMethodNoArgs(core->aio_loop, core->st->s_time);
    if (t == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* New reference: loop.time(), the object asyncio's callers get. */
static PyObject *
core_time_obj(cd_loop_t *core)
{
    double now;
    int clock = core_time_is_clock(core);
    if (clock != 0) {
        return clock < 0 || monotonic(&now) < 0 ? NULL
                                                : PyFloat_FromDouble(now);
    }
    return PyObject_CallMethodNoArgs(core->aio_loop, core->st->s_time);
}

/* Whether the keyword name kw (a str) is "context": _asyncio passes its
 * own string, not the interned one st->s_context is (its Tasks call
 * call_soon(step, context=ctx) at every step).  Compared here in a few
 * instructions, not PyUnicode_CompareWithASCIIString's ~120. */
static inline int
kw_is_context(PyObject *kw)
{
    return PyUnicode_Check(kw) && PyUnicode_GET_LENGTH(kw) == 7 &&
           PyUnicode_KIND(kw) == PyUnicode_1BYTE_KIND &&
           memcmp(PyUnicode_1BYTE_DATA(kw), "context", 7) == 0;
}

/* The checks shared by call_soon/call_at/call_later: nfixed positional
 * arguments before the callback's.  Returns 1 when the C path may go on
 * (*context set, NULL if not given), 0 when asyncio's own method must
 * handle the call (debug mode, unusual arguments), -1 on error. */
static int
sched_check(cd_loop_t *core, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames, Py_ssize_t nfixed, PyObject **context)
{
    cd_state *st = core->st;
    PyObject *loop = core->aio_loop;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *context = NULL;
    if (loop == NULL) {
        /* The core drops its loop when the loop closes. */
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    if (nargs <= nfixed || nkw > 1 || args[0] == Py_None) {
        /* Let asyncio raise its own TypeError. */
        return 0;
    }
    if (nkw == 1) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, 0);
        if (kw != st->s_context && !kw_is_context(kw)) {
            return 0;
        }
        *context = args[nargs];
    }
    int debug = core_flag(core, CD_ATTR_DEBUG, st->s__debug);
    if (debug != 0) {
        /* Thread and callback checks, source tracebacks: asyncio's. */
        return debug < 0 ? -1 : 0;
    }
    int closed = core_flag(core, CD_ATTR_CLOSED, st->s__closed);
    if (closed != 0) {
        if (closed > 0) {
            PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        }
        return -1;
    }
    return 1;
}

/* New reference: the tuple of the callback's arguments.  One argument
 * (a future's done callback, a Task's wake-up) goes into the spare 1-tuple
 * when there is one that nothing else holds (handle_release keeps it). */
static PyObject *
sched_cbargs(cd_loop_t *core, PyObject *const *args, Py_ssize_t from,
             Py_ssize_t nargs)
{
    if (nargs - from == 1 && core->nspare_args > 0) {
        PyObject *t = core->spare_args[--core->nspare_args];
        if (Py_REFCNT(t) == 1) {
            PyObject *old = PyTuple_GET_ITEM(t, 0); /* None */
            PyTuple_SET_ITEM(t, 0, Py_NewRef(args[from]));
            Py_DECREF(old);
            /* The collector untracks a tuple of None. */
            if (!PyObject_GC_IsTracked(t)) {
                PyObject_GC_Track(t);
            }
            return t;
        }
        Py_DECREF(t);
    }
    PyObject *t = PyTuple_New(nargs - from);
    if (t != NULL) {
        for (Py_ssize_t i = from; i < nargs; i++) {
            PyTuple_SET_ITEM(t, i - from, Py_NewRef(args[i]));
        }
    }
    return t;
}

/* New reference: a Handle for args[0](*args[1:]) appended to the loop's
 * ready queue (what call_soon does once its arguments are checked). */
static PyObject *
sched_ready_push(cd_loop_t *core, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *context)
{
    cd_state *st = core->st;
    PyObject *cbargs = sched_cbargs(core, args, 1, nargs);
    PyObject *h =
        cbargs ? handle_new(core, st->asyncio_Handle, args[0], cbargs, context)
               : NULL;
    if (h != NULL && cd_readyq_push(core->ready_q, h) < 0) {
        Py_CLEAR(h);
    }
    return h;
}

/* call_soon(callback, *args, context=None): BaseEventLoop.call_soon. */
PyObject *
cd_sched_call_soon(cd_loop_t *core, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    cd_state *st = core->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    int ok = sched_check(core, args, nargs, kwnames, 0, &context);
    if (ok <= 0) {
        return ok < 0 ? NULL
                      : cd_loopmeth_call(st->lm_base[CD_LM_CALL_SOON],
                                         core->aio_loop, args, nargs, kwnames);
    }
    return sched_ready_push(core, args, nargs, context);
}

/* 1 when loop._write_to_self() is LoopMethods' wake-up (cd_loop_wake):
 * the class keeps it and no instance attribute replaces it; 0 if not, -1
 * on error. */
static int
core_wake_is_ours(cd_loop_t *core)
{
    return core_method_is_ours(core, CD_LM_WRITE_TO_SELF,
                               CD_ATTR_WAKE_IS_OURS);
}

int
cd_sched_threadsafe_plain(cd_loop_t *core)
{
    int r = core_wake_is_ours(core);
    if (r > 0) {
        r = core_method_is_ours(core, CD_LM_CALL_SOON_THREADSAFE,
                                CD_ATTR_CST_IS_OURS);
    }
    return r;
}

/* self._write_to_self(), as BaseEventLoop.call_soon_threadsafe ends: in
 * C when it is ours, else whatever the loop has (a subclass's, a patch,
 * an instance attribute).  0, or -1 with an exception. */
static int
core_wake(cd_loop_t *core)
{
    int ours = core_wake_is_ours(core);
    if (ours != 0) {
        if (ours > 0) {
            cd_loop_wake_release_gil(core);
        }
        return ours < 0 ? -1 : 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(
        core->aio_loop, core->st->lm_name[CD_LM_WRITE_TO_SELF]);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* call_soon_threadsafe(callback, *args, context=None), from any thread
 * holding the GIL: call_soon, then the loop's wake-up (core_wake: its
 * _write_to_self(), cd_loop_wake unless the loop replaces it).
 * Where asyncio makes a _ThreadSafeHandle (a Handle whose cancel() and
 * _run() take its own RLock), so does this: the same type, its _lock an
 * RLock as threading.RLock() makes it. */
PyObject *
cd_sched_call_soon_threadsafe(cd_loop_t *core, PyObject *const *args,
                              size_t nargsf, PyObject *kwnames)
{
    cd_state *st = core->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context, *h = NULL;
    int ok = sched_check(core, args, nargs, kwnames, 0, &context);
    if (ok <= 0) {
        return ok < 0
                   ? NULL
                   : cd_loopmeth_call(st->lm_base[CD_LM_CALL_SOON_THREADSAFE],
                                      core->aio_loop, args, nargs, kwnames);
    }
    if (core->ts_handle == NULL) {
        h = sched_ready_push(core, args, nargs, context);
    }
    else {
        PyObject *lock = PyObject_CallNoArgs(core->ts_rlock);
        PyObject *cbargs = lock ? sched_cbargs(core, args, 1, nargs) : NULL;
        h = cbargs
                ? handle_new(core, core->ts_handle, args[0], cbargs, context)
                : NULL;
        if (h != NULL) {
            CD_SLOT(h, core->ts_lock_off) = Py_NewRef(lock);
            if (cd_readyq_push(core->ready_q, h) < 0) {
                Py_CLEAR(h);
            }
        }
        Py_XDECREF(lock);
    }
    if (h != NULL && core_wake(core) < 0) {
        /* asyncio's raises too, the handle already queued. */
        Py_CLEAR(h);
    }
    return h;
}

/* PyObject_GetOptionalAttrString (3.13): *out NULL, 0 if obj has no such
 * attribute; -1 on error. */
static int
get_optional(PyObject *obj, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(obj, name);
    if (*out != NULL) {
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return -1;
    }
    PyErr_Clear();
    return 0;
}

/* Notes asyncio.events._ThreadSafeHandle, its _lock slot and the RLock
 * factory, where the running Python has that class (looked up as the
 * loop attaches). */
static int
sched_attach_threadsafe(cd_loop_t *core)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    PyObject *cls = NULL, *threading = NULL, *rlock = NULL;
    int rc = -1;
    if (events == NULL ||
        get_optional(events, "_ThreadSafeHandle", &cls) < 0) {
        goto done;
    }
    if (cls == NULL) {
        Py_CLEAR(core->ts_handle);
        Py_CLEAR(core->ts_rlock);
        rc = 0;
        goto done;
    }
    if (!PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls,
                          (PyTypeObject *)core->st->asyncio_Handle)) {
        PyErr_SetString(PyExc_TypeError,
                        "asyncio.events._ThreadSafeHandle is not a Handle");
        goto done;
    }
    /* threading.RLock() returns _thread.RLock() when threading has it. */
    threading = PyImport_ImportModule("threading");
    if (threading == NULL || get_optional(threading, "_CRLock", &rlock) < 0) {
        goto done;
    }
    if (rlock == NULL || rlock == Py_None) {
        Py_XSETREF(rlock, PyObject_GetAttrString(threading, "RLock"));
    }
    if (rlock == NULL || slot_offset(cls, "_lock", &core->ts_lock_off) < 0) {
        goto done;
    }
    Py_XSETREF(core->ts_handle, Py_NewRef(cls));
    Py_XSETREF(core->ts_rlock, Py_NewRef(rlock));
    rc = 0;
done:
    Py_XDECREF(events);
    Py_XDECREF(cls);
    Py_XDECREF(threading);
    Py_XDECREF(rlock);
    return rc;
}

/* ---- The timer heap: loop._scheduled, a list kept in heapq's order.
 *
 * The same sift algorithms as CPython's _heapq module, with the same
 * comparison (TimerHandle.__lt__ compares _when; equal ones are not
 * less, so timers due at the same time leave in heapq's order, as under
 * asyncio): the list is the heap heapq would have built, so asyncio code
 * and tests that use it still find a heap.
 *
 * A comparison read its two timers through the list (item -> TimerHandle
 * -> its _when float: dependent loads, cache misses once the heap is
 * larger than L1).  The core keeps a copy beside the list instead:
 * core->heap[i] holds the list's item i and its _when as a double, and a
 * sift moves both together, reading no timer.  The list stays the truth:
 * an entry is used only while its handle is still the list's item at that
 * index (a pointer comparison at every read), and the copy is made again
 * from the list when its size is not the list's (Python code appended,
 * cleared or replaced the list) or an item moved; debug mode's Python
 * paths drop it.  asyncio never changes a timer's _when while it is in
 * the heap; code that does (then heapq.heapify()s the list) is seen when
 * that timer is the first (heap_top_when reads its _when and drops the
 * copy if it differs): a changed _when deeper in the heap is not seen by
 * the sifts before that. */

/* timer_lt for what the copy does not serve: TimerHandle.__lt__ or a
 * subclass's own. */
static int
timer_lt_slow(PyObject *a, PyObject *b)
{
    Py_INCREF(a);
    Py_INCREF(b);
    int r = PyObject_RichCompareBool(a, b, Py_LT);
    Py_DECREF(a);
    Py_DECREF(b);
    return r;
}

/* The key kept for a timer: its _when, for a timer of the core's own type
 * whose _when is a float; NAN for any other item (compared in Python, as
 * is a NAN _when, with the same result). */
static double
heap_key(cd_state *st, PyObject *h)
{
    if (Py_IS_TYPE(h, st->Timer_type)) {
        PyObject *w = CD_SLOT(h, st->handle_slots.when);
        if (w != NULL && PyFloat_CheckExact(w)) {
            return PyFloat_AS_DOUBLE(w);
        }
    }
    return NAN;
}

/* Room for n entries; -1 with MemoryError. */
static int
heap_reserve(cd_loop_t *core, Py_ssize_t n)
{
    if (n <= core->heap_cap) {
        return 0;
    }
    Py_ssize_t cap = core->heap_cap > 0 ? core->heap_cap : 64;
    while (cap < n) {
        cap *= 2;
    }
    cd_heap_ent_t *e = PyMem_Realloc(core->heap, (size_t)cap * sizeof(*e));
    if (e == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    core->heap = e;
    core->heap_cap = cap;
    return 0;
}

/* The copy is the n-item list's, with the keys its timers have now. */
static int
heap_follows(const cd_loop_t *core, Py_ssize_t n)
{
    return core->heap_len == n && core->heap_writes == cd_timer_when_writes;
}

/* Copies the list's items and their keys again. */
static int
heap_copy(cd_loop_t *core, PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    PyObject **items = ((PyListObject *)list)->ob_item;
    core->heap_len = -1;
    core->heap_writes = cd_timer_when_writes;
    if (heap_reserve(core, n + 1) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        core->heap[i].h = items[i];
        core->heap[i].when = heap_key(core->st, items[i]);
    }
    core->heap_len = n;
    return 0;
}

/* Gives back most of a copy far larger than the heap (after a burst of
 * timers), as a list does. */
static void
heap_trim(cd_loop_t *core)
{
    Py_ssize_t cap = core->heap_cap / 2;
    if (cap < CD_HEAP_KEEP || core->heap_len > cap / 2) {
        return;
    }
    cd_heap_ent_t *e = PyMem_Realloc(core->heap, (size_t)cap * sizeof(*e));
    if (e != NULL) {
        core->heap = e;
        core->heap_cap = cap;
        if (core->heap_len > cap - 1) {
            core->heap_len = -1;
        }
    }
}

/* The copy no longer follows the list (Python code changes it). */
static void
heap_forget(cd_loop_t *core)
{
    core->heap_len = -1;
}

/* One sift over the list and the core's copy of it. */
typedef struct {
    cd_loop_t *core;     /* borrowed: the caller's */
    PyObject *list;      /* borrowed: the heap, the caller's reference */
    PyObject **items;    /* the list's items, read again after Python code */
    cd_heap_ent_t *ents; /* core->heap, read again after a copy */
    Py_ssize_t size;     /* the list's size when the sift began */
} cd_sift_t;

static int
sift_begin(cd_sift_t *s, cd_loop_t *core, PyObject *list)
{
    s->core = core;
    s->list = list;
    s->items = ((PyListObject *)list)->ob_item;
    s->size = PyList_GET_SIZE(list);
    int r = heap_follows(core, s->size) ? 0 : heap_copy(core, list);
    s->ents = core->heap;
    return r;
}

/* sift_lt when the copy does not follow the list or a key is NAN. */
static int
sift_lt_slow(cd_sift_t *s, Py_ssize_t i, Py_ssize_t j)
{
    if (s->ents[i].h != s->items[i] || s->ents[j].h != s->items[j]) {
        if (heap_copy(s->core, s->list) < 0) {
            return -1;
        }
        s->ents = s->core->heap;
    }
    double a = s->ents[i].when, b = s->ents[j].when;
    if (!isnan(a) && !isnan(b)) {
        return a < b;
    }
    int lt = timer_lt_slow(s->items[i], s->items[j]);
    if (lt < 0) {
        return -1;
    }
    /* The comparison ran Python code, which may have changed the list
     * (then its size differs, as _heapq checks). */
    if (PyList_GET_SIZE(s->list) != s->size) {
        PyErr_SetString(PyExc_RuntimeError,
                        "list changed size during iteration");
        return -1;
    }
    s->items = ((PyListObject *)s->list)->ob_item;
    return lt;
}

/* 1 if item i < item j, 0 if not, -1 on error. */
static inline int
sift_lt(cd_sift_t *s, Py_ssize_t i, Py_ssize_t j)
{
    const cd_heap_ent_t *e = s->ents;
    if (e[i].h == s->items[i] && e[j].h == s->items[j]) {
        double a = e[i].when, b = e[j].when;
        if (a < b) {
            return 1;
        }
        if (b <= a) {
            return 0;
        }
    }
    return sift_lt_slow(s, i, j);
}

static inline void
sift_swap(cd_sift_t *s, Py_ssize_t i, Py_ssize_t j)
{
    PyObject *item = s->items[i];
    cd_heap_ent_t e = s->ents[i];
    s->items[i] = s->items[j];
    s->items[j] = item;
    s->ents[i] = s->ents[j];
    s->ents[j] = e;
}

/* _heapq's siftdown: item pos moves up towards startpos. */
static int
heap_siftdown(cd_sift_t *s, Py_ssize_t startpos, Py_ssize_t pos)
{
    while (pos > startpos) {
        Py_ssize_t parentpos = (pos - 1) >> 1;
        int lt = sift_lt(s, pos, parentpos);
        if (lt <= 0) {
            return lt;
        }
        sift_swap(s, pos, parentpos);
        pos = parentpos;
    }
    return 0;
}

/* _heapq's siftup: the smaller child rises until a leaf, then siftdown. */
static int
heap_siftup(cd_sift_t *s, Py_ssize_t pos)
{
    Py_ssize_t endpos = s->size, startpos = pos;
    Py_ssize_t limit = endpos >> 1;
    while (pos < limit) {
        Py_ssize_t childpos = 2 * pos + 1;
        if (childpos + 1 < endpos) {
            int lt = sift_lt(s, childpos, childpos + 1);
            if (lt < 0) {
                return -1;
            }
            childpos += lt ^ 1;
        }
        sift_swap(s, childpos, pos);
        pos = childpos;
    }
    return heap_siftdown(s, startpos, pos);
}

/* heapq.heappush(heap, item). */
static int
heap_push(cd_loop_t *core, PyObject *heap, PyObject *item)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    cd_sift_t s;
    if (PyList_Append(heap, item) < 0) {
        return -1;
    }
    if (heap_follows(core, n)) {
        if (heap_reserve(core, n + 1) < 0) {
            heap_forget(core);
            return -1;
        }
        core->heap[n].h = item;
        core->heap[n].when = heap_key(core->st, item);
        core->heap_len = n + 1;
    }
    if (sift_begin(&s, core, heap) < 0) {
        return -1;
    }
    return heap_siftdown(&s, 0, n);
}

/* New reference: heapq.heappop(heap) of a non-empty heap. */
static PyObject *
heap_pop(cd_loop_t *core, PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    PyObject *last;
    cd_sift_t s;
#ifndef Py_GIL_DISABLED
    if (n - 1 >= ((PyListObject *)heap)->allocated >> 1) {
        /* What list_resize does when a list shrinks by one within its
         * allocation: the list's reference moves to last. */
        last = PyList_GET_ITEM(heap, n - 1);
        Py_SET_SIZE(heap, n - 1);
    }
    else
#endif
    {
        last = Py_NewRef(PyList_GET_ITEM(heap, n - 1));
        if (PyList_SetSlice(heap, n - 1, n, NULL) < 0) {
            Py_DECREF(last);
            heap_forget(core);
            return NULL;
        }
    }
    if (heap_follows(core, n)) {
        /* The last entry moves to the top, as the last item does. */
        core->heap[0] = core->heap[n - 1];
        core->heap_len = n - 1;
    }
    heap_trim(core);
    if (n == 1) {
        return last;
    }
    /* The first item's reference moves to the caller; last's to heap[0]. */
    PyObject *first = PyList_GET_ITEM(heap, 0);
    PyList_SET_ITEM(heap, 0, last);
    if (sift_begin(&s, core, heap) < 0 || heap_siftup(&s, 0) < 0) {
        Py_DECREF(first);
        return NULL;
    }
    return first;
}

/* heapq.heapify(heap). */
static int
heap_heapify(cd_loop_t *core, PyObject *heap)
{
    cd_sift_t s;
    if (sift_begin(&s, core, heap) < 0) {
        return -1;
    }
    for (Py_ssize_t i = PyList_GET_SIZE(heap) / 2 - 1; i >= 0; i--) {
        if (heap_siftup(&s, i) < 0) {
            return -1;
        }
    }
    return 0;
}

/* timer._scheduled = v. */
static int
timer_set_scheduled(cd_state *st, PyObject *h, PyObject *v)
{
    if (handle_is(st, h, st->asyncio_TimerHandle)) {
        Py_XSETREF(CD_SLOT(h, st->handle_slots.scheduled), Py_NewRef(v));
        return 0;
    }
    return PyObject_SetAttr(h, st->s__scheduled, v);
}

/* timer._when as a double; -1 with an exception on error. */
static int
timer_when(cd_state *st, PyObject *h, double *out)
{
    if (handle_is(st, h, st->asyncio_TimerHandle)) {
        PyObject *w = CD_SLOT(h, st->handle_slots.when);
        if (w != NULL && PyFloat_CheckExact(w)) {
            *out = PyFloat_AS_DOUBLE(w);
            return 0;
        }
    }
    PyObject *w = PyObject_GetAttr(h, st->s__when);
    if (w == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(w);
    Py_DECREF(w);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* The first timer's _when, from the copy when it follows the list: then
 * 1 (the timer is of the core's own type, heap_key), else 0; -1 on
 * error. */
static int
heap_top_when(cd_loop_t *core, PyObject *heap, double *out)
{
    PyObject *top = PyList_GET_ITEM(heap, 0);
    if (heap_follows(core, PyList_GET_SIZE(heap)) && core->heap[0].h == top &&
        !isnan(core->heap[0].when)) {
        /* The top's _when as it is now (a timer of the core's type,
         * heap_key): Python code that changed it in place (and
         * re-heapified) makes the copy's keys read again. */
        PyObject *w = CD_SLOT(top, core->st->handle_slots.when);
        if (w != NULL && PyFloat_CheckExact(w) &&
            PyFloat_AS_DOUBLE(w) == core->heap[0].when) {
            *out = core->heap[0].when;
            return 1;
        }
        heap_forget(core);
    }
    return timer_when(core->st, top, out);
}

/* Pushes a new TimerHandle(when, ...) on the loop's heap (call_at). */
static PyObject *
sched_timer(cd_loop_t *core, PyObject *when, PyObject *const *args,
            Py_ssize_t nargs, PyObject *context)
{
    cd_state *st = core->st;
    const cd_handle_slots_t *o = &st->handle_slots;
    PyObject *cbargs = sched_cbargs(core, args, 1, nargs);
    PyObject *h = cbargs ? handle_new(core, (PyObject *)st->Timer_type,
                                      args[0], cbargs, context)
                         : NULL;
    if (h == NULL) {
        return NULL;
    }
    CD_SLOT(h, o->when) = Py_NewRef(when);
    CD_SLOT(h, o->scheduled) = Py_NewRef(Py_False);
    PyObject *sched = core_scheduled(core);
    int r = sched ? heap_push(core, sched, h) : -1;
    Py_XDECREF(sched);
    if (r < 0) {
        Py_DECREF(h);
        return NULL;
    }
    Py_SETREF(CD_SLOT(h, o->scheduled), Py_NewRef(Py_True));
    return h;
}

/* -1 with ValueError for a NaN the loop cannot wait for, on the Pythons
 * whose _run_once keeps the NaN as its select() timeout (3.13: `timeout =
 * when - time()` and two comparisons); 3.11 and 3.12 clamp it to 0
 * (`max(0, nan)` is 0) and run the timer, so there a NaN is let through. */
static int
when_nan_check(double w)
{
#if PY_VERSION_HEX >= 0x030D0000
    if (isnan(w)) {
        PyErr_SetString(PyExc_ValueError,
                        "cannot convert float NaN to integer");
        return -1;
    }
#else
    (void)w;
#endif
    return 0;
}

/* 0 if the loop can wait until when; else -1 with what stock asyncio
 * raises once the timer is first in its heap (run_forever: `when -
 * loop.time()` is the select() timeout): ValueError for NaN (3.13),
 * TypeError for a Decimal.  Raised here, as uvloop does: the timer never
 * runs on stock, and the loop would stop with it. */
static int
sched_when_check(cd_loop_t *core, PyObject *when)
{
    double w;
    if (PyFloat_CheckExact(when)) {
        w = PyFloat_AS_DOUBLE(when);
    }
    else if (PyLong_CheckExact(when)) {
        return 0;
    }
    else {
        PyObject *now = core_time_obj(core);
        PyObject *left = now ? PyNumber_Subtract(when, now) : NULL;
        Py_XDECREF(now);
        if (left == NULL) {
            return -1;
        }
        w = PyFloat_Check(left) ? PyFloat_AS_DOUBLE(left) : 0.0;
        Py_DECREF(left);
    }
    return when_nan_check(w);
}

/* call_at(when, callback, *args, context=None). */
PyObject *
cd_sched_call_at(cd_loop_t *core, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    cd_state *st = core->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    int ok = sched_check(core, args, nargs, kwnames, 1, &context);
    if (ok <= 0) {
        heap_forget(core); /* asyncio's call_at pushes in Python. */
        return ok < 0 ? NULL
                      : cd_loopmeth_call(st->lm_base[CD_LM_CALL_AT],
                                         core->aio_loop, args, nargs, kwnames);
    }
    if (sched_when_check(core, args[0]) < 0) {
        return NULL;
    }
    return sched_timer(core, args[0], args + 1, nargs - 1, context);
}

/* New reference: loop.time() + delay.  With the clock and a float or int
 * delay, in C: float + int converts the int as PyLong_AsDouble does. */
static PyObject *
sched_when(cd_loop_t *core, PyObject *delay)
{
    int clock = core_time_is_clock(core);
    if (clock < 0) {
        return NULL;
    }
    if (clock > 0 && (PyFloat_CheckExact(delay) || PyLong_CheckExact(delay))) {
        double now, d = PyFloat_CheckExact(delay) ? PyFloat_AS_DOUBLE(delay)
                                                  : PyLong_AsDouble(delay);
        if ((d == -1.0 && PyErr_Occurred()) || monotonic(&now) < 0) {
            return NULL;
        }
        return PyFloat_FromDouble(now + d);
    }
    PyObject *now = core_time_obj(core);
    PyObject *when = now ? PyNumber_Add(now, delay) : NULL;
    Py_XDECREF(now);
    return when;
}

/* call_later(delay, callback, *args, context=None). */
PyObject *
cd_sched_call_later(cd_loop_t *core, PyObject *const *args, size_t nargsf,
                    PyObject *kwnames)
{
    cd_state *st = core->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    int ok = sched_check(core, args, nargs, kwnames, 1, &context);
    if (ok <= 0) {
        heap_forget(core);
        return ok < 0 ? NULL
                      : cd_loopmeth_call(st->lm_base[CD_LM_CALL_LATER],
                                         core->aio_loop, args, nargs, kwnames);
    }
    PyObject *when = sched_when(core, args[0]);
    if (when == NULL || sched_when_check(core, when) < 0) {
        Py_XDECREF(when);
        return NULL;
    }
    PyObject *h = sched_timer(core, when, args + 1, nargs - 1, context);
    Py_DECREF(when);
    return h;
}

/* get_debug(): BaseEventLoop.get_debug, which asyncio calls for every
 * Future, Task and cancelled handle: loop._debug as stored. */
int
cd_sched_debug(cd_loop_t *core)
{
    return core_flag(core, CD_ATTR_DEBUG, core->st->s__debug);
}

PyObject *
cd_sched_get_debug(cd_loop_t *core, PyObject *unused)
{
    int c = core_attrs(core);
    if (c < 0) {
        return NULL;
    }
    if (c > 0 && core->attrs.flag[CD_ATTR_DEBUG] >= 0) {
        return PyBool_FromLong(core->attrs.flag[CD_ATTR_DEBUG]);
    }
    return core_get(core, core->st->s__debug);
}

int
cd_sched_loop_plain(cd_loop_t *core, int task)
{
    cd_state *st = core->st;
    int debug = core_flag(core, CD_ATTR_DEBUG, st->s__debug);
    if (debug != 0) {
        return debug < 0 ? -1 : 0;
    }
    int closed = core_flag(core, CD_ATTR_CLOSED, st->s__closed);
    if (closed != 0 || !task) {
        return closed < 0 ? -1 : !closed;
    }
    int c = core_attrs(core);
    if (c != 0) {
        return c < 0 ? -1 : core->attrs.flag[CD_ATTR_NO_FACTORY];
    }
    return core_no_factory_read(core);
}

/* timer_cancelled(handle): BaseEventLoop._timer_handle_cancelled, which
 * TimerHandle.cancel() calls: counts the cancelled timers still in the
 * heap (in C: loop._timer_cancelled_count reads it). */
PyObject *
cd_sched_timer_cancelled(cd_loop_t *core, PyObject *h)
{
    cd_state *st = core->st;
    if (core->aio_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is not attached");
        return NULL;
    }
    int scheduled;
    if (handle_is(st, h, st->asyncio_TimerHandle) &&
        CD_SLOT(h, st->handle_slots.scheduled) != NULL) {
        scheduled = PyObject_IsTrue(CD_SLOT(h, st->handle_slots.scheduled));
    }
    else {
        scheduled = obj_flag(h, st->s__scheduled);
    }
    if (scheduled <= 0) {
        return scheduled < 0 ? NULL : Py_NewRef(Py_None);
    }
    core->timer_cancelled++;
    Py_RETURN_NONE;
}

/* timer_cancelled_count: loop._timer_cancelled_count, which the core keeps
 * (LibuvEventLoop makes the attribute a property over it). */
PyObject *
cd_sched_get_cancelled(cd_loop_t *core, void *closure)
{
    return PyLong_FromSsize_t(core->timer_cancelled);
}

int
cd_sched_set_cancelled(cd_loop_t *core, PyObject *v, void *closure)
{
    Py_ssize_t n = v ? PyLong_AsSsize_t(v) : -1;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete the count");
    }
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    core->timer_cancelled = n;
    return 0;
}

/* Handle._run(), for a Handle or TimerHandle whose slots are known. */
static int
handle_run(cd_loop_t *core, PyObject *h)
{
    cd_state *st = core->st;
    const cd_handle_slots_t *o = &st->handle_slots;
    PyObject *tp = (PyObject *)Py_TYPE(h);
    if (tp != st->asyncio_Handle && tp != (PyObject *)st->Timer_type &&
        tp != st->asyncio_TimerHandle) {
        PyObject *r = PyObject_CallMethodNoArgs(h, st->s__run);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *ctx = CD_SLOT(h, o->context);
    PyObject *cb = CD_SLOT(h, o->callback);
    PyObject *args = CD_SLOT(h, o->args);
    PyObject *r = NULL;
    if (ctx == NULL || cb == NULL || args == NULL || !PyTuple_Check(args) ||
        !PyContext_CheckExact(ctx)) {
        /* Not what __init__ makes: asyncio's own _run decides. */
        r = PyObject_CallMethodNoArgs(h, st->s__run);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    Py_INCREF(ctx);
    Py_INCREF(cb);
    Py_INCREF(args);
    if (PyContext_Enter(ctx) == 0) {
        /* PyObject_Call's unpacking of the tuple, without its checks. */
        r = PyObject_Vectorcall(cb, ((PyTupleObject *)args)->ob_item,
                                (size_t)PyTuple_GET_SIZE(args), NULL);
        PyObject *exc = r == NULL ? PyErr_GetRaisedException() : NULL;
        if (PyContext_Exit(ctx) < 0) {
            Py_XDECREF(exc);
            Py_CLEAR(r);
        }
        else if (exc != NULL) {
            PyErr_SetRaisedException(exc);
        }
    }
    Py_DECREF(ctx);
    Py_DECREF(cb);
    Py_DECREF(args);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    /* Handle._run's except clause, in Python (cdaphne.loop). */
    PyObject *exc = PyErr_GetRaisedException();
    r = PyObject_CallFunctionObjArgs(core->report, h, exc, NULL);
    Py_DECREF(exc);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* 1 if handle._cancelled, 0 if not, -1 on error. */
static int
handle_cancelled(cd_state *st, PyObject *h)
{
    if (handle_is(st, h, st->asyncio_Handle)) {
        PyObject *v = CD_SLOT(h, st->handle_slots.cancelled);
        if (v == Py_False) {
            return 0;
        }
        if (v == Py_True) {
            return 1;
        }
    }
    return obj_flag(h, st->s__cancelled);
}

/* asyncio's rebuild of a heap that is mostly cancelled timers.  The
 * copy of the heap, when it follows the list, is compacted along to
 * follow the new one: the heapify reads no timer's _when (a cold float
 * each).  heap_len is -1 meanwhile, so that a heap call from code run
 * by the loop (a finalizer) copies its own list, which stops the
 * compaction; the result is checked item by item. */
static int
sched_rebuild(cd_loop_t *core, PyObject *sched)
{
    cd_state *st = core->st;
    Py_ssize_t n = PyList_GET_SIZE(sched), k = 0;
    int compact = heap_follows(core, n);
    PyObject *fresh = PyList_New(0);
    int rc = -1;
    if (fresh == NULL) {
        return -1;
    }
    core->heap_len = -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sched); i++) {
        PyObject *h = PyList_GET_ITEM(sched, i);
        int c = handle_cancelled(st, h);
        if (c < 0 || (c > 0 && timer_set_scheduled(st, h, Py_False) < 0) ||
            (c == 0 && PyList_Append(fresh, h) < 0)) {
            goto done;
        }
        if (c == 0) {
            compact = compact && i < n && i < core->heap_cap &&
                      core->heap_len == -1 && core->heap[i].h == h;
            if (compact) {
                core->heap[k++] = core->heap[i];
            }
        }
    }
    compact = compact && core->heap_len == -1 && k == PyList_GET_SIZE(fresh);
    for (Py_ssize_t j = 0; compact && j < k; j++) {
        /* What code ran may have copied another list meanwhile. */
        compact = core->heap[j].h == PyList_GET_ITEM(fresh, j);
    }
    if (compact) {
        core->heap_len = k;
    }
    if (heap_heapify(core, fresh) < 0 ||
        core_set(core, st->s__scheduled, fresh) < 0) {
        goto done;
    }
    core->timer_cancelled = 0;
    rc = 0;
done:
    Py_DECREF(fresh);
    return rc;
}

/* Drops cancelled timers from the heap (the first part of _run_once).
 * Returns 1 if it replaced loop._scheduled by a new list, 0 if not, -1 on
 * error. */
static int
sched_prune(cd_loop_t *core, PyObject *sched)
{
    cd_state *st = core->st;
    Py_ssize_t n = PyList_GET_SIZE(sched);
    if (n == 0) {
        return 0;
    }
    if (n > CD_MIN_SCHEDULED_TIMER_HANDLES &&
        (double)core->timer_cancelled / (double)n >
            CD_MIN_CANCELLED_FRACTION) {
        return sched_rebuild(core, sched) < 0 ? -1 : 1;
    }
    while (PyList_GET_SIZE(sched) > 0) {
        int c = handle_cancelled(st, PyList_GET_ITEM(sched, 0));
        if (c <= 0) {
            if (c < 0) {
                return -1;
            }
            break;
        }
        core->timer_cancelled--;
        PyObject *h = heap_pop(core, sched);
        if (h == NULL || timer_set_scheduled(st, h, Py_False) < 0) {
            Py_XDECREF(h);
            return -1;
        }
        handle_release(core, h);
    }
    return 0;
}

/* select()'s timeout, as _run_once computes it, in *out: negative for
 * None (block), 0 for no wait. */
static int
sched_timeout(cd_loop_t *core, PyObject *sched, double *out)
{
    cd_state *st = core->st;
    Py_ssize_t nready = cd_readyq_len(core->ready_q);
    int stopping =
        nready ? 1 : core_flag(core, CD_ATTR_STOPPING, st->s__stopping);
    *out = 0.0;
    if (stopping != 0) {
        return stopping < 0 ? -1 : 0;
    }
    if (PyList_GET_SIZE(sched) == 0) {
        *out = -1.0;
        return 0;
    }
    double when, now;
    if (heap_top_when(core, sched, &when) < 0 || core_time(core, &now) < 0) {
        return -1;
    }
    double t = when - now;
    if (t > CD_MAXIMUM_SELECT_TIMEOUT) {
        t = CD_MAXIMUM_SELECT_TIMEOUT;
    }
    *out = t > 0 ? t : 0.0;
    return 0;
}

/* Whether the first timer's _when >= end, compared in Python as asyncio
 * does, for a _when no double holds (an int beyond one: OverflowError
 * from heap_top_when, which stock asyncio raises only where it waits for
 * that timer): 1, 0, or -1 with the error. */
static int
top_later_slow(cd_state *st, PyObject *sched, double end)
{
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *e = NULL;
    PyObject *w = PyObject_GetAttr(PyList_GET_ITEM(sched, 0), st->s__when);
    int r = -1;
    if (w != NULL && (e = PyFloat_FromDouble(end)) != NULL) {
        r = PyObject_RichCompareBool(w, e, Py_GE);
    }
    Py_XDECREF(w);
    Py_XDECREF(e);
    return r;
}

/* Moves the timers due by now (+ the clock's resolution) to _ready. */
static int
sched_move_due(cd_loop_t *core, PyObject *sched)
{
    cd_state *st = core->st;
    PyObject *res = NULL;
    double end, when, resolution;
    int rc = -1;
    if (PyList_GET_SIZE(sched) == 0) {
        return 0;
    }
    res = core_get(core, st->s__clock_resolution);
    resolution = res ? PyFloat_AsDouble(res) : -1.0;
    if ((resolution == -1.0 && PyErr_Occurred()) ||
        core_time(core, &end) < 0) {
        goto done;
    }
    end += resolution;
    while (PyList_GET_SIZE(sched) > 0) {
        int own = heap_top_when(core, sched, &when);
        if (own < 0) {
            int later = top_later_slow(st, sched, end);
            if (later < 0) {
                goto done;
            }
            if (later > 0) {
                break;
            }
            own = 0;
        }
        else if (when >= end) {
            break;
        }
        /* The timers of a batch are far apart in memory and cold by
         * now: a timer of the copy is known to be of the core's type, so
         * only its _scheduled slot is touched (the reference moves into
         * the queue), not the line of its type and refcount. */
        PyObject *h = heap_pop(core, sched);
        int r = h == NULL ? -1 : 0;
        if (r == 0 && own) {
            Py_XSETREF(CD_SLOT(h, st->handle_slots.scheduled),
                       Py_NewRef(Py_False));
        }
        else if (r == 0) {
            r = timer_set_scheduled(st, h, Py_False);
        }
        if (r == 0) {
            r = cd_readyq_push_steal(core->ready_q, h);
        }
        if (r < 0) {
            Py_XDECREF(h);
            goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(res);
    return rc;
}

/* Runs the handles that were ready when the step started to run them,
 * flushing output once CD_LOOP_FLUSH_BATCH conns have some queued. */
static int
sched_run_ready(cd_loop_t *core)
{
    Py_ssize_t ntodo = cd_readyq_len(core->ready_q);
    for (Py_ssize_t i = 0; i < ntodo; i++) {
        PyObject *h = cd_readyq_pop(core->ready_q);
        if (h == NULL) {
            /* A callback cleared the queue (the loop closed). */
            return 0;
        }
        int c = handle_cancelled(core->st, h);
        if (c == 0) {
            c = handle_run(core, h);
        }
        handle_release(core, h);
        if (c < 0) {
            return -1;
        }
        if (core->ncorked >= CD_LOOP_FLUSH_BATCH) {
            cd_loop_flush(core);
        }
    }
    return 0;
}

/* The poll of one step: the selector's select(timeout), in C for ours,
 * then _process_events of what it returned. */
static int
sched_poll(cd_loop_t *core, PyObject *sched)
{
    cd_state *st = core->st;
    PyObject *sel = NULL, *events = NULL, *r = NULL;
    double timeout;
    if (sched_timeout(core, sched, &timeout) < 0) {
        return -1;
    }
    sel = core_selector(core);
    if (sel != NULL && sel == core->selector) {
        events = cd_loop_select(core, sel, timeout);
        if (events == Py_None) {
            /* Nothing happened: _process_events() of nothing does
             * nothing. */
            Py_DECREF(sel);
            Py_DECREF(events);
            return 0;
        }
    }
    else if (sel != NULL) {
        /* Another selector gets the timeout asyncio would pass. */
        PyObject *t = timeout < 0    ? Py_NewRef(Py_None)
                      : timeout == 0 ? PyLong_FromLong(0)
                                     : PyFloat_FromDouble(timeout);
        events = t ? PyObject_CallMethodOneArg(sel, st->s_select, t) : NULL;
        Py_XDECREF(t);
    }
    if (events != NULL && PyList_CheckExact(events) &&
        PyList_GET_SIZE(events) == 0) {
        r = Py_NewRef(Py_None);
    }
    else if (events != NULL) {
        r = PyObject_CallMethodOneArg(core->aio_loop, st->s__process_events,
                                      events);
    }
    Py_XDECREF(sel);
    Py_XDECREF(events);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* step(): BaseEventLoop._run_once. */
PyObject *
cd_sched_step(cd_loop_t *core, PyObject *unused)
{
    cd_state *st = core->st;
    if (core->aio_loop == NULL || core->ready_q == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is not attached");
        return NULL;
    }
    int debug = core_flag(core, CD_ATTR_DEBUG, st->s__debug);
    if (debug != 0) {
        /* Slow-callback warnings and _current_handle: asyncio's, whose
         * heapq calls the copy of the heap does not follow. */
        heap_forget(core);
        PyObject *r = debug < 0
                          ? NULL
                          : PyObject_CallOneArg(st->lm_base[CD_LM_RUN_ONCE],
                                                core->aio_loop);
        heap_forget(core);
        return r;
    }
    PyObject *sched = core_scheduled(core);
    int r = sched ? sched_prune(core, sched) : -1;
    if (r > 0) {
        /* The rebuild replaced the list. */
        Py_SETREF(sched, core_scheduled(core));
        r = sched ? 0 : -1;
    }
    /* The list stays loop._scheduled through the step: only a rebuild
     * replaces it, and the poll runs no application code. */
    if (r < 0 || sched_poll(core, sched) < 0 ||
        sched_move_due(core, sched) < 0 || sched_run_ready(core) < 0) {
        Py_XDECREF(sched);
        return NULL;
    }
    Py_DECREF(sched);
    Py_RETURN_NONE;
}

/* Stops watching the loop's __dict__; and reading it unless keep. */
static void
sched_unwatch(cd_loop_t *core, int keep)
{
    attrs_clear(core);
#if PY_VERSION_HEX >= 0x030C0000
    if (core->aio_dict != NULL && core->dict_watch != 0 &&
        PyDict_Unwatch(core->dict_watch - 1, core->aio_dict) < 0) {
        /* The module cleared its watcher first (interpreter exit): the
         * dict is watched no more. */
        PyErr_Clear();
    }
    core->dict_watch = 0;
#endif
    if (!keep) {
        Py_CLEAR(core->aio_dict);
    }
}

#if PY_VERSION_HEX >= 0x030C0000
/* 1 if the watcher of the loop's __dict__ sees an attribute stored
 * through the loop, 0 if not, -1 on error.  CPython 3.13.0 stores the
 * attributes of an object that keeps them inline (a class whose instances
 * have at most 30 attributes) without telling the watchers of its
 * materialized __dict__ (gh-125608, fixed in 3.13.1): the loop then gets
 * a __dict__ of its own (sched_own_dict), or, failing that, the core reads
 * the __dict__ at every use.  Checked with loop._debug, stored twice. */
static int
sched_watch_works(cd_loop_t *core)
{
    cd_state *st = core->st;
    PyObject *v = PyDict_GetItemWithError(core->aio_dict, st->s__debug);
    if (v == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    uint64_t gen = attrs_gen;
    Py_INCREF(v);
    int r = PyObject_SetAttr(core->aio_loop, st->s__debug,
                             v == Py_None ? Py_False : Py_None);
    int seen = attrs_gen != gen;
    if (PyObject_SetAttr(core->aio_loop, st->s__debug, v) < 0) {
        r = -1;
    }
    Py_DECREF(v);
    return r < 0 ? -1 : seen;
}

/* Gives the loop a __dict__ of its own, a copy of the one that shows its
 * inline values, which its watchers then see every store to (the object
 * stops using the inline values), and reads that one. */
static int
sched_own_dict(cd_loop_t *core)
{
    PyObject *d = PyObject_GenericGetDict(core->aio_loop, NULL);
    PyObject *own = d ? PyDict_New() : NULL;
    int r = own ? PyDict_Update(own, d) : -1;
    if (r == 0) {
        /* loop.__dict__ = own, which stops the inline values (3.13.0's
         * PyObject_GenericSetDict would keep them, and the dict stale). */
        r = PyObject_SetAttrString(core->aio_loop, "__dict__", own);
    }
    Py_XDECREF(d);
    if (r < 0) {
        Py_XDECREF(own);
        return -1;
    }
    core->aio_dict = own;
    return 0;
}
#endif

/* Reads the loop's attributes from its __dict__ if its class has no data
 * descriptor for any name the core reads (core_dict checks that again
 * whenever the class changes: a type watcher tells the cached values). */
static int
sched_attach_dict(cd_loop_t *core)
{
#if PY_VERSION_HEX >= 0x030C0000
    cd_state *st = core->st;
#endif
    sched_unwatch(core, 0);
    if (core_dict_check(core) < 0) {
        return -1;
    }
    if (!core->dict_plain) {
        return 0; /* Never read: getattr finds them. */
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (st->type_watcher != 0 &&
        PyType_Watch(st->type_watcher - 1,
                     (PyObject *)Py_TYPE(core->aio_loop)) < 0) {
        return -1;
    }
#endif
    PyObject *d = PyObject_GenericGetDict(core->aio_loop, NULL);
    if (d == NULL) {
        return -1;
    }
    if (!PyDict_CheckExact(d)) {
        Py_DECREF(d);
        return 0;
    }
    core->aio_dict = d;
#if PY_VERSION_HEX >= 0x030C0000
    /* The second try watches a __dict__ of the loop's own. */
    for (int again = 0; st->dict_watcher != 0; again = 1) {
        if (PyDict_Watch(st->dict_watcher - 1, core->aio_dict) < 0) {
            return -1;
        }
        core->dict_watch = st->dict_watcher;
        int seen = sched_watch_works(core);
        if (seen != 0 || again) {
            if (seen <= 0) {
                sched_unwatch(core, 1);
            }
            return seen < 0 ? -1 : 0;
        }
        sched_unwatch(core, 0);
        if (sched_own_dict(core) < 0) {
            return -1;
        }
    }
#endif
    return 0;
}

/* sched_attach_dict, marked as running: the __dict__ it may set on the
 * loop (sched_own_dict) is then not taken for the app's replacement. */
static int
sched_attach_dict_marked(cd_loop_t *core)
{
    core->dict_attaching = 1;
    int r = sched_attach_dict(core);
    core->dict_attaching = 0;
    return r;
}

PyObject *
cd_sched_dict_replaced(cd_loop_t *core, PyObject *unused)
{
    if (core->aio_loop == NULL || core->ready_q == NULL ||
        core->dict_attaching) {
        Py_RETURN_NONE; /* Not attached yet, or our own (sched_own_dict). */
    }
    if (sched_attach_dict_marked(core) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* sched_init(report, selector) -> the ready queue: takes the Python
 * function that reports an exception raised by a callback and the
 * LibuvSelector whose select() the step runs in C; returns the queue that
 * becomes loop._ready. */
PyObject *
cd_sched_attach(cd_loop_t *core, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sched_init(report, selector)");
        return NULL;
    }
    if (core->aio_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is not attached");
        return NULL;
    }
    if (core->ready_q == NULL) {
        core->ready_q = (cd_readyq_t *)cd_readyq_new(core->st);
        if (core->ready_q == NULL) {
            return NULL;
        }
    }
    if (sched_attach_dict_marked(core) < 0 ||
        sched_attach_threadsafe(core) < 0) {
        return NULL;
    }
    Py_XSETREF(core->report, Py_NewRef(args[0]));
    Py_XSETREF(core->selector, Py_NewRef(args[1]));
    return Py_NewRef((PyObject *)core->ready_q);
}

PyObject *
cd_sched_done_future(cd_loop_t *core)
{
    if (core->done_fut != NULL) {
        return core->done_fut;
    }
    if (core->aio_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    PyObject *kw = NULL, *fut = NULL, *r = NULL;
    kw = Py_BuildValue("{sO}", "loop", core->aio_loop);
    if (kw == NULL) {
        goto done;
    }
    fut = PyObject_Call(core->st->asyncio_Future, core->st->empty_tuple, kw);
    if (fut == NULL) {
        goto done;
    }
    r = PyObject_CallMethod(fut, "set_result", "O", Py_None);
    if (r != NULL && core->done_fut == NULL) {
        core->done_fut =
            Py_NewRef(fut); /* Unless made meanwhile (code ran). */
    }
done:
    Py_XDECREF(kw);
    Py_XDECREF(fut);
    Py_XDECREF(r);
    return r != NULL ? core->done_fut : NULL;
}

int
cd_sched_loop_traverse(cd_loop_t *core, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)core->ready_q);
    Py_VISIT(core->aio_dict);
    Py_VISIT(core->attrs.scheduled);
    Py_VISIT(core->attrs.selector);
    for (int i = 0; i < core->nspare; i++) {
        Py_VISIT(core->spare_handles[i]);
    }
    for (int i = 0; i < core->nspare_timers; i++) {
        Py_VISIT(core->spare_timers[i]);
    }
    for (int i = 0; i < core->nspare_args; i++) {
        Py_VISIT(core->spare_args[i]);
    }
    Py_VISIT(core->report);
    Py_VISIT(core->done_fut);
    Py_VISIT(core->ts_handle);
    Py_VISIT(core->ts_rlock);
    Py_VISIT(core->selector);
    return 0;
}

void
cd_sched_loop_clear(cd_loop_t *core, int closing)
{
    Py_CLEAR(core->ready_q);
    PyMem_Free(core->heap);
    core->heap = NULL;
    core->heap_len = -1;
    core->heap_cap = 0;
    /* A closed loop's get_debug() still reads its __dict__ (repr). */
    sched_unwatch(core, closing);
    while (core->nspare > 0) {
        Py_CLEAR(core->spare_handles[--core->nspare]);
    }
    while (core->nspare_timers > 0) {
        Py_CLEAR(core->spare_timers[--core->nspare_timers]);
    }
    while (core->nspare_args > 0) {
        Py_CLEAR(core->spare_args[--core->nspare_args]);
    }
    Py_CLEAR(core->report);
    Py_CLEAR(core->done_fut);
    Py_CLEAR(core->ts_handle);
    Py_CLEAR(core->ts_rlock);
    Py_CLEAR(core->selector);
}
