/* BaseEventLoop.create_task() without its Python frame.
 *
 * Apps make a Task per ensure_future()/create_task() (Channels: one per
 * message a consumer receives from its channel layer); the method's own
 * frame is most of what the loop adds to that.  The C path does what
 * BaseEventLoop.create_task does when no task factory is set and debug
 * mode is off: asyncio.Task(coro, loop=loop, name=name, context=context).
 * Everything else -- a closed loop, debug mode (its traceback trimming),
 * a task factory, odd arguments -- goes to the class's own method. */
#include "internal.h"

int
cd_loopapi_plain(cd_loop_t *loop, int task)
{
    /* BaseEventLoop keeps these as plain attributes, which the step reads
     * too: one accessor over its cache (csrc/sched.c). */
    return cd_sched_loop_plain(loop, task);
}

/* type(aio).<name>(aio, *args, **kw): the class's own method, which the
 * C entry points bound on the instance hand what they do not serve. */
PyObject *
cd_loopapi_call_class_method(PyObject *aio, PyObject *name,
                             PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8], **full = small, *res = NULL;
    PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(aio), name);
    if (m == NULL) {
        return NULL;
    }
    if (nargs + nkw + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        full = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
        if (full == NULL) {
            Py_DECREF(m);
            return PyErr_NoMemory();
        }
    }
    full[0] = aio;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        full[i + 1] = args[i];
    }
    res = PyObject_Vectorcall(m, full, (size_t)nargs + 1, kwnames);
    if (full != small) {
        PyMem_Free(full);
    }
    Py_DECREF(m);
    return res;
}

PyObject *
cd_loopapi_create_task(cd_loop_t *loop, PyObject *const *args,
                       Py_ssize_t nargs, PyObject *kwnames)
{
    cd_state *st = loop->st;
    PyObject *aio = loop->aio_loop;
    if (aio == NULL) {
        /* Detached by close(): what BaseEventLoop._check_closed says. */
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    /* name and context, by keyword only, as the method takes them. */
    PyObject *name = Py_None, *context = Py_None;
    int unusual = nargs != 1;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw && !unusual; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (k == st->s_name) {
            name = args[nargs + i];
        }
        else if (k == st->s_context) {
            context = args[nargs + i];
        }
        else {
            unusual = 1; /* Not interned, or unknown: let Python judge. */
        }
    }
    if (!unusual) {
        int plain = cd_loopapi_plain(loop, 1);
        if (plain < 0) {
            return NULL;
        }
        unusual = !plain;
    }
    if (unusual) {
        return cd_loopapi_call_class_method(aio, st->s_create_task, args,
                                            nargs, kwnames);
    }
    PyObject *targs[4] = {args[0], aio, name, context};
    return PyObject_Vectorcall(st->asyncio_Task, targs, 1, st->kwnames_task);
}
