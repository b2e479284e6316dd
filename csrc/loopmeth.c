/* LoopMethods: BaseEventLoop methods in C, on the class.
 *
 * cdaphne.loop.LibuvEventLoop derives from this type first, so its
 * methods are real methods of the loop class: a subclass that overrides
 * one, a class patched after the loop exists (LibuvEventLoop.m = f, or
 * asyncio.BaseEventLoop.m = f) and an instance attribute (loop.m = f) all
 * win over them, as they would over BaseEventLoop's.  (A method bound on
 * the instance would shadow the class patch.)
 *
 * Each method runs its C path (sched.c, loopapi.c) when the class that
 * comes after LoopMethods in the loop's MRO still has asyncio's own
 * function for it: LoopMethods then stands for that function.  Anything
 * else there (a patch of BaseEventLoop, a class in between) is called
 * instead.  What a class resolves the names to is found by one walk of
 * its MRO and kept with the class's version tag, which changes whenever
 * an attribute of the class or of a base is set: a call compares one
 * integer.  The C paths hand debug mode to asyncio's functions
 * themselves.
 *
 * The type has no fields of its own: a base class larger than `object`
 * costs the loop's Python subclass its inline attribute values, and with
 * them CPython 3.13's specialized LOAD_ATTR for every attribute and method
 * of the loop asyncio's Python code reads (measured: +500 instructions per
 * call_soon round trip).  The methods find the LoopCore (loop.core) through
 * the module state instead: the core of the loop that called last, checked
 * against the loop it is attached to.
 *
 * The server's own futures (cd_loopmeth_future_new) and the core's clock
 * (cd_loopmeth_plain) ask the same resolution whether the class keeps
 * ours. */
#include "internal.h"

#include <structmember.h>

/* The names, by CD_LM_* index. */
static const char *const lm_names[CD_LM_N] = {
    [CD_LM_CREATE_FUTURE] = "create_future",
    [CD_LM_CALL_SOON] = "call_soon",
    [CD_LM_CALL_SOON_THREADSAFE] = "call_soon_threadsafe",
    [CD_LM_CALL_AT] = "call_at",
    [CD_LM_CALL_LATER] = "call_later",
    [CD_LM_CREATE_TASK] = "create_task",
    [CD_LM_RUN_IN_EXECUTOR] = "run_in_executor",
    [CD_LM_GET_DEBUG] = "get_debug",
    [CD_LM_RUN_ONCE] = "_run_once",
    [CD_LM_TIMER_CANCELLED] = "_timer_handle_cancelled",
    [CD_LM_WRITE_TO_SELF] = "_write_to_self",
    [CD_LM_TIME] = "time",
};

/* ---- Resolution: what a class's MRO holds for each name. */

PyObject *
cd_loopmeth_own(PyTypeObject *k, PyObject *name)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *d = PyType_GetDict(k); /* new reference (3.12+) */
#else
    PyObject *d = Py_XNewRef(k->tp_dict);
#endif
    if (d == NULL) {
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(d, name);
    Py_DECREF(d); /* v stays alive: the type holds its dict */
    return v;
}

PyObject *
cd_loopmeth_lookup(PyTypeObject *tp, PyObject *name)
{
    PyObject *mro = tp->tp_mro, *v = NULL;
    for (Py_ssize_t j = 0; mro != NULL && j < PyTuple_GET_SIZE(mro); j++) {
        v = cd_loopmeth_own((PyTypeObject *)PyTuple_GET_ITEM(mro, j), name);
        if (v != NULL || PyErr_Occurred()) {
            break;
        }
    }
    return v;
}

/* Fills c for tp by walking its MRO once: for each name, the first
 * definition (first) and the first after LoopMethods (c->next; without
 * LoopMethods in the MRO, the first).  -1 with an exception on error. */
static int
lm_walk(cd_state *st, PyTypeObject *tp, cd_lm_cache_t *c)
{
    PyObject *mro = tp->tp_mro, *first[CD_LM_N] = {NULL};
    PyObject *own = (PyObject *)st->LoopMethods_type;
    uint32_t first_is_own = 0, todo = (1u << CD_LM_N) - 1;
    int seen = 0;
    c->next_base = c->plain = 0;
    for (int i = 0; i < CD_LM_N; i++) {
        c->next[i] = NULL;
    }
    for (Py_ssize_t j = 0; mro != NULL && j < PyTuple_GET_SIZE(mro) && todo;
         j++) {
        PyTypeObject *k = (PyTypeObject *)PyTuple_GET_ITEM(mro, j);
        for (int i = 0; i < CD_LM_N; i++) {
            if (!(todo & (1u << i))) {
                continue;
            }
            PyObject *v = cd_loopmeth_own(k, st->lm_name[i]);
            if (v == NULL && PyErr_Occurred()) {
                return -1;
            }
            if (v != NULL && first[i] == NULL) {
                first[i] = v;
                first_is_own |= (uint32_t)((PyObject *)k == own) << i;
            }
            if (v != NULL && seen) {
                c->next[i] = v;
                todo &= ~(1u << i);
            }
        }
        seen = seen || (PyObject *)k == own;
    }
    for (int i = 0; i < CD_LM_N; i++) {
        if (!seen) {
            c->next[i] = first[i]; /* Not a LoopMethods: the first runs. */
        }
        if (c->next[i] != NULL && c->next[i] == st->lm_base[i]) {
            c->next_base |= 1u << i;
            if ((first_is_own & (1u << i)) || first[i] == c->next[i]) {
                c->plain |= 1u << i;
            }
        }
    }
    return 0;
}

int
cd_type_tag(PyTypeObject *tp, PyObject *name)
{
#if PY_VERSION_HEX >= 0x030C0000
    (void)name;
    PyUnstable_Type_AssignVersionTag(tp);
#else
    /* A lookup through the type gives it a version tag if it has none. */
    PyObject *m = PyObject_GetAttr((PyObject *)tp, name);
    if (m == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
    }
    Py_XDECREF(m);
#endif
    return 0;
}

/* Finds what tp resolves the names to, into c, and keeps it while tp
 * keeps its version tag (a class that cannot have one, 0, is walked at
 * every call).  -1 with an exception on error.  Out of line: lm_cache's
 * callers (cd_loopmeth_direct, twice a WebSocket echo message) find the
 * cache current and then save no registers for it. */
static __attribute__((noinline)) int
lm_resolve(cd_state *st, PyTypeObject *tp, cd_lm_cache_t *c)
{
    c->tag = 0;
    if (cd_type_tag(tp, st->lm_name[0]) < 0) {
        return -1;
    }
    unsigned int tag = tp->tp_version_tag;
    if (lm_walk(st, tp, c) < 0) {
        return -1;
    }
    /* A walk that ran code (a dict key's __eq__) may have seen a class
     * that changed under it: then it holds for this call only. */
    c->tag = tp->tp_version_tag == tag ? tag : 0;
    return 0;
}

/* st->lm_cache, current for type(loop); NULL with an exception on
 * error. */
static inline cd_lm_cache_t *
lm_cache(cd_state *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    cd_lm_cache_t *c = &st->lm_cache;
    if (tp->tp_version_tag != 0 && c->tag == tp->tp_version_tag) {
        return c;
    }
    return lm_resolve(st, tp, c) < 0 ? NULL : c;
}

int
cd_loopmeth_plain(cd_state *st, PyObject *loop, cd_lm_t which)
{
    const cd_lm_cache_t *c = lm_cache(st, loop);
    if (c == NULL) {
        return -1;
    }
    return (c->plain >> which) & 1;
}

PyObject *
cd_loopmeth_call(PyObject *fn, PyObject *self, PyObject *const *args,
                 Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8], **full = small;
    if (nargs + nkw + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        full = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
        if (full == NULL) {
            return PyErr_NoMemory();
        }
    }
    full[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        full[i + 1] = args[i];
    }
    PyObject *r = PyObject_Vectorcall(fn, full, (size_t)nargs + 1, kwnames);
    if (full != small) {
        PyMem_Free(full);
    }
    return r;
}

/* ---- The methods. */

/* Borrowed: the LoopCore of the loop whose LoopMethods method ran last
 * (its loop.core), valid while it is attached to that loop; the core
 * clears it when it goes (cd_loopmeth_forget, from its dealloc).  Not in
 * the module state: at interpreter exit a core can outlive the module and
 * its state (a heap type's module reference is cleared first), and its
 * dealloc must not read freed memory.  The GIL guards it; the module lives
 * in one interpreter only (as sched.c's attrs_gen). */
static cd_loop_t *lm_core_last;

/* Borrowed: loop.core (from the loop's __dict__) if it is a LoopCore
 * attached to the loop with its scheduling core set up, else NULL (an
 * exception set on error).  Kept in lm_core_last for the next call. */
static cd_loop_t *
lm_core_find(cd_state *st, PyObject *self)
{
    PyObject *d = PyObject_GenericGetDict(self, NULL), *v = NULL;
    if (d != NULL) {
        v = PyDict_GetItemWithError(d, st->s_core);
        Py_DECREF(d); /* v stays alive: the loop holds its dict */
    }
    cd_loop_t *core = (cd_loop_t *)v;
    if (v == NULL || !PyObject_TypeCheck(v, st->LoopCore_type) ||
        core->aio_loop != self || core->ready_q == NULL) {
        return NULL;
    }
    lm_core_last = core;
    return core;
}

/* lm_core when the notes in st do not settle it.  The first call on a
 * loop comes here: self is checked to be a LoopMethods (the check a
 * method descriptor makes at every call) before its core is noted. */
static cd_loop_t *
lm_core_slow(cd_state *st, PyObject *self, cd_lm_t which)
{
    if (!PyObject_TypeCheck(self, st->LoopMethods_type)) {
        PyErr_Format(PyExc_TypeError,
                     "descriptor '%s' for 'LoopMethods' objects doesn't "
                     "apply to a '%.100s' object",
                     lm_names[which], Py_TYPE(self)->tp_name);
        return NULL;
    }
    cd_loop_t *core = lm_core_last;
    if (core == NULL || core->aio_loop != self) {
        core = lm_core_find(st, self);
        if (core == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    const cd_lm_cache_t *c = lm_cache(st, self);
    if (c == NULL || !((c->next_base >> which) & 1)) {
        return NULL;
    }
    return core;
}

/* The core when method `which` of self may take its C path: the loop has
 * its core, and what follows LoopMethods in the MRO is asyncio's
 * function.  NULL when the next class's method must run instead
 * (lm_next), with an exception set on error; *stp is the module state
 * and st->lm_cache is current for type(self) either way.  The state of
 * the loop's core is cls's (the module's LoopMethods is cls) when it
 * answers: no lookup of the module from cls then. */
static inline cd_loop_t *
lm_core(PyTypeObject *cls, PyObject *self, cd_lm_t which, cd_state **stp)
{
    cd_loop_t *core = lm_core_last;
    if (core != NULL && core->aio_loop == self) {
        cd_state *st = core->st;
        unsigned int tag = Py_TYPE(self)->tp_version_tag;
        *stp = st;
        if (st->LoopMethods_type == cls && tag != 0 &&
            tag == st->lm_cache.tag &&
            ((st->lm_cache.next_base >> which) & 1)) {
            return core;
        }
    }
    *stp = PyType_GetModuleState(cls);
    return lm_core_slow(*stp, self, which);
}

/* What the class after LoopMethods in self's MRO makes of the call
 * (st->lm_cache holds it): a function or method descriptor is called with
 * self first, any other descriptor is bound first, as a method call
 * would. */
static PyObject *
lm_next(cd_state *st, PyObject *self, cd_lm_t which, PyObject *const *args,
        Py_ssize_t nargs, PyObject *kwnames)
{
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *next = st->lm_cache.next[which];
    if (next == NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "'%.100s' object has no attribute '%s'",
                     Py_TYPE(self)->tp_name, lm_names[which]);
        return NULL;
    }
    PyObject *res = NULL;
    Py_INCREF(next); /* The call may patch the class. */
    descrgetfunc get = Py_TYPE(next)->tp_descr_get;
    if (PyType_HasFeature(Py_TYPE(next), Py_TPFLAGS_METHOD_DESCRIPTOR)) {
        res = cd_loopmeth_call(next, self, args, nargs, kwnames);
    }
    else {
        PyObject *bound = get == NULL
                              ? Py_NewRef(next)
                              : get(next, self, (PyObject *)Py_TYPE(self));
        if (bound != NULL) {
            res = PyObject_Vectorcall(bound, args, (size_t)nargs, kwnames);
            Py_DECREF(bound);
        }
    }
    Py_DECREF(next);
    return res;
}

/* A method: the C path call (a tail call) when lm_core allows it and
 * the arguments are what it takes (ok), else the next class's method. */
#define CD_LM_METHOD(fn, which, ok, call)                                     \
    static PyObject *fn(PyObject *self, PyTypeObject *cls,                    \
                        PyObject *const *args, Py_ssize_t nargs,              \
                        PyObject *kwnames)                                    \
    {                                                                         \
        cd_state *st = NULL;                                                  \
        cd_loop_t *core = lm_core(cls, self, which, &st);                     \
        if (core == NULL || !(ok)) {                                          \
            return lm_next(st, self, which, args, nargs, kwnames);            \
        }                                                                     \
        return call;                                                          \
    }

#define CD_LM_ANY 1
#define CD_LM_NONE (nargs == 0 && kwnames == NULL)
#define CD_LM_ONE (nargs == 1 && kwnames == NULL)
CD_LM_METHOD(lm_call_soon, CD_LM_CALL_SOON, CD_LM_ANY,
             cd_sched_call_soon(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_call_soon_threadsafe, CD_LM_CALL_SOON_THREADSAFE, CD_LM_ANY,
             cd_sched_call_soon_threadsafe(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_call_at, CD_LM_CALL_AT, CD_LM_ANY,
             cd_sched_call_at(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_call_later, CD_LM_CALL_LATER, CD_LM_ANY,
             cd_sched_call_later(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_create_task, CD_LM_CREATE_TASK, CD_LM_ANY,
             cd_loopapi_create_task(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_run_in_executor, CD_LM_RUN_IN_EXECUTOR, CD_LM_ANY,
             cd_loopapi_run_in_executor(core, args, (size_t)nargs, kwnames))
CD_LM_METHOD(lm_get_debug, CD_LM_GET_DEBUG, CD_LM_NONE,
             cd_sched_get_debug(core, NULL))
CD_LM_METHOD(lm_run_once, CD_LM_RUN_ONCE, CD_LM_NONE,
             cd_sched_step(core, NULL))
CD_LM_METHOD(lm_timer_handle_cancelled, CD_LM_TIMER_CANCELLED, CD_LM_ONE,
             cd_sched_timer_cancelled(core, args[0]))
CD_LM_METHOD(lm_write_to_self, CD_LM_WRITE_TO_SELF, CD_LM_NONE,
             cd_hop_wakeup(core, NULL))
#undef CD_LM_ANY
#undef CD_LM_NONE
#undef CD_LM_ONE
#undef CD_LM_METHOD

/* 1 if the loop's _debug is true (or missing: asyncio's method then
 * raises), 0 if false, -1 with an exception.  Read by the loop's core
 * when it is the last one used (its cached reads, which honour a property
 * of the class), else with getattr. */
static int
lm_debug(cd_state *st, PyObject *self)
{
    cd_loop_t *core = lm_core_last;
    if (core != NULL && core->aio_loop == self) {
        return cd_sched_debug(core);
    }
    PyObject *v = PyObject_GetAttr(self, st->s__debug);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return 1;
    }
    int r = v == Py_False ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* New reference: asyncio.Future(loop=loop).  Inside the running loop
 * that is asyncio.Future(), which the Future finds the loop for without
 * the dict of keywords a call with loop= is given. */
static PyObject *
lm_future_make(cd_state *st, PyObject *loop)
{
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL) {
        return NULL;
    }
    Py_DECREF(running); /* Compared, not used. */
    if (running == loop) {
        return PyObject_CallNoArgs(st->asyncio_Future);
    }
    PyObject *args[1] = {loop};
    return PyObject_Vectorcall(st->asyncio_Future, args, 0, st->kwnames_loop);
}

/* create_future(): BaseEventLoop's is asyncio.Future(loop=self), one
 * Python frame per future (asyncio.wait and shield make one per call).
 * Here it is made directly, unless the next class's method is not
 * asyncio's, or the loop is in debug mode (asyncio's method, so the
 * source traceback is the same).  It needs no core. */
static PyObject *
lm_create_future(PyObject *self, PyTypeObject *cls, PyObject *const *args,
                 Py_ssize_t nargs, PyObject *kwnames)
{
    cd_loop_t *core = lm_core_last;
    cd_state *st = core != NULL && core->aio_loop == self
                       ? core->st
                       : PyType_GetModuleState(cls);
    if (st->LoopMethods_type != cls) {
        st = PyType_GetModuleState(cls);
    }
    if ((core == NULL || core->aio_loop != self) &&
        !PyObject_TypeCheck(self, cls)) {
        PyErr_Format(PyExc_TypeError,
                     "descriptor 'create_future' for 'LoopMethods' objects "
                     "doesn't apply to a '%.100s' object",
                     Py_TYPE(self)->tp_name);
        return NULL;
    }
    const cd_lm_cache_t *c = lm_cache(st, self);
    if (c == NULL) {
        return NULL;
    }
    if (nargs != 0 || kwnames != NULL ||
        !((c->next_base >> CD_LM_CREATE_FUTURE) & 1)) {
        return lm_next(st, self, CD_LM_CREATE_FUTURE, args, nargs, kwnames);
    }
    int debug = lm_debug(st, self);
    if (debug < 0) {
        return NULL;
    }
    if (debug) {
        return PyObject_CallOneArg(st->lm_base[CD_LM_CREATE_FUTURE], self);
    }
    return lm_future_make(st, self);
}

PyObject *
cd_loopmeth_future_new(cd_state *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    int plain = tp->tp_getattro == PyObject_GenericGetAttr;
    if (plain && cd_loopmeth_direct(st, loop, CD_LM_CREATE_FUTURE) != NULL) {
        /* The core's cached reads of the loop's __dict__ answer. */
        return lm_future_make(st, loop);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (plain) {
        plain = cd_loopmeth_plain(st, loop, CD_LM_CREATE_FUTURE);
        if (plain < 0) {
            return NULL;
        }
    }
    if (plain && tp->tp_dictoffset != 0) {
        /* An instance attribute wins over the class's method. */
        PyObject *d = PyObject_GenericGetDict(loop, NULL);
        if (d == NULL) {
            return NULL;
        }
        int shadowed = PyDict_Contains(d, st->lm_name[CD_LM_CREATE_FUTURE]);
        Py_DECREF(d);
        if (shadowed < 0) {
            return NULL;
        }
        plain = !shadowed;
    }
    if (!plain) {
        return PyObject_CallMethodNoArgs(loop,
                                         st->lm_name[CD_LM_CREATE_FUTURE]);
    }
    return lm_future_make(st, loop);
}

cd_loop_t *
cd_loopmeth_direct(cd_state *st, PyObject *loop, cd_lm_t which)
{
    cd_loop_t *core = lm_core_last;
    if (core == NULL || core->aio_loop != loop || core->aio_dict == NULL) {
        return NULL;
    }
    const cd_lm_cache_t *c = lm_cache(st, loop);
    if (c == NULL || !((c->plain >> which) & 1)) {
        return NULL;
    }
    /* An instance attribute wins over the class's method. */
    return cd_sched_no_instance_attr(core, which) > 0 ? core : NULL;
}

/* ---- The type. */

void
cd_loopmeth_forget(cd_loop_t *core)
{
    if (lm_core_last == core) {
        lm_core_last = NULL;
    }
}

/* ---- The method objects.
 *
 * Each method is an lm_func_t in LoopMethods' __dict__: a method
 * descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR, so _PyObject_GetMethod and
 * LOAD_ATTR call it with self first, unbound) with a vectorcall of its
 * own.  A builtin method descriptor would check self's type (a walk of
 * its MRO) and the recursion depth at every call and find the module
 * state from the class: asyncio's C code calls these by name for every
 * Future, Task and callback, so each call pays it.  Here the method's
 * first call on a loop checks self (lm_core_slow), and the loop's core
 * gives the state after that; the methods call no Python code but
 * through calls that check the depth themselves. */

typedef struct {
    const char *name;
    vectorcallfunc call; /* self is args[0] */
    const char *doc;
} lm_def_t;

typedef struct {
    PyObject_HEAD
    /** The call: the lm_def_t's. */
    vectorcallfunc vectorcall;
    /** borrowed: static, lm_defs. */
    const lm_def_t *def;
    /** strong: LoopMethods, which the method belongs to. */
    PyTypeObject *cls;
    /** strong: the method's name, "LoopMethods.<name>". */
    PyObject *name, *qualname;
} lm_func_t;

static PyObject *
lm_func_unbound(PyObject *callable)
{
    PyErr_Format(PyExc_TypeError,
                 "unbound method LoopMethods.%s() needs an argument",
                 ((lm_func_t *)callable)->def->name);
    return NULL;
}

/* The vectorcall of method impl (which the compiler inlines here). */
#define CD_LM_VECTORCALL(vc, impl)                                            \
    static PyObject *vc(PyObject *callable, PyObject *const *args,            \
                        size_t nargsf, PyObject *kwnames)                     \
    {                                                                         \
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);                        \
        if (nargs < 1) {                                                      \
            return lm_func_unbound(callable);                                 \
        }                                                                     \
        return impl(args[0], ((lm_func_t *)callable)->cls, args + 1,          \
                    nargs - 1, kwnames);                                      \
    }

CD_LM_VECTORCALL(lm_vc_create_future, lm_create_future)
CD_LM_VECTORCALL(lm_vc_call_soon, lm_call_soon)
CD_LM_VECTORCALL(lm_vc_call_soon_threadsafe, lm_call_soon_threadsafe)
CD_LM_VECTORCALL(lm_vc_call_at, lm_call_at)
CD_LM_VECTORCALL(lm_vc_call_later, lm_call_later)
CD_LM_VECTORCALL(lm_vc_create_task, lm_create_task)
CD_LM_VECTORCALL(lm_vc_run_in_executor, lm_run_in_executor)
CD_LM_VECTORCALL(lm_vc_get_debug, lm_get_debug)
CD_LM_VECTORCALL(lm_vc_run_once, lm_run_once)
CD_LM_VECTORCALL(lm_vc_timer_handle_cancelled, lm_timer_handle_cancelled)
CD_LM_VECTORCALL(lm_vc_write_to_self, lm_write_to_self)
#undef CD_LM_VECTORCALL

/* Bound to obj (a method object, as a method descriptor's __get__ gives);
 * unbound through the class. */
static PyObject *
lm_func_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL) {
        return Py_NewRef(self);
    }
    lm_func_t *f = (lm_func_t *)self;
    if (!PyObject_TypeCheck(obj, f->cls)) {
        PyErr_Format(PyExc_TypeError,
                     "descriptor '%s' for 'LoopMethods' objects doesn't "
                     "apply to a '%.100s' object",
                     f->def->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return PyMethod_New(self, obj);
}

static PyObject *
lm_func_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<method '%s' of 'LoopMethods' objects>",
                                ((lm_func_t *)self)->def->name);
}

static int
lm_func_traverse(PyObject *self, visitproc visit, void *arg)
{
    lm_func_t *f = (lm_func_t *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT((PyObject *)f->cls);
    return 0;
}

static int
lm_func_clear(PyObject *self)
{
    lm_func_t *f = (lm_func_t *)self;
    Py_CLEAR(f->cls);
    Py_CLEAR(f->name);
    Py_CLEAR(f->qualname);
    return 0;
}

static void
lm_func_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)lm_func_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
lm_func_get_name(PyObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(((lm_func_t *)self)->name);
}

static PyObject *
lm_func_get_qualname(PyObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(((lm_func_t *)self)->qualname);
}

static PyObject *
lm_func_get_doc(PyObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(((lm_func_t *)self)->def->doc);
}

static PyObject *
lm_func_get_objclass(PyObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef((PyObject *)((lm_func_t *)self)->cls);
}

static PyGetSetDef lm_func_getset[] = {
    {"__name__", lm_func_get_name, NULL, NULL, NULL},
    {"__qualname__", lm_func_get_qualname, NULL, NULL, NULL},
    {"__doc__", lm_func_get_doc, NULL, NULL, NULL},
    {"__objclass__", lm_func_get_objclass, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef lm_func_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(lm_func_t, vectorcall),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* No Py_tp_doc: PyType_FromSpec would store it as the type's __doc__
 * over the __doc__ getset, and every method would show it for its own. */
static PyType_Slot lm_func_slots[] = {
    {Py_tp_dealloc, lm_func_dealloc},
    {Py_tp_traverse, lm_func_traverse},
    {Py_tp_clear, lm_func_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, lm_func_get},
    {Py_tp_repr, lm_func_repr},
    {Py_tp_getset, lm_func_getset},
    {Py_tp_members, lm_func_members},
    {0, NULL},
};

static PyType_Spec lm_func_spec = {
    .name = "cdaphne._cdaphne.loop_method",
    .basicsize = sizeof(lm_func_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = lm_func_slots,
};

static const lm_def_t lm_defs[] = {
    {"create_future", lm_vc_create_future,
     "Create a Future object attached to the loop."},
    {"call_soon", lm_vc_call_soon,
     "call_soon(callback, *args, context=None): asyncio's, in C."},
    {"call_soon_threadsafe", lm_vc_call_soon_threadsafe,
     "call_soon_threadsafe(callback, *args, context=None), in C."},
    {"call_at", lm_vc_call_at,
     "call_at(when, callback, *args, context=None): asyncio's, in C."},
    {"call_later", lm_vc_call_later,
     "call_later(delay, callback, *args, context=None): asyncio's, in C."},
    {"create_task", lm_vc_create_task,
     "create_task(coro, *, name=None, context=None): asyncio's, in C."},
    {"run_in_executor", lm_vc_run_in_executor,
     "run_in_executor(executor, func, *args): asyncio's, its future "
     "completed from C."},
    {"get_debug", lm_vc_get_debug, "get_debug(): asyncio's, in C."},
    {"_run_once", lm_vc_run_once,
     "One run-once step of the loop: asyncio's, in C (csrc/sched.c)."},
    {"_timer_handle_cancelled", lm_vc_timer_handle_cancelled,
     "Counts a cancelled timer still in the heap: asyncio's, in C."},
    {"_write_to_self", lm_vc_write_to_self,
     "Wakes the loop from any thread: the loop's eventfd instead of "
     "asyncio's self-pipe (csrc/loop.c)."},
};

/* Puts the methods into cls's __dict__ (its type object is kept alive by
 * them: a heap type's instances hold it). */
static int
lm_add_methods(PyTypeObject *cls)
{
    PyTypeObject *ftype = (PyTypeObject *)PyType_FromSpec(&lm_func_spec);
    if (ftype == NULL) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *d = PyType_GetDict(cls); /* new reference (3.12+) */
#else
    PyObject *d = Py_XNewRef(cls->tp_dict);
#endif
    int rc = d != NULL ? 0 : -1;
    size_t n = sizeof(lm_defs) / sizeof(lm_defs[0]);
    for (size_t i = 0; i < n && rc == 0; i++) {
        lm_func_t *f = PyObject_GC_New(lm_func_t, ftype);
        if (f == NULL) {
            rc = -1;
            break;
        }
        f->vectorcall = lm_defs[i].call;
        f->def = &lm_defs[i];
        f->cls = (PyTypeObject *)Py_NewRef((PyObject *)cls);
        f->name = PyUnicode_InternFromString(lm_defs[i].name);
        f->qualname = PyUnicode_FromFormat("LoopMethods.%s", lm_defs[i].name);
        PyObject_GC_Track((PyObject *)f);
        rc = f->name != NULL && f->qualname != NULL
                 ? PyDict_SetItem(d, f->name, (PyObject *)f)
                 : -1;
        Py_DECREF(f);
    }
    Py_XDECREF(d);
    Py_DECREF(ftype);
    PyType_Modified(cls);
    return rc;
}

static PyType_Slot lm_slots[] = {
    {Py_tp_doc, "BaseEventLoop methods in C: the first base of "
                "cdaphne.loop.LibuvEventLoop."},
    {0, NULL},
};

static PyType_Spec lm_spec = {
    .name = "cdaphne._cdaphne.LoopMethods",
    .basicsize = 0, /* object's: see the top of the file */
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lm_slots,
};

/* The names, and asyncio's functions of those names: what the base class
 * of asyncio's selector loops resolves them to (BaseEventLoop's, but
 * BaseSelectorEventLoop's own _write_to_self). */
static int
lm_init_names(cd_state *st)
{
    PyObject *base = NULL;
    PyObject *mod = PyImport_ImportModule("asyncio.selector_events");
    if (mod == NULL) {
        return -1;
    }
    base = PyObject_GetAttrString(mod, "BaseSelectorEventLoop");
    Py_DECREF(mod);
    if (base == NULL) {
        return -1;
    }
    int rc = PyType_Check(base) ? 0 : -1;
    if (rc < 0) {
        PyErr_SetString(PyExc_TypeError,
                        "asyncio.BaseSelectorEventLoop is not a class");
    }
    for (int i = 0; i < CD_LM_N && rc == 0; i++) {
        st->lm_name[i] = PyUnicode_InternFromString(lm_names[i]);
        st->lm_base[i] =
            st->lm_name[i]
                ? cd_loopmeth_lookup((PyTypeObject *)base, st->lm_name[i])
                : NULL;
        if (st->lm_base[i] == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_AttributeError,
                             "asyncio.BaseSelectorEventLoop has no %s",
                             lm_names[i]);
            }
            rc = -1;
        }
        Py_XINCREF(st->lm_base[i]);
    }
    Py_DECREF(base);
    return rc;
}

int
cd_loopmeth_type_init(PyObject *module, cd_state *st)
{
    PyObject *aio = PyImport_ImportModule("_asyncio");
    if (aio == NULL) {
        return -1;
    }
    st->get_running_loop = PyObject_GetAttrString(aio, "_get_running_loop");
    Py_DECREF(aio);
    if (st->get_running_loop == NULL || lm_init_names(st) < 0) {
        return -1;
    }
    st->LoopMethods_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &lm_spec, NULL);
    if (st->LoopMethods_type == NULL ||
        lm_add_methods(st->LoopMethods_type) < 0) {
        return -1;
    }
    return PyModule_AddType(module, st->LoopMethods_type);
}
