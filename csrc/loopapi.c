/* BaseEventLoop.create_task() and run_in_executor() without their Python
 * frames (LoopMethods' methods, loopmeth.c, call them).
 *
 * Apps make a Task per ensure_future()/create_task() (Channels: one per
 * message a consumer receives from its channel layer), and a thread hop
 * per sync_to_async(); the methods' own frames are most of what the loop
 * adds to that.  The C paths do what BaseEventLoop's functions do when no
 * task factory is set and debug mode is off, except that an executor's
 * concurrent future completes its asyncio future from C, and a plain
 * ThreadPoolExecutor gets a C work item instead of a submit() (hop.c).
 * Everything else -- a closed loop, debug mode (its checks and traceback
 * trimming), a task factory, odd arguments -- goes to BaseEventLoop's own
 * function, which LoopMethods stands for. */
#include "internal.h"

int
cd_loopapi_plain(cd_loop_t *loop, int task)
{
    /* BaseEventLoop keeps these as plain attributes, which the step reads
     * too: one accessor over its cache (csrc/sched.c). */
    return cd_sched_loop_plain(loop, task);
}

PyObject *
cd_loopapi_create_task(cd_loop_t *loop, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    cd_state *st = loop->st;
    PyObject *aio = loop->aio_loop;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
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
        return cd_loopmeth_call(st->lm_base[CD_LM_CREATE_TASK], aio, args,
                                nargs, kwnames);
    }
    PyObject *targs[4] = {args[0], aio, name, context};
    if (name == Py_None && context == Py_None) {
        /* Task's own defaults: the call's keywords become a dict (Task has
         * no vectorcall), one entry is cheaper to make and parse. */
        return PyObject_Vectorcall(st->asyncio_Task, targs, 1,
                                   st->kwnames_loop);
    }
    return PyObject_Vectorcall(st->asyncio_Task, targs, 1, st->kwnames_task);
}

/* New reference: the executor of run_in_executor(None, ...), as
 * BaseEventLoop finds it: the loop's default one, checked, and made the
 * first time. */
static PyObject *
loopapi_default_executor(cd_loop_t *loop)
{
    PyObject *aio = loop->aio_loop, *mod = NULL, *cls = NULL, *kw = NULL;
    PyObject *ex = PyObject_GetAttr(aio, loop->st->s__default_executor);
    PyObject *r = ex ? PyObject_CallMethodNoArgs(
                           aio, loop->st->s__check_default_executor)
                     : NULL;
    if (r == NULL || ex != Py_None) {
        Py_XDECREF(r);
        if (r == NULL) {
            Py_CLEAR(ex);
        }
        return ex;
    }
    Py_DECREF(r);
    Py_CLEAR(ex);
    mod = PyImport_ImportModule("concurrent.futures");
    cls = mod ? PyObject_GetAttrString(mod, "ThreadPoolExecutor") : NULL;
    kw = cls ? Py_BuildValue("{ss}", "thread_name_prefix", "asyncio") : NULL;
    ex = kw ? PyObject_Call(cls, loop->st->empty_tuple, kw) : NULL;
    if (ex != NULL &&
        PyObject_SetAttr(aio, loop->st->s__default_executor, ex) < 0) {
        Py_CLEAR(ex);
    }
    Py_XDECREF(mod);
    Py_XDECREF(cls);
    Py_XDECREF(kw);
    return ex;
}

/* New reference: the asyncio future of executor.submit(func, *args). */
static PyObject *
loopapi_submit(cd_loop_t *loop, PyObject *const *args, Py_ssize_t nargs)
{
    cd_state *st = loop->st;
    PyObject *res = NULL;
    /* Before submit(), which may start the executor's threads: they
     * inherit the policy. */
    cd_policy_hop_out(loop);
    int queued = cd_hop_submit(loop, args, nargs, &res);
    if (queued != 0) {
        return queued < 0 ? NULL : res;
    }
    /* executor.submit(func, *args): args[0] is the executor. */
    PyObject *fut =
        PyObject_VectorcallMethod(st->s_submit, args, (size_t)nargs, NULL);
    if (fut == NULL) {
        return NULL;
    }
    int plain = PyObject_IsInstance(fut, st->cf_Future);
    if (plain > 0) {
        res = cd_hop_wrap(loop, fut);
    }
    else if (plain == 0) {
        /* asyncio.wrap_future(fut, loop=loop). */
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        PyObject *wrap =
            asyncio ? PyObject_GetAttr(asyncio, st->s_wrap_future) : NULL;
        if (wrap != NULL) {
            PyObject *wargs[2] = {fut, loop->aio_loop};
            res = PyObject_Vectorcall(wrap, wargs, 1, st->kwnames_loop);
        }
        Py_XDECREF(wrap);
        Py_XDECREF(asyncio);
    }
    Py_DECREF(fut);
    return res;
}

PyObject *
cd_loopapi_run_in_executor(cd_loop_t *loop, PyObject *const *args,
                           size_t nargsf, PyObject *kwnames)
{
    cd_state *st = loop->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int unusual = nargs < 2 || kwnames != NULL;
    if (!unusual) {
        int plain = cd_loopapi_plain(loop, 0);
        if (plain > 0) {
            plain = cd_sched_threadsafe_plain(loop);
        }
        if (plain < 0) {
            return NULL;
        }
        unusual = !plain;
    }
    if (unusual) {
        /* Closed, debug mode (its callback check), bad arguments, a
         * wake-up of the loop's own (the C hops would go past it). */
        return cd_loopmeth_call(st->lm_base[CD_LM_RUN_IN_EXECUTOR],
                                loop->aio_loop, args, nargs, kwnames);
    }
    if (args[0] != Py_None) {
        return loopapi_submit(loop, args, nargs);
    }
    PyObject *ex = loopapi_default_executor(loop);
    if (ex == NULL) {
        return NULL;
    }
    PyObject *small[8], **full = small, *res = NULL;
    if (nargs > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        full = PyMem_Malloc((size_t)nargs * sizeof(PyObject *));
    }
    if (full == NULL) {
        PyErr_NoMemory();
    }
    else {
        full[0] = ex;
        for (Py_ssize_t i = 1; i < nargs; i++) {
            full[i] = args[i];
        }
        res = loopapi_submit(loop, full, nargs);
    }
    if (full != small) {
        PyMem_Free(full);
    }
    Py_DECREF(ex);
    return res;
}
