/* TimerHandle: the loop's timers, asyncio.TimerHandle with cancel() in C.
 *
 * call_later() with cancels spent a third of its time in cancel(): two
 * Python frames (TimerHandle.cancel, then Handle.cancel through super())
 * that each ask the loop a method.  The timers the scheduling core makes
 * (sched.c) are of this subclass of asyncio.TimerHandle: isinstance of
 * TimerHandle and Handle, named TimerHandle (so its repr is asyncio's
 * "<TimerHandle ...>"), every other method, slot and comparison
 * asyncio's.  Its cancel() does what those two frames do, step for step:
 * the loop's _timer_handle_cancelled(self) and get_debug() are still
 * called as methods (a loop subclass's own win), the debug-mode _repr is
 * captured the same way.  When asyncio.TimerHandle.cancel or
 * asyncio.Handle.cancel is not asyncio's own any more (a patch), the
 * current TimerHandle.cancel runs instead; that check is kept with the
 * type's version tag, as LoopMethods keeps its (loopmeth.c). */
#include "internal.h"

#define CD_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* 1 when TimerHandle.cancel and Handle.cancel are the functions asyncio
 * defined (noted at init), 0 if not, -1 on error. */
static int
timer_plain(cd_state *st, PyTypeObject *tp)
{
    unsigned int tag = tp->tp_version_tag;
    if (tag != 0 && tag == st->timer_tag) {
        return 1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyUnstable_Type_AssignVersionTag(tp);
#endif
    tag = tp->tp_version_tag;
    PyObject *t =
        cd_loopmeth_own((PyTypeObject *)st->asyncio_TimerHandle, st->s_cancel);
    PyObject *h =
        t ? cd_loopmeth_own((PyTypeObject *)st->asyncio_Handle, st->s_cancel)
          : NULL;
    if (h == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (t != st->timer_cancel || h != st->handle_cancel) {
        return 0;
    }
    /* Without a tag (3.11 or a type that ran out of them) it is checked
     * at every call. */
    st->timer_tag = tag;
    return 1;
}

/* New reference: self.<name>, from its slot when it is set, else as
 * getattr finds it (an AttributeError for an unset slot). */
static PyObject *
timer_slot(PyObject *self, Py_ssize_t off, PyObject *name)
{
    PyObject *v = CD_SLOT(self, off);
    return v != NULL ? Py_NewRef(v) : PyObject_GetAttr(self, name);
}

/* 1 if self.<name> is true, 0 if false, -1 on error. */
static int
timer_slot_true(PyObject *self, Py_ssize_t off, PyObject *name)
{
    PyObject *v = timer_slot(self, off, name);
    if (v == NULL) {
        return -1;
    }
    int r = v == Py_False ? 0 : v == Py_True ? 1 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* New reference: self._loop.<which>(*args), in C when that is what the
 * call would run (cd_loopmeth_direct), else as a method call. */
static PyObject *
timer_ask_loop(cd_state *st, PyObject *self, cd_lm_t which, PyObject *arg)
{
    PyObject *loop = timer_slot(self, st->handle_slots.loop, st->s__loop);
    if (loop == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    cd_loop_t *core = cd_loopmeth_direct(st, loop, which);
    if (core != NULL && which == CD_LM_TIMER_CANCELLED) {
        r = cd_sched_timer_cancelled(core, arg);
    }
    else if (core != NULL) {
        r = cd_sched_get_debug(core, NULL);
    }
    else if (!PyErr_Occurred()) {
        PyObject *args[2] = {loop, arg};
        size_t n = (arg ? 2 : 1) | PY_VECTORCALL_ARGUMENTS_OFFSET;
        r = PyObject_VectorcallMethod(st->lm_name[which], args, n, NULL);
    }
    Py_DECREF(loop);
    return r;
}

/* Handle.cancel(self). */
static PyObject *
timer_handle_cancel(cd_state *st, PyObject *self)
{
    const cd_handle_slots_t *o = &st->handle_slots;
    int c = timer_slot_true(self, o->cancelled, st->s__cancelled);
    if (c != 0) {
        return c < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_XSETREF(CD_SLOT(self, o->cancelled), Py_NewRef(Py_True));
    PyObject *d = timer_ask_loop(st, self, CD_LM_GET_DEBUG, NULL);
    int debug = d == NULL ? -1 : d == Py_False ? 0 : PyObject_IsTrue(d);
    Py_XDECREF(d);
    if (debug < 0) {
        return NULL;
    }
    if (debug) {
        /* Keeps the callback's description for slow-callback warnings. */
        PyObject *r = PyObject_Repr(self);
        if (r == NULL) {
            return NULL;
        }
        Py_XSETREF(CD_SLOT(self, o->repr), r);
    }
    Py_XSETREF(CD_SLOT(self, o->callback), Py_NewRef(Py_None));
    Py_XSETREF(CD_SLOT(self, o->args), Py_NewRef(Py_None));
    Py_RETURN_NONE;
}

/* cancel(): TimerHandle.cancel, then (its super().cancel()) Handle's. */
static PyObject *
timer_cancel(PyObject *self, PyTypeObject *cls, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames)
{
    cd_state *st = PyType_GetModuleState(cls);
    int plain = nargs == 0 && kwnames == NULL;
    if (plain) {
        plain = timer_plain(st, Py_TYPE(self));
        if (plain < 0) {
            return NULL;
        }
    }
    if (!plain) {
        PyObject *m = PyObject_GetAttr(st->asyncio_TimerHandle, st->s_cancel);
        PyObject *r =
            m ? cd_loopmeth_call(m, self, args, nargs, kwnames) : NULL;
        Py_XDECREF(m);
        return r;
    }
    int c =
        timer_slot_true(self, st->handle_slots.cancelled, st->s__cancelled);
    if (c < 0) {
        return NULL;
    }
    if (c == 0) {
        PyObject *r = timer_ask_loop(st, self, CD_LM_TIMER_CANCELLED, self);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    return timer_handle_cancel(st, self);
}

/* The slots of asyncio's Handle and TimerHandle that timer_dealloc
 * clears (with __weakref__): all of them, checked at init. */
static const char *const timer_known_slots[] = {
    "_callback", "_args",    "_cancelled", "_loop",      "_source_traceback",
    "_repr",     "_context", "_when",      "_scheduled", "__weakref__",
};

/* 1 if every name in cls.__slots__ is one timer_dealloc knows, 0 if not,
 * -1 on error. */
static int
timer_slots_known(PyObject *cls)
{
    PyObject *slots = PyObject_GetAttrString(cls, "__slots__");
    PyObject *seq = slots ? PySequence_Fast(slots, "__slots__") : NULL;
    int known = seq != NULL;
    Py_XDECREF(slots);
    for (Py_ssize_t i = 0; known && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        known = 0;
        for (size_t j = 0; j < sizeof(timer_known_slots) / sizeof(char *);
             j++) {
            if (PyUnicode_Check(name) &&
                PyUnicode_CompareWithASCIIString(name, timer_known_slots[j]) ==
                    0) {
                known = 1;
            }
        }
    }
    Py_XDECREF(seq);
    return PyErr_Occurred() ? -1 : known;
}

/* The slot offsets, for timer_dealloc: a copy, not the module state's,
 * because at interpreter exit a timer can outlive its type's module
 * reference (cleared first) and the module state.  The GIL guards it; the
 * module lives in one interpreter only. */
static cd_handle_slots_t timer_offsets;

void
cd_timer_note_slots(const cd_handle_slots_t *o)
{
    timer_offsets = *o;
}

/* Freed timers kept for the next ones, as CPython keeps freed floats and
 * tuples: a batch of call_later()s spent a tenth of its instructions in
 * the allocator's free and malloc and the zeroing of each new timer.  A
 * block is a timer whose dealloc ran to the end (untracked, weak
 * references cleared, every slot NULL) but for tp_free and the type's
 * reference; the first finalizer would mark it finalized for good, so a
 * type with one (a __del__ patched in) keeps none.  Static, as
 * timer_offsets: one interpreter, the GIL guards it.  As many as the
 * loop's spare Handles (CD_SPARE_HANDLES), a burst of timers: 112 KiB at
 * most (256 kept a quarter of a batch of 1,000: 4,096 -> 4,044
 * instructions per call_later(0); 1,024: 3,876). */
#define CD_TIMER_FREE 1024

static struct {
    /** borrowed: the module state's Timer_type, which outlives the blocks
     * (cd_timer_state_clear frees them before the state lets it go);
     * NULL: none are kept. */
    PyTypeObject *tp;
    int n;
    PyObject *blocks[CD_TIMER_FREE]; /* owned: freed timers of tp */
} timer_free;

/* New reference: an empty timer of tp (every slot NULL), tracked, as
 * tp_alloc returns it. */
PyObject *
cd_timer_alloc(PyTypeObject *tp)
{
    if (timer_free.n == 0 || tp != timer_free.tp) {
        return tp->tp_alloc(tp, 0);
    }
    PyObject *self = timer_free.blocks[--timer_free.n];
    (void)PyObject_Init(self, tp); /* Takes a reference to tp. */
    PyObject_GC_Track(self);
    return self;
}

/* subtype_dealloc, for this final type whose slots are known: it walks
 * every base's member table to find them, a third of what freeing a timer
 * cost. */
static void
timer_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (tp->tp_finalize != NULL &&
        PyObject_CallFinalizerFromDealloc(self) < 0) {
        return; /* A __del__ patched in resurrected it. */
    }
    PyObject_GC_UnTrack(self);
    PyObject_ClearWeakRefs(self);
    const cd_handle_slots_t *o = &timer_offsets;
    Py_CLEAR(CD_SLOT(self, o->callback));
    Py_CLEAR(CD_SLOT(self, o->args));
    Py_CLEAR(CD_SLOT(self, o->cancelled));
    Py_CLEAR(CD_SLOT(self, o->loop));
    Py_CLEAR(CD_SLOT(self, o->source_traceback));
    Py_CLEAR(CD_SLOT(self, o->repr));
    Py_CLEAR(CD_SLOT(self, o->context));
    Py_CLEAR(CD_SLOT(self, o->when));
    Py_CLEAR(CD_SLOT(self, o->scheduled));
    if (tp == timer_free.tp && timer_free.n < CD_TIMER_FREE &&
        tp->tp_finalize == NULL) {
        timer_free.blocks[timer_free.n++] = self;
    }
    else {
        tp->tp_free(self);
    }
    Py_DECREF(tp);
}

void
cd_timer_state_clear(cd_state *st)
{
    if (st->Timer_type == NULL || timer_free.tp != st->Timer_type) {
        return;
    }
    timer_free.tp = NULL;
    while (timer_free.n > 0) {
        /* Reads the type (the GC header's size): st still holds it. */
        PyObject_GC_Del(timer_free.blocks[--timer_free.n]);
    }
}

/* _when, over asyncio.TimerHandle's slot: the same slot, read and written
 * as its member descriptor does, and each write counted (asyncio's heapq
 * compares the _when timers have at each push and pop; sched.c keeps a
 * copy of them). */
uint64_t cd_timer_when_writes;

static int
timer_no_when(PyObject *self)
{
    PyObject *name = PyType_GetName(Py_TYPE(self));
    if (name != NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "'%U' object has no attribute '_when'", name);
        Py_DECREF(name);
    }
    return -1;
}

static PyObject *
timer_get_when(PyObject *self, void *closure)
{
    PyObject *v = CD_SLOT(self, timer_offsets.when);
    if (v == NULL) {
        timer_no_when(self);
        return NULL;
    }
    return Py_NewRef(v);
}

static int
timer_set_when(PyObject *self, PyObject *value, void *closure)
{
    PyObject **slot = &CD_SLOT(self, timer_offsets.when);
    if (value == NULL && *slot == NULL) {
        return timer_no_when(self);
    }
    Py_XSETREF(*slot, Py_XNewRef(value));
    cd_timer_when_writes++;
    return 0;
}

static PyGetSetDef timer_getset[] = {
    {"_when", timer_get_when, timer_set_when, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef timer_methods[] = {
    {"cancel", (PyCFunction)(void (*)(void))timer_cancel,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "Cancel the call: asyncio's TimerHandle.cancel, in C."},
    {NULL, NULL, 0, NULL},
};

/* With timer_dealloc first; from the next entry on, without it (asyncio
 * has slots it does not know). */
static PyType_Slot timer_slots[] = {
    {Py_tp_dealloc, timer_dealloc},
    {Py_tp_doc, "asyncio.TimerHandle with cancel() in C: the timers "
                "cdaphne's loop makes."},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {0, NULL},
};

static PyType_Spec timer_spec = {
    /* __name__ "TimerHandle": asyncio's repr shows it. */
    .name = "cdaphne._cdaphne.TimerHandle",
    .basicsize = 0, /* asyncio.TimerHandle's slots */
    /* GC, traverse and clear: inherited with the slots.  Not immutable:
     * CPython 3.14 refuses an immutable type over a mutable base.  Made
     * as asyncio's is (object.__new__ and TimerHandle.__init__), so that
     * copy.copy() and pickle, which make a bare one, work as on stock. */
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = timer_slots,
};

int
cd_timer_type_init(PyObject *module, cd_state *st)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    if (events == NULL) {
        return -1;
    }
    st->asyncio_Handle = PyObject_GetAttrString(events, "Handle");
    st->asyncio_TimerHandle = PyObject_GetAttrString(events, "TimerHandle");
    Py_DECREF(events);
    if (st->asyncio_Handle == NULL || st->asyncio_TimerHandle == NULL) {
        return -1;
    }
    st->timer_cancel = Py_XNewRef(cd_loopmeth_own(
        (PyTypeObject *)st->asyncio_TimerHandle, st->s_cancel));
    st->handle_cancel = Py_XNewRef(
        cd_loopmeth_own((PyTypeObject *)st->asyncio_Handle, st->s_cancel));
    if (st->timer_cancel == NULL || st->handle_cancel == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "asyncio's handles changed");
        }
        return -1;
    }
    int known = timer_slots_known(st->asyncio_Handle);
    if (known > 0) {
        known = timer_slots_known(st->asyncio_TimerHandle);
    }
    if (known < 0) {
        return -1;
    }
    PyType_Spec spec = timer_spec;
    spec.slots = known ? timer_slots : timer_slots + 1;
    st->Timer_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &spec, st->asyncio_TimerHandle);
    if (st->Timer_type == NULL) {
        return -1;
    }
    if (known && timer_free.tp == NULL) {
        timer_free.tp = st->Timer_type;
    }
    return PyModule_AddType(module, st->Timer_type);
}
