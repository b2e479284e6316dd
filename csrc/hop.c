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
 * Other classes (and free-threaded builds) go through their methods.
 *
 * A ThreadPoolExecutor itself (exactly that class, with its own submit)
 * gets no concurrent future at all on CPython 3.11 to 3.13: run_in_executor
 * does what its submit() does -- the same locks in the same order, the same
 * checks, _work_queue.put(), _adjust_thread_count() -- with a C work item
 * (_HopItem) in place of _WorkItem and its Future.  The executor's own
 * worker thread calls its run(), which calls fn(*args) as _WorkItem.run
 * does and queues the outcome here like a finished concurrent future.
 * The item is its own `.future` for what the executor does to queued work
 * (shutdown(cancel_futures=True) cancels it, a failed initializer sets
 * BrokenThreadPool on it).  Cancelling the asyncio future before the
 * worker starts the item skips the call, as cancelling the concurrent
 * future does.  One visible difference: the traceback of what fn raised
 * starts at fn (run() is C, _WorkItem.run's frame in thread.py is not
 * there).  Each version's concurrent/futures/thread.py was read for this;
 * 3.14 changed how workers run items, so it keeps the chain.
 *
 * _adjust_thread_count() is done in C too while the executor's method,
 * threading.Semaphore.acquire and the semaphore's Condition and lock are
 * the originals: its acquire(timeout=0) of the idle count, and nothing
 * more when that count is 0 and the pool is full.  At 0, acquire() itself
 * makes a Condition.wait(0) (a new lock, released and taken again) only to
 * return False: with the GIL held and the condition's lock free, the C
 * code gives what the method gives when no other thread runs in between
 * (item_adjust).  A thread to start, or the lock held by another thread,
 * calls the method. */
#include "internal.h"

typedef enum {
    CD_HOP_WAITING, /* the executor has not finished (an item: not begun) */
    CD_HOP_RUNNING, /* an item only: its worker is calling fn */
    CD_HOP_QUEUED,  /* finished: in loop->hops_head, not copied yet */
    CD_HOP_DONE,    /* state copied into dest (or dropped) */
} cd_hop_state_t;

/* How a work item ended (what its concurrent future would hold). */
typedef enum {
    CD_HOP_NONE,      /* not yet */
    CD_HOP_RESULT,    /* outcome: what fn returned */
    CD_HOP_EXCEPTION, /* outcome: what fn raised, or the executor set */
    CD_HOP_CANCELLED, /* cancelled before it began */
} cd_hop_outcome_t;

struct cd_hop_s {
    PyObject_HEAD
    cd_loop_t *loop;  /* strong: the loop that completes dest */
    PyObject *dest;   /* strong: the asyncio future the caller awaits */
    PyObject *source; /* strong: the concurrent future; NULL once done,
                         and always for an item */
    cd_hop_t *next;   /* borrowed: next in loop->hops_head's chain */
    cd_hop_state_t state;
    /* Work items (_HopItem, hop_is_item) only. */
    cd_hop_outcome_t outcome; /* set once, with state leaving WAITING or
                                 RUNNING (DONE on a cancelled dest) */
    PyObject *fn;             /* strong: what run() calls; NULL once it
                                 began or will never begin */
    PyObject *args;           /* strong: fn's arguments (tuple), likewise */
    PyObject *value;          /* strong: the result or exception; NULL
                                 until then and once copied or dropped */
};

/* 1 for a work item (its type says it), 0 for a hop of a concurrent
 * future.  hop->loop is set while either is in use (cleared only by
 * tp_clear). */
static inline int
hop_is_item(cd_hop_t *hop)
{
    return Py_TYPE(hop) == hop->loop->st->HopItem_type;
}

static void
hop_set_state(cd_hop_t *hop, cd_hop_state_t to)
{
    assert((hop->state == CD_HOP_WAITING && to != CD_HOP_WAITING &&
            (hop_is_item(hop) || to != CD_HOP_RUNNING)) ||
           (hop->state == CD_HOP_RUNNING && to > CD_HOP_RUNNING) ||
           (hop->state == CD_HOP_QUEUED && to == CD_HOP_DONE));
    if (to == CD_HOP_DONE) {
        hop->loop->hops_out--;
    }
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

/* The work finished (any thread, GIL held): queue the hop for the loop's
 * thread and wake it. */
static void
hop_enqueue(cd_hop_t *hop)
{
    cd_loop_t *loop = hop->loop;
    if (loop->closed) {
        /* _chain_future: "if dest_loop.is_closed(): return". */
        hop_set_state(hop, CD_HOP_DONE);
        Py_CLEAR(hop->value);
        return;
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
}

/* The concurrent future finished. */
static int
hop_on_source_done(cd_hop_t *hop)
{
    if (hop->state == CD_HOP_WAITING) {
        hop_enqueue(hop);
    }
    return 0;
}

/* The asyncio future is done (loop thread): if it was cancelled, cancel
 * the executor's work too (it only stops work not yet started). */
static int
hop_on_dest_done(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    int item = hop_is_item(hop);
    if (item ? hop->state != CD_HOP_WAITING : hop->source == NULL) {
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
    if (item) {
        /* The worker will skip it; dest is cancelled already. */
        hop->outcome = CD_HOP_CANCELLED;
        hop_set_state(hop, CD_HOP_DONE);
        Py_CLEAR(hop->fn);
        Py_CLEAR(hop->args);
        return 0;
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

/* _copy_future_state from a finished work item: as hop_copy_state, with
 * the outcome the item's concurrent future would have held. */
static int
item_copy_state(cd_hop_t *hop)
{
    cd_state *st = hop->loop->st;
    if (hop->dest == NULL) {
        return 0; /* Cleared by the GC: nobody can await it. */
    }
    int v = call_test(hop->dest, st->s_cancelled);
    if (v != 0) {
        return v < 0 ? -1 : 0;
    }
    PyObject *r = PyObject_CallMethodOneArg(
        hop->dest, st->s_remove_done_callback, (PyObject *)hop);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    if (hop->outcome == CD_HOP_CANCELLED) {
        r = PyObject_CallMethodNoArgs(hop->dest, st->s_cancel);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    /* An exception set to None reads as a result of None, as there. */
    PyObject *value = hop->value ? hop->value : Py_None;
    return hop_set_outcome(hop,
                           hop->outcome == CD_HOP_EXCEPTION ? value : Py_None,
                           hop->outcome == CD_HOP_RESULT ? value : Py_None);
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
    if (loop->hops_head != NULL) {
        cd_policy_hops_back(loop);
    }
    while (loop->hops_head != NULL) {
        cd_hop_t *hop = loop->hops_head;
        loop->hops_head = hop->next;
        if (loop->hops_head == NULL) {
            loop->hops_tail = NULL;
        }
        hop->next = NULL;
        hop_set_state(hop, CD_HOP_DONE);
        if ((hop_is_item(hop) ? item_copy_state(hop) : hop_copy_state(hop)) <
            0) {
            hop_report(hop);
        }
        /* The concurrent future keeps its callbacks (this hop) after it
         * is done: drop the reference back to it, so no cycle is left. */
        Py_CLEAR(hop->source);
        Py_CLEAR(hop->value);
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
    hop->outcome = CD_HOP_NONE;
    hop->fn = hop->args = hop->value = NULL;
    loop->hops_out++;
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

/* ---- Work items: ThreadPoolExecutor.submit() without its Future ---- */

/* run(): _WorkItem.run on the executor's worker thread. */
static PyObject *
item_run(cd_hop_t *hop, PyObject *unused)
{
    if (hop->state != CD_HOP_WAITING || hop->fn == NULL) {
        /* Cancelled: set_running_or_notify_cancel() would be false. */
        Py_RETURN_NONE;
    }
    hop_set_state(hop, CD_HOP_RUNNING);
    PyObject *fn = hop->fn, *args = hop->args;
    hop->fn = hop->args = NULL;
    PyObject *value = PyObject_Call(fn, args, NULL);
    cd_hop_outcome_t outcome = CD_HOP_RESULT;
    if (value == NULL) {
        /* "except BaseException as exc": everything, SystemExit too. */
        outcome = CD_HOP_EXCEPTION;
        value = PyErr_GetRaisedException();
    }
    PyObject *res = Py_None;
    if (hop->state == CD_HOP_RUNNING) {
        hop->outcome = outcome;
        hop->value = value;
        hop_enqueue(hop);
    }
    else {
        /* set_exception() came first: set_result() would raise. */
        Py_DECREF(value);
        PyErr_SetString(hop->loop->st->cf_InvalidStateError,
                        "FINISHED: the work item's future is done");
        res = NULL;
    }
    Py_DECREF(fn);
    Py_DECREF(args);
    return Py_XNewRef(res);
}

/* future.cancel(): what ThreadPoolExecutor.shutdown(cancel_futures=True)
 * does to queued work; as concurrent.futures.Future.cancel(). */
static PyObject *
item_cancel(cd_hop_t *hop, PyObject *unused)
{
    if (hop->state == CD_HOP_WAITING) {
        hop->outcome = CD_HOP_CANCELLED;
        Py_CLEAR(hop->fn);
        Py_CLEAR(hop->args);
        hop_enqueue(hop); /* The loop cancels dest. */
        Py_RETURN_TRUE;
    }
    /* Running or finished: false; cancelled already: true. */
    return PyBool_FromLong(hop->outcome == CD_HOP_CANCELLED);
}

/* future.set_exception(exc): what a failed initializer does to queued
 * work (BrokenThreadPool); as concurrent.futures.Future.set_exception(). */
static PyObject *
item_set_exception(cd_hop_t *hop, PyObject *exc)
{
    if (hop->outcome != CD_HOP_NONE || hop->state > CD_HOP_RUNNING) {
        PyErr_Format(hop->loop->st->cf_InvalidStateError, "%s: %R",
                     hop->outcome == CD_HOP_CANCELLED ? "CANCELLED"
                                                      : "FINISHED",
                     (PyObject *)hop);
        return NULL;
    }
    hop->outcome = CD_HOP_EXCEPTION;
    hop->value = Py_NewRef(exc);
    Py_CLEAR(hop->fn);
    Py_CLEAR(hop->args);
    hop_enqueue(hop);
    Py_RETURN_NONE;
}

/* future: the item stands for its own concurrent future. */
static PyObject *
item_get_future(cd_hop_t *hop, void *closure)
{
    return Py_NewRef((PyObject *)hop);
}

#if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX < 0x030E0000
/* New reference: attribute name of owner if it is the function the module
 * of globals defined as qualname (not a patch), else NULL (none set). */
static PyObject *
item_own_function(PyObject *owner, const char *name, PyObject *globals,
                  const char *qualname)
{
    PyObject *f = PyObject_GetAttrString(owner, name), *q = NULL;
    if (f != NULL && PyFunction_Check(f) &&
        PyFunction_GET_GLOBALS(f) == globals) {
        q = PyObject_GetAttrString(PyFunction_GET_CODE(f), "co_qualname");
    }
    if (q == NULL || !PyUnicode_Check(q) ||
        PyUnicode_CompareWithASCIIString(q, qualname) != 0) {
        Py_CLEAR(f);
    }
    Py_XDECREF(q);
    PyErr_Clear();
    return f;
}

/* Finds what item_adjust() reads: thread.py's own _adjust_thread_count,
 * and threading's Semaphore (with its own acquire), Condition and the
 * lock type.  All or nothing: without them _adjust_thread_count() is
 * called. */
static void
item_resolve_adjust(cd_state *st, PyObject *tpe, PyObject *globals)
{
    PyObject *threading = PyDict_GetItemString(globals, "threading");
    PyObject *tg = threading && PyModule_Check(threading)
                       ? PyModule_GetDict(threading)
                       : NULL;
    PyObject *sem = tg ? PyDict_GetItemString(tg, "Semaphore") : NULL;
    PyObject *cond = tg ? PyDict_GetItemString(tg, "Condition") : NULL;
    PyObject *thread = PyImport_ImportModule("_thread");
    PyObject *lock =
        thread ? PyObject_GetAttrString(thread, "LockType") : NULL;
    PyObject *adjust =
        item_own_function(tpe, "_adjust_thread_count", globals,
                          "ThreadPoolExecutor._adjust_thread_count");
    PyObject *acquire =
        sem ? item_own_function(sem, "acquire", tg, "Semaphore.acquire")
            : NULL;
    if (adjust != NULL && acquire != NULL && PyType_Check(sem) &&
        cond != NULL && PyType_Check(cond) && lock != NULL &&
        PyType_Check(lock)) {
        st->tpe_adjust = Py_NewRef(adjust);
        st->sem_type = Py_NewRef(sem);
        st->sem_acquire = Py_NewRef(acquire);
        st->cond_type = Py_NewRef(cond);
        st->lock_type = Py_NewRef(lock);
    }
    PyErr_Clear();
    Py_XDECREF(acquire);
    Py_XDECREF(adjust);
    Py_XDECREF(lock);
    Py_XDECREF(thread);
}
#endif

#if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX < 0x030E0000
/* Finds concurrent.futures.thread's ThreadPoolExecutor and its own submit
 * once that module is imported (no executor of the class exists before):
 * 1 found, 0 not yet. */
static int
item_resolve(cd_state *st)
{
    PyObject *name = PyUnicode_FromString("concurrent.futures.thread");
    PyObject *mod = name ? PyImport_GetModule(name) : NULL;
    PyObject *tpe = NULL, *submit = NULL, *qualname = NULL;
    int rc = 0;
    if (mod == NULL) {
        goto done;
    }
    PyObject *globals = PyModule_GetDict(mod);
    tpe = PyObject_GetAttrString(mod, "ThreadPoolExecutor");
    submit = tpe ? PyObject_GetAttr(tpe, st->s_submit) : NULL;
    if (globals == NULL || submit == NULL || !PyType_Check(tpe)) {
        goto done;
    }
    /* The function thread.py defines, not a patch made before this first
     * look: its globals are the module's, its code is that method's. */
    if (PyFunction_Check(submit) &&
        PyFunction_GET_GLOBALS(submit) == globals) {
        qualname =
            PyObject_GetAttrString(PyFunction_GET_CODE(submit), "co_qualname");
    }
    st->tpe_type = Py_NewRef(tpe);
    st->tpe_globals = Py_NewRef(globals);
    if (qualname != NULL && PyUnicode_Check(qualname) &&
        PyUnicode_CompareWithASCIIString(qualname,
                                         "ThreadPoolExecutor.submit") == 0) {
        st->tpe_submit = Py_NewRef(submit);
        item_resolve_adjust(st, tpe, globals);
    }
    rc = 1;
done:
    /* Whatever failed, submit() itself will tell. */
    PyErr_Clear();
    Py_XDECREF(qualname);
    Py_XDECREF(submit);
    Py_XDECREF(tpe);
    Py_XDECREF(mod);
    Py_XDECREF(name);
    return rc;
}
#endif

#if !defined(Py_GIL_DISABLED) && PY_VERSION_HEX < 0x030E0000
/* 1 if obj.name is want, the function of obj's class: no patch of the
 * class, no instance attribute; else 0 (errors cleared: the method's own
 * lookup raises them again).  Read from the dicts, without the bound
 * method getattr would make. */
static int
item_is_own(PyObject *obj, PyObject *name, PyObject *want)
{
    if (cd_loopmeth_lookup(Py_TYPE(obj), name) != want) {
        PyErr_Clear();
        return 0;
    }
    int plain = 1;
    if (Py_TYPE(obj)->tp_dictoffset != 0) {
        PyObject *d = PyObject_GenericGetDict(obj, NULL);
        int shadowed = d != NULL ? PyDict_Contains(d, name) : -1;
        Py_XDECREF(d);
        if (shadowed < 0) {
            PyErr_Clear();
        }
        plain = shadowed == 0;
    }
    return plain;
}

/* Whether ex's pool has its max_workers threads ("len(self._threads) <
 * self._max_workers" false): 1 yes, 0 no or unreadable (cleared). */
static int
item_pool_full(cd_state *st, PyObject *ex)
{
    PyObject *threads = PyObject_GetAttr(ex, st->s__threads);
    PyObject *max = threads ? PyObject_GetAttr(ex, st->s__max_workers) : NULL;
    Py_ssize_t n = max ? PyObject_Size(threads) : -1;
    PyObject *num = n >= 0 ? PyLong_FromSsize_t(n) : NULL;
    int lt = num ? PyObject_RichCompareBool(num, max, Py_LT) : -1;
    if (lt < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(num);
    Py_XDECREF(max);
    Py_XDECREF(threads);
    return lt == 0;
}

/* The lock of ex's idle semaphore if ex, the semaphore, its condition and
 * lock are the originals (new reference), else NULL (cleared). */
static PyObject *
item_idle_lock(cd_state *st, PyObject *ex, PyObject **sem)
{
    PyObject *cond = NULL, *lock = NULL;
    *sem = NULL;
    if (st->tpe_adjust == NULL ||
        !item_is_own(ex, st->s__adjust_thread_count, st->tpe_adjust)) {
        return NULL;
    }
    *sem = PyObject_GetAttr(ex, st->s__idle_semaphore);
    if (*sem == NULL || (PyObject *)Py_TYPE(*sem) != st->sem_type ||
        !item_is_own(*sem, st->s_acquire, st->sem_acquire)) {
        goto done;
    }
    cond = PyObject_GetAttr(*sem, st->s__cond);
    if (cond == NULL || (PyObject *)Py_TYPE(cond) != st->cond_type) {
        goto done;
    }
    lock = PyObject_GetAttr(cond, st->s__lock);
    if (lock != NULL && (PyObject *)Py_TYPE(lock) != st->lock_type) {
        Py_CLEAR(lock);
    }
done:
    PyErr_Clear();
    Py_XDECREF(cond);
    if (lock == NULL) {
        Py_CLEAR(*sem);
    }
    return lock;
}

/* ThreadPoolExecutor._adjust_thread_count() after an item is queued, in
 * C while the executor, its idle semaphore and the semaphore's condition
 * and lock are the originals: "if self._idle_semaphore.acquire(timeout=0):
 * return" (the semaphore's count taken down by one), and, the count at 0,
 * nothing more while the pool has its max_workers threads.  The GIL is
 * held throughout and the condition's lock is free, so no other thread
 * acts in between: the outcome of one interleaving of the Python code,
 * without the Condition.wait(0) it makes at 0.  1 done, 0 not done (call
 * the method: a thread to start, a lock held, or something odd), -1 with
 * an exception. */
static int
item_adjust(cd_state *st, PyObject *ex)
{
    PyObject *sem = NULL, *lock = item_idle_lock(st, ex, &sem);
    PyObject *locked = NULL, *v = NULL, *dec = NULL;
    int rc = 0;
    if (lock == NULL) {
        return 0;
    }
    /* Held: another thread is inside "with self._cond" (release()); the
     * method waits for it. */
    locked = PyObject_CallMethodNoArgs(lock, st->s_locked);
    v = locked == Py_False ? PyObject_GetAttr(sem, st->s__value) : NULL;
    long n = v != NULL && PyLong_CheckExact(v) ? PyLong_AsLong(v) : -1;
    PyErr_Clear();
    if (n > 0) {
        rc = (dec = PyLong_FromLong(n - 1)) == NULL ||
                     PyObject_SetAttr(sem, st->s__value, dec) < 0
                 ? -1
                 : 1;
    }
    else if (n == 0) {
        rc = item_pool_full(st, ex);
    }
    st->hop_adjusts += rc > 0;
    Py_XDECREF(dec);
    Py_XDECREF(v);
    Py_XDECREF(locked);
    Py_DECREF(lock);
    Py_DECREF(sem);
    return rc;
}
#endif

/* Whether run_in_executor may queue an item on executor ex: 1 yes, 0 no
 * (the executor's own submit() runs), -1 with an exception. */
static int
item_plain_executor(cd_state *st, PyObject *ex)
{
#if defined(Py_GIL_DISABLED) || PY_VERSION_HEX >= 0x030E0000
    /* Free-threaded builds: the GIL guards a hop.  3.14: its workers call
     * run(ctx), and its submit differs; not checked. */
    (void)st;
    (void)ex;
    return 0;
#else
    if (st->tpe_type == NULL) {
        int r = item_resolve(st);
        if (r <= 0) {
            return r;
        }
    }
    if ((PyObject *)Py_TYPE(ex) != st->tpe_type || st->tpe_submit == NULL) {
        return 0;
    }
    /* ex.submit is the class's own function bound to ex: no patch of the
     * class (tracing libraries patch it), no instance attribute. */
    return item_is_own(ex, st->s_submit, st->tpe_submit);
#endif
}

static void
item_release(PyObject *lock, cd_state *st)
{
    /* Errors while one is pending: the first one wins. */
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallMethodNoArgs(lock, st->s_release);
    if (r == NULL && exc != NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    if (exc != NULL) {
        PyErr_SetRaisedException(exc);
    }
}

/* Returns 1 if the attribute name of obj (or, obj NULL, the thread
 * module's global) is true, 0 if false, -1 if unreadable (cleared). */
static int
item_flag(cd_state *st, PyObject *obj, PyObject *name)
{
    PyObject *v =
        obj ? PyObject_GetAttr(obj, name)
            : Py_XNewRef(PyDict_GetItemWithError(st->tpe_globals, name));
    int r = v ? PyObject_IsTrue(v) : -1;
    Py_XDECREF(v);
    if (r < 0) {
        PyErr_Clear();
    }
    return r;
}

/* The body of ThreadPoolExecutor.submit (3.11 to 3.13) with item in
 * place of _WorkItem: "with self._shutdown_lock, _global_shutdown_lock:"
 * the checks, _work_queue.put(item), _adjust_thread_count().  1 queued,
 * 0 nothing done (a check failed or an attribute is odd: submit() itself
 * raises its exact exception), -1 with an exception. */
static int
item_queue(cd_state *st, PyObject *ex, PyObject *item)
{
    PyObject *lock = PyObject_GetAttr(ex, st->s__shutdown_lock);
    PyObject *glock = Py_XNewRef(
        PyDict_GetItemWithError(st->tpe_globals, st->s__global_shutdown_lock));
    PyObject *q = NULL, *r = NULL;
    int rc = 0, held = 0;
    if (lock == NULL || glock == NULL) {
        PyErr_Clear();
        goto done;
    }
    rc = -1;
    if ((r = PyObject_CallMethodNoArgs(lock, st->s_acquire)) == NULL) {
        goto done;
    }
    held = 1;
    Py_CLEAR(r);
    if ((r = PyObject_CallMethodNoArgs(glock, st->s_acquire)) == NULL) {
        goto done;
    }
    held = 2;
    Py_CLEAR(r);
    rc = 0;
    if (item_flag(st, ex, st->s__broken) != 0 ||
        item_flag(st, ex, st->s__shutdown) != 0 ||
        item_flag(st, NULL, st->s__shutdown) != 0 ||
        (q = PyObject_GetAttr(ex, st->s__work_queue)) == NULL) {
        PyErr_Clear();
        goto done;
    }
    rc = -1;
    if ((r = PyObject_CallMethodOneArg(q, st->s_put, item)) == NULL) {
        goto done;
    }
    Py_CLEAR(r);
    /* Queued: from here on an error leaves it queued, as there. */
    int adjusted = item_adjust(st, ex);
    if (adjusted < 0 ||
        (adjusted == 0 && (r = PyObject_CallMethodNoArgs(
                               ex, st->s__adjust_thread_count)) == NULL)) {
        goto done;
    }
    rc = 1;
done:
    if (held == 2) {
        item_release(glock, st);
    }
    if (held >= 1) {
        item_release(lock, st);
    }
    Py_XDECREF(r);
    Py_XDECREF(q);
    Py_XDECREF(glock);
    Py_XDECREF(lock);
    return rc;
}

/* New reference: a work item of fn(*args) completing a new future of the
 * loop. */
static cd_hop_t *
item_new(cd_loop_t *loop, PyObject *const *args, Py_ssize_t nargs)
{
    cd_state *st = loop->st;
    PyObject *dest = cd_loopmeth_future_new(st, loop->aio_loop);
    PyObject *fargs = dest ? PyTuple_New(nargs - 1) : NULL;
    cd_hop_t *hop = fargs ? PyObject_GC_New(cd_hop_t, st->HopItem_type) : NULL;
    if (hop == NULL) {
        Py_XDECREF(dest);
        Py_XDECREF(fargs);
        return NULL;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(fargs, i - 1, Py_NewRef(args[i]));
    }
    hop->loop = (cd_loop_t *)Py_NewRef((PyObject *)loop);
    hop->dest = dest;
    hop->source = NULL;
    hop->next = NULL;
    hop->state = CD_HOP_WAITING;
    hop->outcome = CD_HOP_NONE;
    hop->fn = Py_NewRef(args[0]);
    hop->args = fargs;
    hop->value = NULL;
    loop->hops_out++;
    PyObject_GC_Track(hop);
    return hop;
}

int
cd_hop_submit(cd_loop_t *loop, PyObject *const *args, Py_ssize_t nargs,
              PyObject **out)
{
    cd_state *st = loop->st;
    *out = NULL;
    if (nargs < 2 || loop->closed || loop->aio_loop == NULL) {
        return 0;
    }
    int rc = item_plain_executor(st, args[0]);
    if (rc <= 0) {
        return rc;
    }
    cd_hop_t *hop = item_new(loop, args + 1, nargs - 1);
    if (hop == NULL) {
        return -1;
    }
    rc = item_queue(st, args[0], (PyObject *)hop);
    if (rc > 0) {
        /* As _chain_future: a cancelled dest cancels the work. */
        PyObject *r = PyObject_CallMethodOneArg(
            hop->dest, st->s_add_done_callback, (PyObject *)hop);
        rc = r == NULL ? -1 : 1;
        Py_XDECREF(r);
    }
    if (rc > 0) {
        *out = Py_NewRef(hop->dest);
        st->hop_items++;
    }
    Py_DECREF(hop);
    return rc;
}

static int
hop_traverse(cd_hop_t *hop, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(hop));
    Py_VISIT((PyObject *)hop->loop);
    Py_VISIT(hop->dest);
    Py_VISIT(hop->source);
    Py_VISIT(hop->fn);
    Py_VISIT(hop->args);
    Py_VISIT(hop->value);
    return 0;
}

static int
hop_clear(cd_hop_t *hop)
{
    Py_CLEAR(hop->dest);
    Py_CLEAR(hop->source);
    Py_CLEAR(hop->fn);
    Py_CLEAR(hop->args);
    Py_CLEAR(hop->value);
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
    if (hop->loop != NULL && hop->state != CD_HOP_DONE) {
        hop->loop->hops_out--; /* never finished: it is out no more */
    }
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

static PyMethodDef item_methods[] = {
    {"run", (PyCFunction)item_run, METH_NOARGS,
     "Call the function (the executor's worker thread does)."},
    {"cancel", (PyCFunction)item_cancel, METH_NOARGS,
     "Cancel the work if it has not begun."},
    {"set_exception", (PyCFunction)item_set_exception, METH_O,
     "Fail the work with an exception if it has not finished."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef item_getset[] = {
    {"future", (getter)item_get_future, NULL,
     "The item itself: it stands for its concurrent future.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot item_slots[] = {
    {Py_tp_dealloc, hop_dealloc},
    {Py_tp_traverse, hop_traverse},
    {Py_tp_clear, hop_clear},
    {Py_tp_call, hop_call},
    {Py_tp_methods, item_methods},
    {Py_tp_getset, item_getset},
    {Py_tp_doc, "A run_in_executor() call queued on a ThreadPoolExecutor."},
    {0, NULL},
};

static PyType_Spec item_spec = {
    .name = "cdaphne._cdaphne._HopItem",
    .basicsize = sizeof(cd_hop_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = item_slots,
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
    st->cf_InvalidStateError = PyObject_GetAttrString(cf, "InvalidStateError");
    Py_DECREF(cf);
    if (!st->cf_Future || !st->cf_FINISHED || !st->cf_CANCELLED ||
        !st->cf_CANCELLED_AND_NOTIFIED || !st->cf_InvalidStateError) {
        return -1;
    }
    st->Hop_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &hop_spec, NULL);
    st->HopItem_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &item_spec, NULL);
    return st->Hop_type == NULL || st->HopItem_type == NULL ? -1 : 0;
}
