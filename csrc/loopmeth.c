/* LoopMethods: BaseEventLoop methods in C, on the class.
 *
 * cdaphne.loop.LibuvEventLoop derives from this type first, so its
 * methods are real methods of the loop class: a subclass that overrides
 * one, a class patched after the loop exists (LibuvEventLoop.m = f) and
 * an instance attribute (loop.m = f) all win over them, as they would
 * over BaseEventLoop's.  A method bound on the instance would shadow the
 * class patch.
 *
 * create_future(): BaseEventLoop's is asyncio.Future(loop=self), one
 * Python frame per future (asyncio.wait and shield make one per call).
 * Here it is made directly, unless the class that comes after LoopMethods
 * in the MRO no longer has asyncio's method (a patch of BaseEventLoop or
 * of a class between: that one is called), or the loop is in debug mode
 * (asyncio's method, so the source traceback is the same).  The same
 * check serves the server's own futures (cd_loopmeth_future_new). */
#include "internal.h"

/* What create_future resolves to on a loop class (cached per type). */
enum {
    /* After LoopMethods in the MRO (or first, without it): asyncio's. */
    CD_LOOPMETH_NEXT_BASE = 1,
    /* type(loop).create_future is LoopMethods' or asyncio's, and
     * CD_LOOPMETH_NEXT_BASE: Future(loop=loop) is what a call makes. */
    CD_LOOPMETH_PLAIN = 2,
};

/* Borrowed: k.__dict__["create_future"], or NULL (an exception set if
 * the lookup failed). */
static PyObject *
loopmeth_own(cd_state *st, PyTypeObject *k)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *d = PyType_GetDict(k); /* new reference (3.12+) */
#else
    PyObject *d = Py_XNewRef(k->tp_dict);
#endif
    if (d == NULL) {
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(d, st->s_create_future);
    Py_DECREF(d); /* v stays alive: the type holds its dict */
    return v;
}

/* The CD_LOOPMETH_* flags of tp, found by walking its MRO; *next
 * (borrowed, may be NULL) gets what comes after LoopMethods.  -1 with an
 * exception on error. */
static int
loopmeth_resolve(cd_state *st, PyTypeObject *tp, PyObject **next)
{
    PyObject *mro = tp->tp_mro;
    PyObject *own = (PyObject *)st->LoopMethods_type;
    PyObject *first = NULL, *after = NULL;
    int seen = 0;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *k = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if ((PyObject *)k == own) {
            seen = 1;
            first = first ? first : own;
            continue;
        }
        PyObject *v = loopmeth_own(st, k);
        if (v == NULL && PyErr_Occurred()) {
            return -1;
        }
        if (v != NULL) {
            first = first ? first : v;
            if (seen) {
                after = v;
                break;
            }
        }
    }
    if (!seen) {
        after = first; /* Not a LibuvEventLoop: what runs is the first. */
    }
    *next = after;
    if (after != st->base_create_future) {
        return 0;
    }
    if (first == own || first == after) {
        return CD_LOOPMETH_NEXT_BASE | CD_LOOPMETH_PLAIN;
    }
    return CD_LOOPMETH_NEXT_BASE;
}

/* tp's CD_LOOPMETH_* flags, from the cache while tp keeps the version
 * tag they were found with (setting any class attribute anywhere in its
 * MRO changes the tag).  -1 with an exception on error. */
static int
loopmeth_flags(cd_state *st, PyTypeObject *tp)
{
    unsigned int tag = tp->tp_version_tag;
    if (tag != 0 && tag == st->loopmeth_tag) {
        return st->loopmeth_flags;
    }
    PyObject *next;
    int flags = loopmeth_resolve(st, tp, &next);
    if (flags < 0) {
        return -1;
    }
    /* A lookup through the type gives it a version tag if it has none;
     * a type that cannot have one (0) is walked every time. */
    PyObject *m = PyObject_GetAttr((PyObject *)tp, st->s_create_future);
    if (m == NULL) {
        return -1;
    }
    Py_DECREF(m);
    st->loopmeth_tag = tp->tp_version_tag;
    st->loopmeth_flags = flags;
    return flags;
}

/* 1 if the loop's _debug (in its dict, where BaseEventLoop keeps it) is
 * anything but False, 0 if False, -1 with an exception. */
static int
loopmeth_debug(cd_state *st, PyObject *self)
{
    PyObject *d = PyObject_GenericGetDict(self, NULL);
    if (d == NULL) {
        return -1;
    }
    PyObject *v = PyDict_GetItemWithError(d, st->s__debug);
    Py_DECREF(d);
    if (v == NULL && PyErr_Occurred()) {
        return -1;
    }
    return v != Py_False;
}

/* New reference: what the class after LoopMethods in self's MRO makes of
 * create_future() (a patched method, or any descriptor). */
static PyObject *
loopmeth_call_next(cd_state *st, PyObject *self)
{
    PyObject *next;
    if (loopmeth_resolve(st, Py_TYPE(self), &next) < 0) {
        return NULL;
    }
    if (next == NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "'%.100s' object has no attribute 'create_future'",
                     Py_TYPE(self)->tp_name);
        return NULL;
    }
    PyObject *bound = NULL, *res = NULL;
    Py_INCREF(next); /* the call may patch the class */
    descrgetfunc get = Py_TYPE(next)->tp_descr_get;
    if (get == NULL) {
        bound = Py_NewRef(next);
    }
    else {
        bound = get(next, self, (PyObject *)Py_TYPE(self));
        if (bound == NULL) {
            goto done;
        }
    }
    res = PyObject_CallNoArgs(bound);
done:
    Py_XDECREF(bound);
    Py_DECREF(next);
    return res;
}

/* New reference: asyncio.Future(loop=loop).  Inside the running loop
 * that is asyncio.Future(), which the Future finds the loop for without
 * the dict of keywords a call with loop= is given. */
static PyObject *
loopmeth_make(cd_state *st, PyObject *loop)
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

static PyObject *
loopmeth_create_future(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    cd_state *st = cd_state_from_type(Py_TYPE(self));
    if (st == NULL) {
        return NULL;
    }
    int flags = loopmeth_flags(st, Py_TYPE(self));
    if (flags < 0) {
        return NULL;
    }
    if (!(flags & CD_LOOPMETH_NEXT_BASE)) {
        return loopmeth_call_next(st, self);
    }
    int debug = loopmeth_debug(st, self);
    if (debug < 0) {
        return NULL;
    }
    if (debug) {
        return PyObject_CallOneArg(st->base_create_future, self);
    }
    return loopmeth_make(st, self);
}

PyObject *
cd_loopmeth_future_new(cd_state *st, PyObject *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    int plain = tp->tp_getattro == PyObject_GenericGetAttr;
    if (plain) {
        int flags = loopmeth_flags(st, tp);
        if (flags < 0) {
            return NULL;
        }
        plain = (flags & CD_LOOPMETH_PLAIN) != 0;
    }
    if (plain && tp->tp_dictoffset != 0) {
        /* An instance attribute wins over the class's method. */
        PyObject *d = PyObject_GenericGetDict(loop, NULL);
        if (d == NULL) {
            return NULL;
        }
        int shadowed = PyDict_Contains(d, st->s_create_future);
        Py_DECREF(d);
        if (shadowed < 0) {
            return NULL;
        }
        plain = !shadowed;
    }
    if (!plain) {
        return PyObject_CallMethodNoArgs(loop, st->s_create_future);
    }
    return loopmeth_make(st, loop);
}

static PyMethodDef loopmeth_methods[] = {
    {"create_future", loopmeth_create_future, METH_NOARGS,
     "Create a Future object attached to the loop."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot loopmeth_slots[] = {
    {Py_tp_doc, "BaseEventLoop methods in C: the first base of "
                "cdaphne.loop.LibuvEventLoop."},
    {Py_tp_methods, loopmeth_methods},
    {0, NULL},
};

static PyType_Spec loopmeth_spec = {
    .name = "cdaphne._cdaphne.LoopMethods",
    .basicsize = 0, /* object's: a mixin, no fields */
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = loopmeth_slots,
};

int
cd_loopmeth_type_init(PyObject *module, cd_state *st)
{
    PyObject *aio = PyImport_ImportModule("_asyncio");
    if (aio == NULL) {
        return -1;
    }
    st->get_running_loop = PyObject_GetAttrString(aio, "_get_running_loop");
    Py_DECREF(aio);
    if (st->get_running_loop == NULL) {
        return -1;
    }
    st->LoopMethods_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &loopmeth_spec, NULL);
    if (st->LoopMethods_type == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->LoopMethods_type);
}
