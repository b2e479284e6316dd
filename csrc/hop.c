/* Thread hops: waking the loop from other threads, and completing the
 * asyncio future of run_in_executor() from the executor's thread.
 *
 * asyncio wakes its loop with a byte on a self-pipe that the loop reads
 * back in Python, and chains an executor's concurrent future to an
 * asyncio future with wrap_future(): the worker thread runs
 * call_soon_threadsafe(_set_state, ...), which writes that byte.  Here
 * the wake-up is an eventfd polled on the loop's own uv_loop_t (a write,
 * coalesced, read in C: cd_loop_wake in loop.c), and a finished concurrent
 * future queues its hop in C: the loop's select() copies the state into
 * the asyncio future right after uv_run returns, with the semantics of
 * asyncio.futures._chain_future: cancelling the asyncio future cancels
 * the concurrent one, a result for a closed loop is dropped, and
 * concurrent.futures' CancelledError/InvalidStateError are converted.
 *
 * The GIL guards the queue and the closed flag: a concurrent future runs
 * its done callbacks in Python, and close() holds the GIL too, so
 * cd_loop_wake never races with the close of its descriptor.
 *
 * A concurrent future of exactly concurrent.futures.Future (what every
 * ThreadPoolExecutor returns) is read without its Condition: its public
 * methods take the lock only to read _state, _result and _exception
 * consistently, and C code holding the GIL runs between two bytecodes of
 * any other thread, so the fields it reads are as consistent as under the
 * lock (the worker sets them before it runs the done callbacks, which is
 * when a hop is queued).  add_done_callback() is done the same way: the
 * callback is appended while the future is not done, else run at once.
 * Other classes (and free-threaded builds) go through their methods. */
#include "internal.h"

typedef enum {
    CD_HOP_WAITING, /* the executor has not finished the work */
    CD_HOP_QUEUED,  /* finished: in loop->hops_head, not copied yet */
    CD_HOP_DONE,    /* state copied into dest (or dropped) */
} cd_hop_state_t;

struct cd_hop_s {
    PyObject_HEAD
    cd_loop_t *loop;  /* strong: the loop that completes dest */
    PyObject *dest;   /* strong: the asyncio future the caller awaits */
    PyObject *source; /* strong: the concurrent future; NULL once done */
    cd_hop_t *next;   /* borrowed: next in loop->hops_head's chain */
    cd_hop_state_t state;
};

static void
hop_set_state(cd_hop_t *hop, cd_hop_state_t to)
{
    assert((hop->state == CD_HOP_WAITING && to != CD_HOP_WAITING) ||
           (hop->state == CD_HOP_QUEUED && to == CD_HOP_DONE));
    hop->state = to;
}

/* Whether fut is a concurrent.futures.Future whose fields hop.c may read
 * (see the top of the file). */
static int
cf_plain(cd_state *st, PyObject *fut)
{
#ifdef Py_GIL_DISABLED
    (void)st;
    (void)fut;
    return 0;
#else
    return (PyObject *)Py_TYPE(fut) == st->cf_Future;
#endif
}

static int
cf_state_is(PyObject *state, PyObject *name)
{
    if (state == name) {
        return 1;
    }
    if (!PyUnicode_Check(state)) {
        return 0;
    }
    /* The states are interned literals: two different interned strings
     * are never equal, so no comparison is needed. */
    if (PyUnicode_CHECK_INTERNED(state) && PyUnicode_CHECK_INTERNED(name)) {
        return 0;
    }
    return PyUnicode_Compare(state, name) == 0;
}

static int
cf_state_cancelled(cd_state *st, PyObject *state)
{
    return cf_state_is(state, st->cf_CANCELLED) ||
           cf_state_is(state, st->cf_CANCELLED_AND_NOTIFIED);
}

void
cd_hop_loop_init(cd_loop_t *loop)
{
    loop->hops_head = loop->hops_tail = NULL;
}

PyObject *
cd_hop_wakeup(cd_loop_t *loop, PyObject *unused)
{
    /* asyncio's _write_to_self() is silent after close: so is this. */
    cd_loop_wake(loop);
    Py_RETURN_NONE;
}

/* The concurrent future finished (any thread, GIL held): queue the hop
 * for the loop's thread and wake it. */
static int
hop_on_source_done(cd_hop_t *hop)
{
    cd_loop_t *loop = hop->loop;
    if (hop->state != CD_HOP_WAITING) {
        return 0;
    }
    if (loop->closed) {
        /* _chain_future: "if dest_loop.is_closed(): return". */
        hop_set_state(hop, CD_HOP_DONE);
        return 0;
    }
    hop_set_state(hop, CD_HOP_QUEUED);
    Py_INCREF(hop);
    hop->next = NULL;
    if (loop->hops_tail != NULL) {
        loop->hops_tail->next = hop;
    }
    else {
        loop->hops_head = hop;
    }
    loop->hops_tail = hop;
    cd_loop_wake(loop);
    return 0;
}

/* The asyncio future is done (loop thread): if it was cancelled, cancel
 * the executor's work too (it only stops work not yet started). */
static int
hop_on_dest_done(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    if (hop->source == NULL) {
        return 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(hop->dest, st->s_cancelled);
    if (r == NULL) {
        return -1;
    }
    int cancelled = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (cancelled <= 0) {
        return cancelled;
    }
    r = PyObject_CallMethodNoArgs(hop->source, st->s_cancel);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Called with one future: dest (asyncio) or source (concurrent). */
static PyObject *
hop_call(cd_hop_t *hop, PyObject *args, PyObject *kw)
{
    PyObject *fut;
    if ((kw != NULL && PyDict_GET_SIZE(kw) != 0) ||
        !PyArg_UnpackTuple(args, "hop", 1, 1, &fut)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "hop(future)");
        }
        return NULL;
    }
    int r;
    if (fut == hop->dest) {
        r = hop_on_dest_done(hop);
    }
    else if (hop->source != NULL && fut == hop->source) {
        r = hop_on_source_done(hop);
    }
    else {
        PyErr_SetString(PyExc_ValueError, "hop called with a foreign future");
        return NULL;
    }
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Returns 1 if fut.<name>() is true, 0 if false, -1 on error. */
static int
call_test(PyObject *fut, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(fut, name);
    if (r == NULL) {
        return -1;
    }
    int v = PyObject_IsTrue(r);
    Py_DECREF(r);
    return v;
}

/* dest.set_exception(_convert_future_exc(exc)) or dest.set_result(res)
 * (exc None); steals neither. */
static int
hop_set_outcome(cd_hop_t *hop, PyObject *exc, PyObject *res)
{
    cd_state *st = hop->loop->st;
    PyObject *r;
    if (exc != Py_None) {
        PyObject *conv = PyObject_CallOneArg(st->convert_future_exc, exc);
        if (conv == NULL) {
            return -1;
        }
        r = PyObject_CallMethodOneArg(hop->dest, st->s_set_exception, conv);
        Py_DECREF(conv);
    }
    else {
        r = PyObject_CallMethodOneArg(hop->dest, st->s_set_result, res);
    }
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* _copy_future_state from a done concurrent.futures.Future (cf_plain)
 * through its fields; 1 if it was not done after all (then the methods
 * decide). */
static int
hop_copy_plain(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    PyObject *src = hop->source, *exc = NULL, *res = NULL;
    int rc = -1;
    PyObject *state = PyObject_GetAttr(src, st->s__state);
    if (state == NULL) {
        return -1;
    }
    if (cf_state_cancelled(st, state)) {
        PyObject *r = PyObject_CallMethodNoArgs(hop->dest, st->s_cancel);
        Py_XDECREF(r);
        rc = r == NULL ? -1 : 0;
    }
    else if (!cf_state_is(state, st->cf_FINISHED)) {
        rc = 1;
    }
    else if ((exc = PyObject_GetAttr(src, st->s__exception)) != NULL &&
             (exc != Py_None ||
              (res = PyObject_GetAttr(src, st->s__result)) != NULL)) {
        rc = hop_set_outcome(hop, exc, res);
    }
    Py_DECREF(state);
    Py_XDECREF(exc);
    Py_XDECREF(res);
    return rc;
}

/* asyncio.futures._copy_future_state(source, dest). */
static int
hop_copy_state(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    PyObject *exc = NULL, *res = NULL, *r = NULL;
    int rc = -1;
    int v = call_test(hop->dest, st->s_cancelled);
    if (v != 0) {
        return v < 0 ? -1 : 0;
    }
    /* Leave dest's callbacks first: we complete dest ourselves, and the
     * hop's callback there only acts on a cancellation (hop_on_dest_done),
     * so scheduling it would run a no-op per hop. */
    r = PyObject_CallMethodOneArg(hop->dest, st->s_remove_done_callback,
                                  (PyObject *)hop);
    if (r == NULL) {
        return -1;
    }
    Py_CLEAR(r);
    if (cf_plain(st, hop->source) && (v = hop_copy_plain(hop)) <= 0) {
        return v;
    }
    v = call_test(hop->source, st->s_cancelled);
    if (v < 0) {
        goto done;
    }
    if (v > 0) {
        r = PyObject_CallMethodNoArgs(hop->dest, st->s_cancel);
        rc = r == NULL ? -1 : 0;
        goto done;
    }
    exc = PyObject_CallMethodNoArgs(hop->source, st->s_exception);
    if (exc == NULL) {
        goto done;
    }
    if (exc == Py_None) {
        res = PyObject_CallMethodNoArgs(hop->source, st->s_result);
        if (res == NULL) {
            goto done;
        }
    }
    rc = hop_set_outcome(hop, exc, res);
done:
    Py_XDECREF(exc);
    Py_XDECREF(res);
    Py_XDECREF(r);
    return rc;
}

/* As asyncio reports an exception raised by a callback. */
static void
hop_report(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *ctx = NULL, *r = NULL;
    if (hop->loop->aio_loop != NULL) {
        ctx = Py_BuildValue(
            "{OsOOOO}", st->s_message,
            "Exception in callback completing a run_in_executor() future",
            st->s_exception, exc, st->s_future, hop->dest);
    }
    if (ctx != NULL) {
        r = PyObject_CallMethodOneArg(hop->loop->aio_loop,
                                      st->s_call_exception_handler, ctx);
    }
    if (r == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetRaisedException(Py_NewRef(exc));
        }
        PyErr_WriteUnraisable(hop->dest);
    }
    Py_XDECREF(r);
    Py_XDECREF(ctx);
    Py_XDECREF(exc);
}

void
cd_hop_drain(cd_loop_t *loop)
{
    while (loop->hops_head != NULL) {
        cd_hop_t *hop = loop->hops_head;
        loop->hops_head = hop->next;
        if (loop->hops_head == NULL) {
            loop->hops_tail = NULL;
        }
        hop->next = NULL;
        hop_set_state(hop, CD_HOP_DONE);
        if (hop_copy_state(hop) < 0) {
            hop_report(hop);
        }
        /* The concurrent future keeps its callbacks (this hop) after it
         * is done: drop the reference back to it, so no cycle is left. */
        Py_CLEAR(hop->source);
        Py_DECREF(hop);
    }
}

void
cd_hop_loop_close(cd_loop_t *loop)
{
    while (loop->hops_head != NULL) {
        cd_hop_t *hop = loop->hops_head;
        loop->hops_head = hop->next;
        hop->next = NULL;
        hop_set_state(hop, CD_HOP_DONE);
        Py_DECREF(hop);
    }
    loop->hops_tail = NULL;
}

int
cd_hop_loop_traverse(cd_loop_t *loop, visitproc visit, void *arg)
{
    for (cd_hop_t *hop = loop->hops_head; hop != NULL; hop = hop->next) {
        Py_VISIT((PyObject *)hop);
    }
    return 0;
}

/* source.add_done_callback(hop). */
static int
hop_watch_source(cd_hop_t *hop, PyObject *source)
{
    cd_state *st = hop->loop->st;
    if (!cf_plain(st, source)) {
        PyObject *r = PyObject_CallMethodOneArg(
            source, st->s_add_done_callback, (PyObject *)hop);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *state = PyObject_GetAttr(source, st->s__state);
    if (state == NULL) {
        return -1;
    }
    int done =
        cf_state_cancelled(st, state) || cf_state_is(state, st->cf_FINISHED);
    Py_DECREF(state);
    if (done) {
        return hop_on_source_done(hop);
    }
    PyObject *cbs = PyObject_GetAttr(source, st->s__done_callbacks);
    if (cbs == NULL) {
        return -1;
    }
    int r = PyList_Check(cbs) ? PyList_Append(cbs, (PyObject *)hop) : -1;
    if (r < 0 && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "_done_callbacks is not a list");
    }
    Py_DECREF(cbs);
    return r;
}

PyObject *
cd_hop_wrap(cd_loop_t *loop, PyObject *source)
{
    cd_state *st = loop->st;
    PyObject *dest = NULL, *r = NULL;
    cd_hop_t *hop = NULL;
    if (loop->closed || loop->aio_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is closed");
        return NULL;
    }
    dest = cd_loopmeth_future_new(st, loop->aio_loop);
    if (dest == NULL) {
        goto fail;
    }
    hop = PyObject_GC_New(cd_hop_t, st->Hop_type);
    if (hop == NULL) {
        goto fail;
    }
    hop->loop = (cd_loop_t *)Py_NewRef((PyObject *)loop);
    hop->dest = Py_NewRef(dest);
    hop->source = Py_NewRef(source);
    hop->next = NULL;
    hop->state = CD_HOP_WAITING;
    PyObject_GC_Track(hop);
    /* Same order as _chain_future: destination first. */
    r = PyObject_CallMethodOneArg(dest, st->s_add_done_callback,
                                  (PyObject *)hop);
    if (r == NULL) {
        goto fail;
    }
    Py_DECREF(r);
    if (hop_watch_source(hop, source) < 0) {
        goto fail;
    }
    Py_DECREF(hop);
    return dest;
fail:
    Py_XDECREF(hop);
    Py_XDECREF(dest);
    return NULL;
}

static int
hop_traverse(cd_hop_t *hop, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(hop));
    Py_VISIT((PyObject *)hop->loop);
    Py_VISIT(hop->dest);
    Py_VISIT(hop->source);
    return 0;
}

static int
hop_clear(cd_hop_t *hop)
{
    Py_CLEAR(hop->dest);
    Py_CLEAR(hop->source);
    /* hop->loop stays: a queued hop is reachable from it, and the loop
     * is what a late source callback reads (its closed flag). */
    return 0;
}

static void
hop_dealloc(cd_hop_t *hop)
{
    PyTypeObject *tp = Py_TYPE(hop);
    PyObject_GC_UnTrack(hop);
    hop_clear(hop);
    Py_CLEAR(hop->loop);
    tp->tp_free(hop);
    Py_DECREF(tp);
}

static PyType_Slot hop_slots[] = {
    {Py_tp_dealloc, hop_dealloc},
    {Py_tp_traverse, hop_traverse},
    {Py_tp_clear, hop_clear},
    {Py_tp_call, hop_call},
    {Py_tp_doc, "Completes a run_in_executor() future on its loop."},
    {0, NULL},
};

static PyType_Spec hop_spec = {
    .name = "cdaphne._cdaphne._Hop",
    .basicsize = sizeof(cd_hop_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = hop_slots,
};

int
cd_hop_type_init(PyObject *module, cd_state *st)
{
    PyObject *futures = PyImport_ImportModule("asyncio.futures");
    if (futures == NULL) {
        return -1;
    }
    st->convert_future_exc =
        PyObject_GetAttrString(futures, "_convert_future_exc");
    Py_DECREF(futures);
    if (st->convert_future_exc == NULL) {
        return -1;
    }
    PyObject *cf = PyImport_ImportModule("concurrent.futures._base");
    if (cf == NULL) {
        return -1;
    }
    st->cf_Future = PyObject_GetAttrString(cf, "Future");
    st->cf_FINISHED = PyObject_GetAttrString(cf, "FINISHED");
    st->cf_CANCELLED = PyObject_GetAttrString(cf, "CANCELLED");
    st->cf_CANCELLED_AND_NOTIFIED =
        PyObject_GetAttrString(cf, "CANCELLED_AND_NOTIFIED");
    Py_DECREF(cf);
    if (!st->cf_Future || !st->cf_FINISHED || !st->cf_CANCELLED ||
        !st->cf_CANCELLED_AND_NOTIFIED) {
        return -1;
    }
    st->Hop_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &hop_spec, NULL);
    return st->Hop_type == NULL ? -1 : 0;
}
