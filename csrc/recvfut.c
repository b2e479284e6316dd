/* RecvFuture: what a waiting receive() yields to its task.
 *
 * A receive() that has to wait yields a future to its task, which adds
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
 * A Task reads _asyncio_future_blocking, get_loop and add_done_callback
 * by name at every wait, and calls result() through
 * PyObject_CallMethod(fut, "result"), which reads tp_getattr: those
 * names are answered from the flag and from bound methods kept on the
 * object (rfut_getattro, rfut_getattr), not made and freed per message.
 *
 * An app can get hold of it (task._fut_waiter) and use it as any asyncio
 * future: await it, hand it to gather() (which reads
 * _make_cancelled_error() and _cancel_message), set attributes on it
 * (which hide its methods), cancel it (its receive() then raises
 * CancelledError).  One that is held is never made new
 * (cd_rfut_unheld). */
#include "internal.h"

#include <string.h>

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
    /* Cancelled by the Task.cancel() of a task waiting on it (not by the
     * app itself): rfut_cancelled_by_task. */
    int by_task;
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
    f->blocking = f->by_task = 0;
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
    f->blocking = f->by_task = 0;
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

/* Whether cb is the wake-up of a C Task (_asyncio's task_wakeup, bound to
 * the task): known by its name and its task the first time, then by its C
 * function. */
static int
rfut_is_task_wakeup(cd_state *st, PyObject *cb)
{
    if (!PyCFunction_Check(cb)) {
        return 0;
    }
    PyCFunction fn = PyCFunction_GET_FUNCTION(cb);
    if (st->task_wakeup != NULL) {
        return fn == st->task_wakeup;
    }
    PyObject *task = PyCFunction_GET_SELF(cb);
    if (task == NULL ||
        !PyObject_TypeCheck(task, (PyTypeObject *)st->asyncio_Task) ||
        strcmp(((PyCFunctionObject *)cb)->m_ml->ml_name, "task_wakeup") != 0) {
        return 0;
    }
    st->task_wakeup = fn;
    return 1;
}

/* loop.call_soon(cb, f, context=ctx), as a Future schedules its done
 * callbacks: in C while the loop keeps LoopMethods' call_soon, else by
 * name.  A C Task's wake-up is given the core's done Future instead of a
 * RecvFuture done with None: it reads only the result of what it is
 * given, an exact Future's in C, anything else's through
 * PyObject_CallMethod(fut, "result") (~200 instructions per message);
 * the task takes its message from the RecvFuture it waits on
 * (waiter.c).  Any other callback is given f. */
static int
rfut_call_soon(cd_rfut_t *f, PyObject *cb, PyObject *ctx)
{
    cd_state *st = f->st;
    PyObject *args[4] = {f->loop, cb, (PyObject *)f, ctx};
    PyObject *h;
    st->scheduled = 1;
    cd_loop_t *core = cd_loopmeth_direct(st, f->loop, CD_LM_CALL_SOON);
    if (core != NULL) {
        if (f->state == CD_RF_DONE && rfut_is_task_wakeup(st, cb) &&
            (args[2] = cd_sched_done_future(core)) == NULL) {
            return -1;
        }
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

/* _make_cancelled_error(): new reference, CancelledError(msg), or
 * CancelledError() without a message (asyncio's gather() calls it on a
 * cancelled child). */
static PyObject *
rfut_make_cancelled_error(cd_rfut_t *f, PyObject *unused)
{
    PyObject *type = f->st->asyncio_CancelledError;
    return f->cancel_msg != NULL && f->cancel_msg != Py_None
               ? PyObject_CallOneArg(type, f->cancel_msg)
               : PyObject_CallNoArgs(type);
}

/* Raises that error, as a cancelled Future's result() does. */
static PyObject *
rfut_cancelled_error(cd_rfut_t *f)
{
    PyObject *exc = rfut_make_cancelled_error(f, NULL);
    if (exc != NULL) {
        PyErr_SetObject(f->st->asyncio_CancelledError, exc);
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
    return rfut_get_loop(f, NULL);
}

/* add_done_callback(fn, *, context=None). */
/* Whether the 1-tuple kwnames is ("context",).  The Task passes the
 * same tuple every time: known by identity after the first. */
static int
kwnames_are_context(cd_state *st, PyObject *kwnames)
{
    if (kwnames == st->kwnames_context_seen) {
        return 1;
    }
    if (!cd_cycle_type_is(PyTuple_GET_ITEM(kwnames, 0), st->s_context)) {
        return 0;
    }
    Py_XSETREF(st->kwnames_context_seen, Py_NewRef(kwnames));
    return 1;
}

static PyObject *
rfut_add_done_callback(cd_rfut_t *f, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    PyObject *ctx = NULL;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 && !kwnames_are_context(f->st, kwnames))) {
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

/* rfut_more_remove for a list of two or more, as CPython's
 * _asyncio.Future does it (future_remove_done_callback): the entries not
 * equal to fn, collected while the comparisons may change the list, then
 * replace the whole list unless as many are kept as it now holds.  How
 * many that counts as removed, or -1 on error. */
static Py_ssize_t
rfut_more_rebuild(cd_rfut_t *f, PyObject *fn, Py_ssize_t len)
{
    Py_ssize_t removed = -1;
    PyObject *kept = PyList_New(0);
    if (kept == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; f->more != NULL && i < PyList_GET_SIZE(f->more);
         i++) {
        PyObject *t = Py_NewRef(PyList_GET_ITEM(f->more, i));
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(t, 0), fn, Py_EQ);
        if (eq == 0) {
            eq = PyList_Append(kept, t);
        }
        Py_DECREF(t);
        if (eq < 0) {
            goto done;
        }
    }
    Py_ssize_t nkept = PyList_GET_SIZE(kept);
    if (nkept == 0 || f->more == NULL) {
        Py_CLEAR(f->more);
        removed = len;
        goto done;
    }
    Py_ssize_t now = PyList_GET_SIZE(f->more);
    if (nkept != now && PyList_SetSlice(f->more, 0, now, kept) < 0) {
        goto done;
    }
    removed = now - nkept;
done:
    Py_DECREF(kept);
    return removed;
}

/* Removes the entries of f->more equal to fn, as CPython's Future: a
 * list of one that matches is dropped whole (with whatever its comparison
 * added).  How many that counts as removed, or -1 on error. */
static Py_ssize_t
rfut_more_remove(cd_rfut_t *f, PyObject *fn)
{
    if (f->more == NULL) {
        return 0;
    }
    Py_ssize_t len = PyList_GET_SIZE(f->more);
    if (len == 0) {
        Py_CLEAR(f->more);
        return 0;
    }
    if (len > 1) {
        return rfut_more_rebuild(f, fn, len);
    }
    PyObject *t = Py_NewRef(PyList_GET_ITEM(f->more, 0));
    int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(t, 0), fn, Py_EQ);
    Py_DECREF(t);
    if (eq > 0) {
        Py_CLEAR(f->more);
    }
    return eq;
}

/* remove_done_callback(fn): how many were removed, counted as CPython's
 * _asyncio.Future counts them when the comparisons change the callbacks
 * (tests/apps/recvfut.py evil_remove_done_callback_keeps). */
static PyObject *
rfut_remove_done_callback(cd_rfut_t *f, PyObject *fn)
{
    Py_ssize_t first = 0;
    if (f->cb != NULL) {
        PyObject *cb = Py_NewRef(f->cb);
        int eq = PyObject_RichCompareBool(cb, fn, Py_EQ);
        Py_DECREF(cb);
        if (eq < 0) {
            return NULL;
        }
        if (eq) {
            Py_CLEAR(f->cb);
            Py_CLEAR(f->ctx);
            first = 1;
        }
    }
    Py_ssize_t more = rfut_more_remove(f, fn);
    return more < 0 ? NULL : PyLong_FromSsize_t(first + more);
}

/* Whether cb is the wake-up of a task that was asked to cancel (its
 * cancelling() is above 0): a Task's wake-up is a method of the task.
 * Errors are cleared: a cold path, which decides only whether concurrent
 * receive()s wait again (cd_rfut_cancelled_by_task). */
static int
rfut_wakes_cancelled_task(cd_state *st, PyObject *cb)
{
    PyObject *task = PyCFunction_Check(cb) ? PyCFunction_GET_SELF(cb)
                     : PyMethod_Check(cb)  ? PyMethod_GET_SELF(cb)
                                           : NULL;
    if (task == NULL ||
        !PyObject_TypeCheck(task, (PyTypeObject *)st->asyncio_Future)) {
        return 0;
    }
    Py_INCREF(task); /* The call may drop the callback that holds it. */
    PyObject *n = PyObject_CallMethod(task, "cancelling", NULL);
    int r = n != NULL && PyLong_Check(n) && PyLong_AsLong(n) > 0;
    Py_XDECREF(n);
    Py_DECREF(task);
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    return r;
}

/* Whether a task waiting on f is being cancelled, which is then why f is:
 * Task.cancel() counts the request before it cancels the future it waits
 * on. */
static int
rfut_cancelled_by_task(cd_rfut_t *f)
{
    if (f->cb != NULL && rfut_wakes_cancelled_task(f->st, f->cb)) {
        return 1;
    }
    for (Py_ssize_t i = 0; f->more != NULL && i < PyList_GET_SIZE(f->more);
         i++) {
        PyObject *t = PyList_GET_ITEM(f->more, i);
        if (rfut_wakes_cancelled_task(f->st, PyTuple_GET_ITEM(t, 0))) {
            return 1;
        }
    }
    return 0;
}

int
cd_rfut_cancelled_by_task(PyObject *o)
{
    return ((cd_rfut_t *)o)->by_task;
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
    f->by_task = rfut_cancelled_by_task(f);
    if (f->state != CD_RF_PENDING) {
        Py_RETURN_FALSE; /* cancelling() ran code that completed it */
    }
    f->state = CD_RF_CANCELLED;
    Py_XSETREF(f->cancel_msg, Py_NewRef(msg));
    if (rfut_schedule(f) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* _cancel_message, which asyncio's gather(return_exceptions=True) reads
 * from a cancelled child. */
static PyObject *
rfut_get_cancel_message(cd_rfut_t *f, void *closure)
{
    return Py_NewRef(f->cancel_msg != NULL ? f->cancel_msg : Py_None);
}

static int
rfut_set_cancel_message(cd_rfut_t *f, PyObject *v, void *closure)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    Py_XSETREF(f->cancel_msg, Py_NewRef(v));
    return 0;
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

/* __await__ and __iter__: new reference, a waiter (waiter.c) that waits
 * on f as a Future's own iterator does: yields f while it is pending,
 * then returns its result (or raises CancelledError). */
static PyObject *
rfut_await(cd_rfut_t *f)
{
    return cd_waiter_pending(f->st, Py_NewRef((PyObject *)f));
}

static PyObject *rfut_bound(cd_rfut_t *f, int i);

/* The names a Task reads at every wait: the flag, and the bound methods
 * kept (no method object made and freed per message) while no attribute
 * was set on it (one set hides a method, as on any object); any other
 * name is looked up as usual.  asyncio's names are the interned ones. */
static PyObject *
rfut_getattro(cd_rfut_t *f, PyObject *name)
{
    cd_state *st = f->st;
    if (name == st->s_asyncio_future_blocking) {
        return rfut_get_blocking(f, NULL);
    }
    if (f->dict != NULL) {
        return PyObject_GenericGetAttr((PyObject *)f, name);
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
    if (name == f->st->s_asyncio_future_blocking) {
        return rfut_set_blocking(f, v, NULL);
    }
    return PyObject_GenericSetAttr((PyObject *)f, name, v);
}

/* The char * attribute lookup, which PyObject_CallMethod(fut, "result")
 * uses (a Task's wake-up): result is the bound method kept while no
 * attribute was set; any other name is looked up as usual. */
static PyObject *
rfut_getattr(cd_rfut_t *f, char *name)
{
    if (f->dict == NULL && strcmp(name, "result") == 0) {
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
    {"_make_cancelled_error", (PyCFunction)rfut_make_cancelled_error,
     METH_NOARGS, NULL},
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
    {"_cancel_message", (getter)rfut_get_cancel_message,
     (setter)rfut_set_cancel_message, NULL, NULL},
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
    {Py_am_await, rfut_await},
    {Py_tp_iter, rfut_await},
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
cd_rfut_type_init(PyObject *module, cd_state *st)
{
    st->RecvFuture_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &rfut_spec, NULL);
    return st->RecvFuture_type == NULL ? -1 : 0;
}
