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
#include <string.h>

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

/* Called by send() on the loop's thread. */
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
 * with Daphne's queue, where each get() has its own future).  1 or 0, -1
 * with an exception. */
static int
waiter_cancelled_for_another(cd_waiter_t *w, PyObject *exc)
{
    if (w->cy == NULL || !w->yielded || w->fut == NULL || exc == NULL ||
        !PyErr_GivenExceptionMatches(exc, w->st->asyncio_CancelledError)) {
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

/* ---- RecvFuture: what a waiting receive() yields to its task ------- */

/* A receive() that has to wait yields a future to its task, which adds
 * its wake-up as a done callback, and the message's arrival completes it.
 * An asyncio.Future does that with a loop.get_debug() call when made and
 * a loop.call_soon() call by name when completed; this future-like object
 * (what asyncio's Task accepts: _asyncio_future_blocking, _loop,
 * add_done_callback(fn, *, context), result(), cancel(msg)) puts the
 * wake-up on the loop's ready queue itself (cd_sched_call_soon) and is
 * made again in place for the next message.  It is used only where the
 * loop would make a plain Future and is not in debug mode (a Future
 * records where it was made then): cycle.c recv_future_new.
 *
 * It has no get_loop(): a Task looks that up first and would make a bound
 * method per message; asyncio.futures._get_loop() then reads _loop.  The
 * Task calls result() through PyObject_CallMethod(fut, "result"), which
 * reads tp_getattr: that returns a bound result() kept on the object. */
typedef enum {
    CD_RF_PENDING,
    CD_RF_DONE,
    CD_RF_CANCELLED,
} cd_rf_state_t;

typedef struct {
    PyObject_HEAD
    cd_state *st;         /* borrowed: the module outlives its types */
    PyObject *loop;       /* strong: the asyncio loop */
    PyObject *cb;         /* strong: the first done callback, or NULL */
    PyObject *ctx;        /* strong: its context, or NULL */
    PyObject *more;       /* strong: a list of (callback, context) after the
                             first, or NULL */
    PyObject *cancel_msg; /* strong: cancel()'s msg, or NULL */
    /* strong: bound methods kept for the names a Task looks up (result,
     * add_done_callback, get_loop), or NULL; each holds this object: a
     * cycle that cd_rfut_release breaks. */
    PyObject *meth[3];
    PyObject *dict;        /* strong: its __dict__ once made, or NULL */
    PyObject *weakreflist; /* its weak references, or NULL */
    cd_rf_state_t state;
    int blocking;
} cd_rfut_t;

int
cd_rfut_check(cd_state *st, PyObject *o)
{
    return Py_IS_TYPE(o, st->RecvFuture_type);
}

/* New reference: a pending future of loop. */
PyObject *
cd_rfut_new(cd_state *st, PyObject *loop)
{
    cd_rfut_t *f = PyObject_GC_New(cd_rfut_t, st->RecvFuture_type);
    if (f == NULL) {
        return NULL;
    }
    f->st = st;
    f->loop = Py_NewRef(loop);
    f->cb = f->ctx = f->more = f->cancel_msg = NULL;
    f->meth[0] = f->meth[1] = f->meth[2] = NULL;
    f->dict = f->weakreflist = NULL;
    f->state = CD_RF_PENDING;
    f->blocking = 0;
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

/* Whether nothing but its one owner holds or watches f (the bound
 * methods it keeps hold it too, while nothing else holds them; no weak
 * reference, no attribute set on it): it may be made new. */
int
cd_rfut_unheld(PyObject *o)
{
    cd_rfut_t *f = (cd_rfut_t *)o;
    Py_ssize_t n = 1;
    if (f->dict != NULL || f->weakreflist != NULL) {
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        if (f->meth[i] != NULL) {
            if (Py_REFCNT(f->meth[i]) != 1) {
                return 0;
            }
            n++;
        }
    }
    return Py_REFCNT(f) == n;
}

/* Makes an unheld f pending again, for loop (as a new one would be). */
void
cd_rfut_reset(PyObject *o, PyObject *loop)
{
    cd_rfut_t *f = (cd_rfut_t *)o;
    if (f->loop != loop) {
        Py_SETREF(f->loop, Py_NewRef(loop));
    }
    Py_CLEAR(f->cb);
    Py_CLEAR(f->ctx);
    Py_CLEAR(f->more);
    Py_CLEAR(f->cancel_msg);
    f->state = CD_RF_PENDING;
    f->blocking = 0;
}

/* Drops the owner's reference, breaking the cycle with the kept bound
 * result() so that nothing waits for the garbage collector. */
void
cd_rfut_release(PyObject *o)
{
    if (o != NULL) {
        cd_rfut_t *f = (cd_rfut_t *)o;
        Py_CLEAR(f->meth[0]);
        Py_CLEAR(f->meth[1]);
        Py_CLEAR(f->meth[2]);
        Py_DECREF(o);
    }
}

int
cd_rfut_done(PyObject *o)
{
    return ((cd_rfut_t *)o)->state != CD_RF_PENDING;
}

/* loop.call_soon(cb, f, context=ctx), as a Future schedules its done
 * callbacks: in C while the loop keeps LoopMethods' call_soon, else by
 * name. */
static int
rfut_call_soon(cd_rfut_t *f, PyObject *cb, PyObject *ctx)
{
    cd_state *st = f->st;
    PyObject *args[4] = {f->loop, cb, (PyObject *)f, ctx};
    PyObject *h;
    st->scheduled = 1;
    cd_loop_t *core = cd_loopmeth_direct(st, f->loop, CD_LM_CALL_SOON);
    if (core != NULL) {
        h = cd_sched_call_soon(core, args + 1, 2, st->kwnames_context);
    }
    else if (PyErr_Occurred()) {
        return -1;
    }
    else {
        h = PyObject_VectorcallMethod(st->lm_name[CD_LM_CALL_SOON], args,
                                      3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      st->kwnames_context);
    }
    Py_XDECREF(h);
    return h != NULL ? 0 : -1;
}

/* Notes a failed call_soon: the first exception is kept in *first for
 * the caller to raise, later ones are logged. */
static void
rfut_note_error(PyObject **first)
{
    if (*first == NULL) {
        *first = PyErr_GetRaisedException();
    }
    else {
        cd_log_exception("Error scheduling a done callback");
    }
}

/* Schedules the done callbacks, which go (a Future's
 * future_schedule_callbacks).  -1 with the first exception if one could
 * not be scheduled (the others are). */
static int
rfut_schedule(cd_rfut_t *f)
{
    PyObject *cb = f->cb, *ctx = f->ctx, *more = f->more, *first = NULL;
    f->cb = f->ctx = f->more = NULL;
    if (cb != NULL) {
        if (rfut_call_soon(f, cb, ctx) < 0) {
            rfut_note_error(&first);
        }
        Py_DECREF(cb);
        Py_DECREF(ctx);
    }
    if (more != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(more); i++) {
            PyObject *t = PyList_GET_ITEM(more, i);
            if (rfut_call_soon(f, PyTuple_GET_ITEM(t, 0),
                               PyTuple_GET_ITEM(t, 1)) < 0) {
                rfut_note_error(&first);
            }
        }
        Py_DECREF(more);
    }
    if (first != NULL) {
        PyErr_SetRaisedException(first);
        return -1;
    }
    return 0;
}

/* set_result(None): 0 (also if f was done: cancelled), -1 with an
 * exception if a callback could not be scheduled. */
int
cd_rfut_set_result(PyObject *o)
{
    cd_rfut_t *f = (cd_rfut_t *)o;
    if (f->state != CD_RF_PENDING) {
        return 0;
    }
    f->state = CD_RF_DONE;
    return rfut_schedule(f);
}

/* Raises CancelledError(msg), or CancelledError() without a message, as
 * a cancelled Future's result() does. */
static PyObject *
rfut_cancelled_error(cd_rfut_t *f)
{
    PyObject *type = f->st->asyncio_CancelledError;
    PyObject *exc = f->cancel_msg != NULL && f->cancel_msg != Py_None
                        ? PyObject_CallOneArg(type, f->cancel_msg)
                        : PyObject_CallNoArgs(type);
    if (exc != NULL) {
        PyErr_SetObject(type, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
rfut_invalid_state(const char *msg)
{
    PyObject *exceptions = PyImport_ImportModule("asyncio.exceptions");
    if (exceptions == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_GetAttrString(exceptions, "InvalidStateError");
    Py_DECREF(exceptions);
    if (exc != NULL) {
        PyErr_SetString(exc, msg);
        Py_DECREF(exc);
    }
    return NULL;
}

/* result(): None once done; raises CancelledError if cancelled. */
PyObject *
cd_rfut_result(PyObject *o)
{
    cd_rfut_t *f = (cd_rfut_t *)o;
    switch (f->state) {
    case CD_RF_DONE: Py_RETURN_NONE;
    case CD_RF_CANCELLED: return rfut_cancelled_error(f);
    case CD_RF_PENDING: break;
    }
    return rfut_invalid_state("Result is not set.");
}

static PyObject *
rfut_result(cd_rfut_t *f, PyObject *unused)
{
    return cd_rfut_result((PyObject *)f);
}

static PyObject *
rfut_exception(cd_rfut_t *f, PyObject *unused)
{
    switch (f->state) {
    case CD_RF_DONE: Py_RETURN_NONE;
    case CD_RF_CANCELLED: return rfut_cancelled_error(f);
    case CD_RF_PENDING: break;
    }
    return rfut_invalid_state("Exception is not set.");
}

static PyObject *
rfut_done(cd_rfut_t *f, PyObject *unused)
{
    return PyBool_FromLong(f->state != CD_RF_PENDING);
}

static PyObject *
rfut_cancelled(cd_rfut_t *f, PyObject *unused)
{
    return PyBool_FromLong(f->state == CD_RF_CANCELLED);
}

static PyObject *
rfut_get_loop(cd_rfut_t *f, void *closure)
{
    return Py_NewRef(f->loop);
}

static PyObject *
rfut_get_loop_meth(cd_rfut_t *f, PyObject *unused)
{
    return Py_NewRef(f->loop);
}

/* add_done_callback(fn, *, context=None). */
static PyObject *
rfut_add_done_callback(cd_rfut_t *f, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    PyObject *ctx = NULL;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 &&
         !cd_cycle_type_is(PyTuple_GET_ITEM(kwnames, 0), f->st->s_context))) {
        PyErr_SetString(PyExc_TypeError,
                        "add_done_callback(fn, /, *, context=None)");
        return NULL;
    }
    if (nkw == 1 && args[1] != Py_None) {
        ctx = Py_NewRef(args[1]);
    }
    else {
        ctx = PyContext_CopyCurrent();
        if (ctx == NULL) {
            return NULL;
        }
    }
    PyObject *fn = args[0];
    if (f->state != CD_RF_PENDING) {
        int r = rfut_call_soon(f, fn, ctx);
        Py_DECREF(ctx);
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (f->cb == NULL && f->more == NULL) {
        f->cb = Py_NewRef(fn);
        f->ctx = ctx;
        Py_RETURN_NONE;
    }
    PyObject *t = PyTuple_Pack(2, fn, ctx);
    Py_DECREF(ctx);
    if (t == NULL) {
        return NULL;
    }
    if (f->more == NULL && (f->more = PyList_New(0)) == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    int r = PyList_Append(f->more, t);
    Py_DECREF(t);
    return r < 0 ? NULL : Py_NewRef(Py_None);
}

/* remove_done_callback(fn): how many were removed. */
static PyObject *
rfut_remove_done_callback(cd_rfut_t *f, PyObject *fn)
{
    Py_ssize_t removed = 0;
    if (f->cb != NULL) {
        int eq = PyObject_RichCompareBool(f->cb, fn, Py_EQ);
        if (eq < 0) {
            return NULL;
        }
        if (eq) {
            Py_CLEAR(f->cb);
            Py_CLEAR(f->ctx);
            removed++;
        }
    }
    for (Py_ssize_t i = 0; f->more != NULL && i < PyList_GET_SIZE(f->more);) {
        PyObject *t = PyList_GET_ITEM(f->more, i);
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(t, 0), fn, Py_EQ);
        if (eq < 0) {
            return NULL;
        }
        if (eq) {
            if (PySequence_DelItem(f->more, i) < 0) {
                return NULL;
            }
            removed++;
        }
        else {
            i++;
        }
    }
    return PyLong_FromSsize_t(removed);
}

/* cancel(msg=None), as Future.cancel. */
static PyObject *
rfut_cancel(cd_rfut_t *f, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    PyObject *msg = Py_None;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(
                         PyTuple_GET_ITEM(kwnames, 0), "msg") != 0)) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    if (nargs + nkw == 1) {
        msg = args[0];
    }
    if (f->state != CD_RF_PENDING) {
        Py_RETURN_FALSE;
    }
    f->state = CD_RF_CANCELLED;
    Py_XSETREF(f->cancel_msg, Py_NewRef(msg));
    if (rfut_schedule(f) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
rfut_get_blocking(cd_rfut_t *f, void *closure)
{
    return PyBool_FromLong(f->blocking);
}

static int
rfut_set_blocking(cd_rfut_t *f, PyObject *v, void *closure)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0) {
        return -1;
    }
    f->blocking = b;
    return 0;
}

/* Sets the blocking flag, as awaiting a Future does before yielding it. */
void
cd_rfut_set_blocking(PyObject *o)
{
    ((cd_rfut_t *)o)->blocking = 1;
}

static PyObject *rfut_bound(cd_rfut_t *f, int i);

/* The names a Task reads at every wait: the flag, and the bound methods
 * kept (no method object made and freed per message); any other name is
 * looked up as usual.  asyncio's names are the interned ones. */
static PyObject *
rfut_getattro(cd_rfut_t *f, PyObject *name)
{
    cd_state *st = f->st;
    if (name == st->s_asyncio_future_blocking) {
        return PyBool_FromLong(f->blocking);
    }
    if (name == st->s_add_done_callback) {
        return rfut_bound(f, 1);
    }
    if (name == st->s_get_loop) {
        return rfut_bound(f, 2);
    }
    return PyObject_GenericGetAttr((PyObject *)f, name);
}

static int
rfut_setattro(cd_rfut_t *f, PyObject *name, PyObject *v)
{
    if (name == f->st->s_asyncio_future_blocking && v != NULL) {
        int b = PyObject_IsTrue(v);
        if (b < 0) {
            return -1;
        }
        f->blocking = b;
        return 0;
    }
    return PyObject_GenericSetAttr((PyObject *)f, name, v);
}

/* The char * attribute lookup, which PyObject_CallMethod(fut, "result")
 * uses (a Task's wake-up): result is the bound method kept; any other
 * name is looked up as usual. */
static PyObject *
rfut_getattr(cd_rfut_t *f, char *name)
{
    if (strcmp(name, "result") == 0) {
        return rfut_bound(f, 0);
    }
    PyObject *s = PyUnicode_FromString(name);
    if (s == NULL) {
        return NULL;
    }
    PyObject *r = rfut_getattro(f, s);
    Py_DECREF(s);
    return r;
}

static PyObject *
rfut_repr(cd_rfut_t *f)
{
    static const char *names[] = {"pending", "finished", "cancelled"};
    int ncb = (f->cb != NULL) +
              (f->more != NULL ? (int)PyList_GET_SIZE(f->more) : 0);
    return PyUnicode_FromFormat("<%s %s callbacks=%d>", Py_TYPE(f)->tp_name,
                                names[f->state], ncb);
}

static int
rfut_traverse(cd_rfut_t *f, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(f));
    Py_VISIT(f->loop);
    Py_VISIT(f->cb);
    Py_VISIT(f->ctx);
    Py_VISIT(f->more);
    Py_VISIT(f->cancel_msg);
    Py_VISIT(f->meth[0]);
    Py_VISIT(f->meth[1]);
    Py_VISIT(f->meth[2]);
    Py_VISIT(f->dict);
    return 0;
}

static int
rfut_clear(cd_rfut_t *f)
{
    Py_CLEAR(f->loop);
    Py_CLEAR(f->cb);
    Py_CLEAR(f->ctx);
    Py_CLEAR(f->more);
    Py_CLEAR(f->cancel_msg);
    Py_CLEAR(f->meth[0]);
    Py_CLEAR(f->meth[1]);
    Py_CLEAR(f->meth[2]);
    Py_CLEAR(f->dict);
    return 0;
}

static void
rfut_dealloc(cd_rfut_t *f)
{
    PyTypeObject *tp = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    if (f->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)f);
    }
    rfut_clear(f);
    tp->tp_free(f);
    Py_DECREF(tp);
}

static PyMethodDef rfut_methods[] = {
    {"result", (PyCFunction)rfut_result, METH_NOARGS, NULL},
    {"exception", (PyCFunction)rfut_exception, METH_NOARGS, NULL},
    {"done", (PyCFunction)rfut_done, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)rfut_cancelled, METH_NOARGS, NULL},
    {"add_done_callback", (PyCFunction)(void (*)(void))rfut_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"get_loop", (PyCFunction)rfut_get_loop_meth, METH_NOARGS, NULL},
    {"remove_done_callback", (PyCFunction)rfut_remove_done_callback, METH_O,
     NULL},
    {"cancel", (PyCFunction)(void (*)(void))rfut_cancel,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

/* New reference: the bound method kept in meth[i]: result,
 * add_done_callback, get_loop (their rfut_methods entries). */
static PyObject *
rfut_bound(cd_rfut_t *f, int i)
{
    static const int def[3] = {0, 4, 5};
    if (f->meth[i] == NULL) {
        f->meth[i] = PyCFunction_New(&rfut_methods[def[i]], (PyObject *)f);
        if (f->meth[i] == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(f->meth[i]);
}

static PyGetSetDef rfut_getset[] = {
    {"_asyncio_future_blocking", (getter)rfut_get_blocking,
     (setter)rfut_set_blocking, NULL, NULL},
    {"_loop", (getter)rfut_get_loop, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

static PyMemberDef rfut_members[] = {
    {"__dictoffset__", Py_T_PYSSIZET, offsetof(cd_rfut_t, dict), Py_READONLY,
     NULL},
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(cd_rfut_t, weakreflist),
     Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot rfut_slots[] = {
    {Py_tp_members, rfut_members},
    {Py_tp_getattr, rfut_getattr},
    {Py_tp_getattro, rfut_getattro},
    {Py_tp_setattro, rfut_setattro},
    {Py_tp_repr, rfut_repr},
    {Py_tp_methods, rfut_methods},
    {Py_tp_getset, rfut_getset},
    {Py_tp_traverse, rfut_traverse},
    {Py_tp_clear, rfut_clear},
    {Py_tp_dealloc, rfut_dealloc},
    {0, NULL},
};

static PyType_Spec rfut_spec = {
    .name = "cdaphne._cdaphne.RecvFuture",
    .basicsize = sizeof(cd_rfut_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = rfut_slots,
};

int
cd_waiter_type_init(PyObject *module, cd_state *st)
{
    st->Waiter_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (st->Waiter_type == NULL) {
        return -1;
    }
    st->RecvFuture_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &rfut_spec, NULL);
    if (st->RecvFuture_type == NULL) {
        return -1;
    }
    st->done_waiter = waiter_new(st, NULL);
    return st->done_waiter ? 0 : -1;
}
