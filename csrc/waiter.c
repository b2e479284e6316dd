/* Waiter: the awaitable that receive() and send() return.
 *
 * When the value is already there, awaiting it returns at once without a
 * loop round trip.  Otherwise it yields a loop future once (as
 * asyncio.Future.__await__ does) and returns that future's result.
 *
 * A receive() waiter takes its message when first awaited (a receive()
 * never awaited takes nothing).  If none is there it yields a future
 * that only says "a message is there", and takes the message from its
 * cycle when its task runs again.
 * So a task cancelled while waiting (even after the future completed)
 * never takes a message it cannot deliver: the message stays queued for
 * the next receive().
 *
 * Only the loop's thread may drive a waiter that holds a cycle or a loop
 * future (the connection, its libuv handles and the futures are not
 * thread-safe): awaited in another thread (a loop of its own, or by
 * hand) it raises RuntimeError and leaves everything as it was, as
 * asyncio refuses a future of another loop. */
#include "internal.h"

#include <pthread.h>

typedef struct {
    PyObject_HEAD
    PyObject *fut;  /* strong: the future to wait on, or NULL */
    PyObject *it;   /* strong: fut's own iterator (Future.__await__) while
                       yielded, for an exact asyncio.Future; else NULL */
    cd_cycle_t *cy; /* strong: receive() waiters only, else NULL */
    cd_state *st;   /* borrowed: the module outlives its types */
    unsigned long thread; /* the loop's, the only one that may drive it */
    int yielded;
} cd_waiter_t;

static PyObject *
waiter_new(cd_state *st, PyObject *fut)
{
    cd_waiter_t *w = PyObject_GC_New(cd_waiter_t, st->Waiter_type);
    if (w == NULL) {
        Py_XDECREF(fut);
        return NULL;
    }
    st->live.waiters++;
    w->st = st;
    w->fut = fut;
    w->it = NULL;
    w->cy = NULL;
    w->thread = 0;
    w->yielded = 0;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* The cycle keeps its last receive() waiter (cy->waiter): once nothing
 * else holds it (its await is over, or it was never awaited) it is as
 * good as new, and the next receive() returns it again instead of
 * allocating one per message.  A waiter has no weak references (its
 * type has no slot for them). */
PyObject *
cd_waiter_receive(cd_state *st, cd_cycle_t *cy)
{
    cd_waiter_t *w = (cd_waiter_t *)cy->waiter;
    if (w != NULL && Py_REFCNT(w) == 1) {
        Py_CLEAR(w->fut);
        Py_CLEAR(w->it);
        w->yielded = 0;
        if (w->cy == NULL) {
            w->cy = (cd_cycle_t *)Py_NewRef((PyObject *)cy);
        }
        return Py_NewRef((PyObject *)w);
    }
    w = (cd_waiter_t *)waiter_new(st, NULL);
    if (w != NULL) {
        w->cy = (cd_cycle_t *)Py_NewRef((PyObject *)cy);
        w->thread = cy->thread;
        Py_XSETREF(cy->waiter, Py_NewRef((PyObject *)w));
    }
    return (PyObject *)w;
}

/* Called by send() and by a RecvFuture's __await__ on the loop's
 * thread. */
PyObject *
cd_waiter_pending(cd_state *st, PyObject *fut)
{
    cd_waiter_t *w = (cd_waiter_t *)waiter_new(st, fut);
    if (w != NULL) {
        w->thread = (unsigned long)pthread_self();
    }
    return (PyObject *)w;
}

/* 1 with RuntimeError if w holds a cycle or a future and this is not the
 * loop's thread (nothing touched), else 0.  A receive() waiter holds its
 * cycle until it returns the message; one that holds neither returns
 * None anywhere (the shared done waiter). */
static int
waiter_off_thread(cd_waiter_t *w)
{
    /* PyThread_get_thread_ident() is this cast, without two calls. */
    if ((w->cy == NULL && w->fut == NULL) ||
        w->thread == (unsigned long)pthread_self()) {
        return 0;
    }
    cd_cycle_off_thread(w->cy != NULL ? "receive" : "send");
    return 1;
}

static PySendResult waiter_take(cd_waiter_t *w, PyObject **result);

/* Whether the running task was asked to cancel: 1 if its cancelling()
 * is above 0 (or it has no cancelling(), a task factory's own kind of
 * task), 0 if not, -1 with an exception.  A cold path: a cancelled
 * receive() future. */
static int
task_cancelling(void)
{
    PyObject *task = NULL, *n = NULL;
    int cancelling = -1;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL) {
        goto done;
    }
    task = PyObject_CallMethod(asyncio, "current_task", NULL);
    if (task == NULL || task == Py_None) {
        cancelling = task == NULL ? -1 : 1;
        goto done;
    }
    n = PyObject_CallMethod(task, "cancelling", NULL);
    if (n == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            cancelling = 1;
        }
        goto done;
    }
    cancelling = PyObject_IsTrue(n);
done:
    Py_XDECREF(n);
    Py_XDECREF(task);
    Py_XDECREF(asyncio);
    return cancelling;
}

/* The future's result, once the task was woken (or at once if it is
 * done already, as `await fut` does): then a receive() waiter takes its
 * message. */
static PySendResult
waiter_resumed(cd_waiter_t *w, PySendResult r, PyObject **result)
{
    if (r != PYGEN_RETURN || w->cy == NULL) {
        return r;
    }
    Py_DECREF(*result); /* None: the future only woke us. */
    return waiter_take(w, result);
}

/* Wait on w->fut as `await fut` does.  An exact asyncio.Future is
 * awaited through its own iterator, which marks it blocking, yields it
 * and later returns its result (or raises CancelledError) without a
 * method call either way; any other future gets the same by name. */
static PySendResult
waiter_yield(cd_waiter_t *w, PyObject **result)
{
    PyObject *fut = w->fut;
    if (cd_rfut_check(w->st, fut)) {
        if (cd_rfut_done(fut)) {
            w->fut = NULL;
            *result = cd_rfut_result(fut);
            Py_DECREF(fut);
            return waiter_resumed(w, *result ? PYGEN_RETURN : PYGEN_ERROR,
                                  result);
        }
        cd_rfut_set_blocking(fut);
        w->yielded = 1;
        *result = Py_NewRef(fut);
        return PYGEN_NEXT;
    }
    if (Py_IS_TYPE(fut, (PyTypeObject *)w->st->asyncio_Future)) {
        PyObject *it = Py_TYPE(fut)->tp_as_async->am_await(fut);
        if (it == NULL) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        PySendResult r = PyIter_Send(it, Py_None, result);
        if (r == PYGEN_NEXT) {
            w->it = it;
            w->yielded = 1;
            return r;
        }
        Py_DECREF(it);
        Py_CLEAR(w->fut);
        return waiter_resumed(w, r, result);
    }
    if (PyObject_SetAttr(fut, w->st->s_asyncio_future_blocking, Py_True) < 0) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    w->yielded = 1;
    *result = Py_NewRef(fut);
    return PYGEN_NEXT;
}

/* The receive() future completed: take the message now, or wait again
 * if another receive() took it first. */
static PySendResult
waiter_take(cd_waiter_t *w, PyObject **result)
{
    PyObject *msg = cd_cycle_take_message(w->cy);
    if (msg != NULL) {
        Py_CLEAR(w->cy);
        *result = msg;
        return PYGEN_RETURN;
    }
    if (PyErr_Occurred()) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    w->fut = cd_cycle_recv_future(w->cy);
    if (w->fut == NULL) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    return waiter_yield(w, result);
}

static PySendResult
waiter_am_send(cd_waiter_t *w, PyObject *arg, PyObject **result)
{
    if (waiter_off_thread(w)) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    if (w->cy != NULL && !w->yielded) {
        return waiter_take(w, result);
    }
    if (w->fut == NULL) {
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (!w->yielded) {
        return waiter_yield(w, result);
    }
    if (w->it != NULL) {
        PyObject *it = w->it;
        PySendResult r = PyIter_Send(it, Py_None, result);
        if (r == PYGEN_NEXT) {
            return r; /* Resumed before the future was done. */
        }
        w->it = NULL;
        Py_DECREF(it);
        Py_CLEAR(w->fut);
        return waiter_resumed(w, r, result);
    }
    PyObject *fut = w->fut;
    w->fut = NULL;
    if (cd_rfut_check(w->st, fut)) {
        /* Resumed before it was done: as a Future's own await says. */
        *result = cd_rfut_done(fut)
                      ? cd_rfut_result(fut)
                      : (PyErr_SetString(PyExc_RuntimeError,
                                         "await wasn't used with future"),
                         NULL);
        Py_DECREF(fut);
        if (*result == NULL) {
            return PYGEN_ERROR;
        }
        return waiter_resumed(w, PYGEN_RETURN, result);
    }
    /* Raises CancelledError if the future was cancelled. */
    *result = PyObject_CallMethodNoArgs(fut, w->st->s_result);
    Py_DECREF(fut);
    if (*result == NULL) {
        return PYGEN_ERROR;
    }
    return waiter_resumed(w, PYGEN_RETURN, result);
}

#if PY_VERSION_HEX >= 0x030C0000
/* Raises StopIteration(value), as await (SEND) takes a value from
 * tp_iternext; steals value.  SEND takes the value out and drops the
 * exception at once, so the state's spare one is raised again when that
 * left nothing else holding it and nothing on it (no traceback, context,
 * cause, notes or attributes: it escaped to no Python code): one
 * exception object per receive() otherwise.  Raised as it is, so the
 * exception being handled (if any) does not become its __context__, as
 * PyErr_SetObject would make it. */
static void
waiter_raise_return(cd_state *st, PyObject *value)
{
    PyStopIterationObject *e = (PyStopIterationObject *)st->stop_iteration;
    if (e != NULL && Py_REFCNT(e) == 1 && e->dict == NULL &&
        e->notes == NULL && e->traceback == NULL && e->context == NULL &&
        e->cause == NULL && !e->suppress_context) {
        if (e->args != NULL && Py_REFCNT(e->args) == 1 &&
            PyTuple_GET_SIZE(e->args) == 1) {
            /* Only the exception holds its args: set in place. */
            if (PyTuple_SetItem(e->args, 0, Py_NewRef(value)) < 0) {
                Py_DECREF(value);
                return;
            }
        }
        else {
            PyObject *args = PyTuple_Pack(1, value);
            if (args == NULL) {
                Py_DECREF(value);
                return;
            }
            Py_XSETREF(e->args, args);
        }
        Py_XSETREF(e->value, value);
        PyErr_SetRaisedException(Py_NewRef((PyObject *)e));
        return;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (exc != NULL) {
        Py_XSETREF(st->stop_iteration, Py_NewRef(exc));
        PyErr_SetRaisedException(exc);
    }
}
#endif

#if PY_VERSION_HEX >= 0x030C0000
/* Lets go of the message the spare StopIteration last returned, once
 * nothing else holds it (await took the value out): the app's message
 * stays alive only as long as the app keeps it. */
void
cd_waiter_drop_returned(cd_state *st)
{
    PyStopIterationObject *e = (PyStopIterationObject *)st->stop_iteration;
    if (e == NULL || Py_REFCNT(e) != 1 || e->value == Py_None) {
        return;
    }
    if (e->args != NULL && Py_REFCNT(e->args) == 1 &&
        PyTuple_GET_SIZE(e->args) == 1) {
        PyObject *old = PyTuple_GET_ITEM(e->args, 0);
        PyTuple_SET_ITEM(e->args, 0, Py_NewRef(Py_None));
        Py_DECREF(old);
    }
    else {
        Py_SETREF(e->args, Py_NewRef(st->empty_tuple));
    }
    Py_XSETREF(e->value, Py_NewRef(Py_None));
}
#else
void
cd_waiter_drop_returned(cd_state *st)
{
    (void)st; /* No spare: a StopIteration per message (3.11). */
}
#endif

static PyObject *
waiter_iternext(cd_waiter_t *w)
{
    PyObject *res;
    PySendResult r = waiter_am_send(w, Py_None, &res);
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        if (res == Py_None) {
            /* Exhausted without an exception: an iterator's end, which
             * await and yield from (SEND) take as the value None, with
             * no StopIteration made and dropped on every send(). */
            Py_DECREF(res);
            return NULL;
        }
#if PY_VERSION_HEX >= 0x030C0000
        waiter_raise_return(w->st, res);
#else
        PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, res);
        Py_DECREF(res);
        if (e != NULL) {
            PyErr_SetObject(PyExc_StopIteration, e);
            Py_DECREF(e);
        }
#endif
    }
    return NULL;
}

/* Generator-style send(), used by code that drives awaitables by hand. */
static PyObject *
waiter_send(cd_waiter_t *w, PyObject *arg)
{
    PyObject *res = waiter_iternext(w);
    if (res == NULL && !PyErr_Occurred()) {
        PyErr_SetNone(PyExc_StopIteration); /* A method must raise it. */
    }
    return res;
}

/* Whether exc, thrown into a receive() waiter, is the CancelledError of
 * the future it waits on, cancelled for another task: concurrent
 * receive()s share the cycle's future, which the cancellation of one of
 * their tasks cancels, and asyncio throws that into every task woken by
 * it.  Then this task, which nobody asked to cancel, waits again (as
 * with Daphne's queue, where each get() has its own future).  Not when
 * the app cancelled a RecvFuture itself (no task waiting on it was being
 * cancelled): that raises, as Daphne's get() does when its future is
 * cancelled.  1 or 0, -1 with an exception. */
static int
waiter_cancelled_for_another(cd_waiter_t *w, PyObject *exc)
{
    if (w->cy == NULL || !w->yielded || w->fut == NULL || exc == NULL ||
        !PyErr_GivenExceptionMatches(exc, w->st->asyncio_CancelledError)) {
        return 0;
    }
    if (cd_rfut_check(w->st, w->fut) && !cd_rfut_cancelled_by_task(w->fut)) {
        /* The app cancelled it itself: raised, as a Future's await would
         * (and a Queue.get() whose future is cancelled). */
        return 0;
    }
    PyObject *c = PyObject_CallMethod(w->fut, "cancelled", NULL);
    int cancelled = c != NULL ? PyObject_IsTrue(c) : -1;
    Py_XDECREF(c);
    if (cancelled <= 0) {
        return cancelled;
    }
    int cancelling = task_cancelling();
    return cancelling < 0 ? -1 : !cancelling;
}

/* throw(exc) or throw(type[, value[, tb]]): what a cancelled task does
 * to the awaitable it waits on (asyncio's FutureIter_throw): let go of
 * the future and the cycle, raise the exception at the await (off the
 * loop's thread: RuntimeError, nothing let go). */
static PyObject *
waiter_throw(cd_waiter_t *w, PyObject *args)
{
    PyObject *type, *val = NULL, *tb = NULL;
    if (waiter_off_thread(w)) {
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &type, &val, &tb)) {
        return NULL;
    }
    if (val == Py_None) {
        val = NULL;
    }
    if (tb == Py_None) {
        tb = NULL;
    }
    else if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError,
                        "throw() third argument must be a traceback");
        return NULL;
    }
    if (PyExceptionInstance_Check(type)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate "
                            "value");
            return NULL;
        }
        val = type;
        type = (PyObject *)Py_TYPE(val);
    }
    else if (!PyExceptionClass_Check(type)) {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes deriving BaseException "
                        "or instances of such a class");
        return NULL;
    }
    Py_INCREF(type);
    Py_XINCREF(val);
    Py_XINCREF(tb);
    PyErr_NormalizeException(&type, &val, &tb);
    int again = waiter_cancelled_for_another(w, val);
    if (again != 0) {
        Py_DECREF(type);
        Py_XDECREF(val);
        Py_XDECREF(tb);
        if (again < 0) {
            return NULL;
        }
        Py_CLEAR(w->it);
        Py_CLEAR(w->fut);
        w->yielded = 0;
        return waiter_send(w, Py_None); /* Takes or waits again. */
    }
    if (tb != NULL) {
        PyException_SetTraceback(val, tb);
    }
    Py_CLEAR(w->it);
    Py_CLEAR(w->fut);
    Py_CLEAR(w->cy);
    PyErr_Restore(type, val, tb); /* Steals all three. */
    return NULL;
}

/* close(): the awaiting coroutine is closed; let go of what we hold
 * (off the loop's thread: RuntimeError, nothing let go). */
static PyObject *
waiter_close(cd_waiter_t *w, PyObject *unused)
{
    if (waiter_off_thread(w)) {
        return NULL;
    }
    Py_CLEAR(w->it);
    Py_CLEAR(w->fut);
    Py_CLEAR(w->cy);
    Py_RETURN_NONE;
}

static PyObject *
waiter_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int
waiter_traverse(cd_waiter_t *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->fut);
    Py_VISIT(w->it);
    Py_VISIT(w->cy);
    return 0;
}

static int
waiter_clear(cd_waiter_t *w)
{
    Py_CLEAR(w->it);
    Py_CLEAR(w->fut);
    Py_CLEAR(w->cy);
    return 0;
}

static void
waiter_dealloc(cd_waiter_t *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    waiter_clear(w);
    w->st->live.waiters--;
    tp->tp_free(w);
    Py_DECREF(tp);
}

static PyMethodDef waiter_methods[] = {
    {"send", (PyCFunction)waiter_send, METH_O, NULL},
    {"throw", (PyCFunction)waiter_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)waiter_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot waiter_slots[] = {
    {Py_am_await, waiter_await},
    {Py_am_send, waiter_am_send},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, waiter_iternext},
    {Py_tp_methods, waiter_methods},
    {Py_tp_traverse, waiter_traverse},
    {Py_tp_clear, waiter_clear},
    {Py_tp_dealloc, waiter_dealloc},
    {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "cdaphne._cdaphne.Waiter",
    .basicsize = sizeof(cd_waiter_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiter_slots,
};

int
cd_waiter_type_init(PyObject *module, cd_state *st)
{
    st->Waiter_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (st->Waiter_type == NULL) {
        return -1;
    }
    st->done_waiter = waiter_new(st, NULL);
    return st->done_waiter ? 0 : -1;
}
