/* LoopCore: a uv_loop_t that asyncio drives through a selector.
 *
 * asyncio's file descriptors become uv_poll_t handles on the same loop
 * as cdaphne's own sockets, so one epoll_wait serves both.  run_once()
 * is the selector's select(): it releases the GIL, runs libuv once and
 * returns the (fd, events) pairs asyncio asked about.  Requests parsed
 * inside uv_run are only queued; dispatch() starts their apps from a
 * normal asyncio callback, so app code never runs inside uv_run. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

static void
poll_on_close(uv_handle_t *h)
{
    free(cd_container_of(h, cd_poll_t, handle));
}

static void
poll_on_event(uv_poll_t *h, int status, int events)
{
    cd_poll_t *p = cd_container_of(h, cd_poll_t, handle);
    cd_loop_t *loop = p->loop;
    if (status < 0) {
        /* Let asyncio find the error with its own read or write. */
        events = p->events;
    }
    events &= p->events;
    if (events == 0) {
        return;
    }
    if (loop->nready == loop->ready_cap) {
        int cap = loop->ready_cap ? loop->ready_cap * 2 : 64;
        cd_ready_t *r = realloc(loop->ready, cap * sizeof(*r));
        if (r == NULL) {
            return; /* The fd stays ready: reported next time. */
        }
        loop->ready = r;
        loop->ready_cap = cap;
    }
    loop->ready[loop->nready].fd = p->fd;
    loop->ready[loop->nready].events = events;
    loop->nready++;
}

static int
loop_check_fd(cd_loop_t *loop, int fd)
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is closed");
        return -1;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "negative file descriptor");
        return -1;
    }
    if (fd >= loop->npolls) {
        int n = loop->npolls ? loop->npolls : 64;
        while (n <= fd) {
            n *= 2;
        }
        cd_poll_t **p = realloc(loop->polls, n * sizeof(*p));
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (int i = loop->npolls; i < n; i++) {
            p[i] = NULL;
        }
        loop->polls = p;
        loop->npolls = n;
    }
    return 0;
}

/* poll(fd, events): start, change or (events == 0) stop watching fd. */
static PyObject *
loop_poll(cd_loop_t *loop, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "poll(fd, events)");
        return NULL;
    }
    int fd = PyLong_AsInt(args[0]);
    int events = PyLong_AsInt(args[1]);
    if (PyErr_Occurred() || loop_check_fd(loop, fd) < 0) {
        return NULL;
    }
    events &= CD_EVENT_READ | CD_EVENT_WRITE;
    cd_poll_t *p = loop->polls[fd];
    if (events == 0) {
        if (p != NULL) {
            uv_poll_stop(&p->handle);
            uv_close((uv_handle_t *)&p->handle, poll_on_close);
            loop->polls[fd] = NULL;
        }
        Py_RETURN_NONE;
    }
    if (p == NULL) {
        p = calloc(1, sizeof(*p));
        if (p == NULL) {
            return PyErr_NoMemory();
        }
        int r = uv_poll_init(&loop->uv, &p->handle, fd);
        if (r < 0) {
            free(p);
            PyErr_Format(PyExc_OSError, "uv_poll_init(%d): %s", fd,
                         uv_strerror(r));
            return NULL;
        }
        p->loop = loop;
        p->fd = fd;
        loop->polls[fd] = p;
    }
    p->events = events;
    int r = uv_poll_start(&p->handle, events, poll_on_event);
    if (r < 0) {
        PyErr_Format(PyExc_OSError, "uv_poll_start(%d): %s", fd,
                     uv_strerror(r));
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Runs just before libuv polls.  A timer that was already due when
 * run_once entered uv_run fires before the poll: output it queued must go
 * out and asyncio callbacks it scheduled must run now, not when the poll
 * next returns (a 503 for --http-timeout, a ping, a close would wait for
 * the next event). */
static void
loop_on_prepare(uv_prepare_t *h)
{
    cd_loop_t *loop = cd_container_of(h, cd_loop_t, prepare);
    int wake = loop->st->scheduled;
    if (loop->corked.next == &loop->corked && !wake) {
        return;
    }
    int had_gil = loop->released == NULL;
    cd_gil_ensure(loop);
    cd_loop_flush(loop);
    wake = wake || loop->st->scheduled || PyList_GET_SIZE(loop->pending) > 0;
    if (!had_gil) {
        loop->released = PyEval_SaveThread();
    }
    if (wake) {
        uv_stop(&loop->uv); /* The poll then does not block. */
    }
}

static void
select_timer_on_fire(uv_timer_t *t)
{
    /* Ends uv_run(UV_RUN_ONCE).  It may fire in the timers phase before
     * the poll; then the poll must not block on later timers. */
    uv_stop(t->loop);
}

/* Runs libuv once (a negative timeout blocks); the events asyncio asked
 * about are left in loop->ready[0..nready). */
static int
loop_poll_once(cd_loop_t *loop, double timeout)
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "loop core is closed");
        return -1;
    }
    /* Requests waiting for their turn (admit.c) are looked at again
     * within a window at most. */
    int waiting = PyList_GET_SIZE(loop->admit.waiting) > 0;
    if (waiting) {
        timeout = cd_admit_timeout(loop, timeout);
    }
    /* Output queued during this turn goes out now, in one writev per
     * conn.  Its completions may wake apps: then don't block. */
    loop->st->scheduled = 0;
    cd_loop_flush(loop);
    uv_run_mode mode = UV_RUN_ONCE;
    if (PyList_GET_SIZE(loop->pending) > 0 || loop->st->scheduled ||
        timeout == 0) {
        mode = UV_RUN_NOWAIT;
    }
    else if (timeout > 0) {
        uint64_t ms = (uint64_t)ceil(timeout * 1000.0);
        /* libuv's clock is cached from the last uv_run: without an
         * update the timer would be due at once, fire before the
         * poll, and leave epoll_wait with no timeout at all. */
        uv_update_time(&loop->uv);
        uv_timer_start(&loop->select_timer, select_timer_on_fire, ms, 0);
    }
    loop->nready = 0;
    if (mode == UV_RUN_NOWAIT) {
        /* A poll that cannot block keeps the GIL (its callbacks would take
         * it back at once); other threads get it at the interpreter's
         * switch interval, as they do while callbacks run. */
        uv_run(&loop->uv, mode);
    }
    else {
        cd_policy_before_sleep(loop);
        loop->released = PyEval_SaveThread();
        uv_run(&loop->uv, mode);
        cd_gil_ensure(loop);
    }
    uv_timer_stop(&loop->select_timer);
    cd_hop_drain(loop);
    cd_pubsub_drain(loop);
    return waiting ? cd_admit_after_poll(loop) : 0;
}

/* ---- The wake-up: other threads end the loop's poll.
 *
 * libuv 1.44's uv_async_send() marks its handle busy, writes the eventfd,
 * then marks it done.  The write wakes the loop's thread, which on the
 * same core preempts the sender inside that window and then spins (997
 * pauses, then sched_yield) until the sender marks the handle done: a
 * fifth of the CPU of a call_soon_threadsafe round trip (perf, both
 * threads on one core; libuv 1.45 dropped that spin).  Here the sender
 * sets the flag before it writes, and the loop clears it after it reads,
 * so neither side ever waits for the other. */

static void
wake_on_poll(uv_poll_t *h, int status, int events)
{
    cd_loop_t *loop = cd_container_of(h, cd_loop_t, wake);
    char buf[64];
    (void)status;
    (void)events;
    for (;;) {
        ssize_t n = read(loop->wake_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < (ssize_t)sizeof(buf) || loop->wake_fd == loop->wake_wfd) {
            break; /* An eventfd's counter is read whole. */
        }
    }
    /* Cleared after the read: a wake-up that found the flag still set
     * queued its work before, and select() runs it once uv_run returns;
     * one from now on writes again.  (Cleared before the read, a write
     * consumed by the read would leave the flag set with nothing to
     * read: every later wake-up would be skipped.) */
    atomic_store(&loop->wake_pending, 0);
}

static void
wake_write(cd_loop_t *loop)
{
    uint64_t one = 1;
    size_t len = loop->wake_fd == loop->wake_wfd ? sizeof(one) : 1;
    while (write(loop->wake_wfd, &one, len) < 0 && errno == EINTR) {
    }
}

/* Whether this wake-up must write: the loop is open and no write is
 * pending since it last read (the flag is set here: later wake-ups skip
 * until wake_on_poll clears it). */
static int
wake_claim(cd_loop_t *loop)
{
    return !loop->closed && atomic_exchange(&loop->wake_pending, 1) == 0;
}

void
cd_loop_wake(cd_loop_t *loop)
{
    if (wake_claim(loop)) {
        wake_write(loop);
    }
}

/* The write wakes the loop's thread, which (on the same core) preempts
 * the writer: with the GIL still held here, it would block on the GIL at
 * once and switch back.  Released, the loop runs its callbacks while the
 * writer waits for the GIL instead: measured, a call_soon_threadsafe
 * round trip on one core went from 6.4 context switches to 4.  The
 * count keeps close() from closing wake_wfd under the write. */
void
cd_loop_wake_release_gil(cd_loop_t *loop)
{
    if (!wake_claim(loop)) {
        return;
    }
    Py_INCREF(loop); /* Whatever other threads drop meanwhile. */
    atomic_fetch_add(&loop->wake_writers, 1);
    PyThreadState *ts = PyEval_SaveThread();
    wake_write(loop);
    atomic_fetch_sub(&loop->wake_writers, 1);
    PyEval_RestoreThread(ts);
    Py_DECREF(loop);
}

/* Opens the wake-up's descriptors and starts polling them. */
static int
wake_init(cd_loop_t *loop)
{
    int fds[2] = {-1, -1};
#ifdef __linux__
    fds[0] = fds[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fds[0] < 0) {
        return -errno;
    }
#else
    if (pipe(fds) < 0) {
        return -errno;
    }
    for (int i = 0; i < 2; i++) {
        if (fcntl(fds[i], F_SETFL, O_NONBLOCK) < 0 ||
            fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0) {
            int err = -errno;
            close(fds[0]);
            close(fds[1]);
            return err;
        }
    }
#endif
    loop->wake_fd = fds[0];
    loop->wake_wfd = fds[1];
    atomic_init(&loop->wake_pending, 0);
    atomic_init(&loop->wake_writers, 0);
    int r = uv_poll_init(&loop->uv, &loop->wake, loop->wake_fd);
    return r < 0 ? r : uv_poll_start(&loop->wake, UV_READABLE, wake_on_poll);
}

/* Closes the wake-up's poll (before the walk that closes the rest, whose
 * poll callback frees a cd_poll_t) and, after it, its descriptors. */
static void
wake_close_poll(cd_loop_t *loop)
{
    uv_handle_t *h = (uv_handle_t *)&loop->wake;
    if (h->type == UV_POLL && !uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void
wake_close_fds(cd_loop_t *loop)
{
    /* A write that began before loop->closed was set ends without the
     * GIL, which close() holds. */
    while (atomic_load(&loop->wake_writers) != 0) {
        sched_yield();
    }
    if (loop->wake_wfd >= 0 && loop->wake_wfd != loop->wake_fd) {
        close(loop->wake_wfd);
    }
    if (loop->wake_fd >= 0) {
        close(loop->wake_fd);
    }
    loop->wake_fd = loop->wake_wfd = -1;
}

/* A select() timeout as loop_poll_once takes it: None blocks (-1),
 * anything not positive does not wait (0).  -2 with an exception set. */
static double
loop_timeout(PyObject *timeout)
{
    if (timeout == Py_None) {
        return -1.0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        return -2.0;
    }
    return t > 0 ? t : 0.0;
}

/* run_once(timeout) -> list of (fd, events); timeout None blocks. */
static PyObject *
loop_run_once(cd_loop_t *loop, PyObject *timeout)
{
    double wait = loop_timeout(timeout);
    if (wait == -2.0 || loop_poll_once(loop, wait) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(loop->nready);
    if (out == NULL) {
        return NULL;
    }
    for (int i = 0; i < loop->nready; i++) {
        PyObject *t =
            Py_BuildValue("(ii)", loop->ready[i].fd, loop->ready[i].events);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    loop->nready = 0;
    return out;
}

/* Appends (key, events & key.events) for fd if the selector has a key. */
static int
select_add(PyObject *out, PyObject *fd_to_key, int fd, int events)
{
    PyObject *k = PyLong_FromLong(fd), *key = NULL, *kev = NULL, *t = NULL;
    int rc = -1;
    if (k == NULL) {
        goto done;
    }
    key = Py_XNewRef(PyDict_GetItemWithError(fd_to_key, k));
    if (key == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    kev = PyObject_GetAttrString(key, "events");
    long mask = kev ? PyLong_AsLong(kev) : -1;
    if (mask == -1 && PyErr_Occurred()) {
        goto done;
    }
    t = Py_BuildValue("(Ol)", key, (long)events & mask);
    rc = t ? PyList_Append(out, t) : -1;
done:
    Py_XDECREF(k);
    Py_XDECREF(key);
    Py_XDECREF(kev);
    Py_XDECREF(t);
    return rc;
}

PyObject *
cd_loop_select(cd_loop_t *loop, PyObject *selector, double timeout)
{
    if (PyList_GET_SIZE(loop->pending) > 0) {
        return PyObject_GetAttrString(selector, "_dispatch_ready");
    }
    if (loop_poll_once(loop, timeout) < 0) {
        return NULL;
    }
    if (loop->nready == 0 && PyList_GET_SIZE(loop->pending) == 0) {
        return Py_NewRef(Py_None); /* The usual case: no list made. */
    }
    PyObject *out = PyList_New(0), *fd_to_key = NULL;
    if (out != NULL && loop->nready > 0) {
        /* Copied: the lookups below run no libuv callback, but keep the
         * array free for the next poll whatever happens. */
        int n = loop->nready;
        cd_ready_t *ev = PyMem_Malloc(n * sizeof(*ev));
        fd_to_key = PyObject_GetAttrString(selector, "_fd_to_key");
        if (ev == NULL || fd_to_key == NULL || !PyDict_Check(fd_to_key)) {
            if (ev == NULL) {
                PyErr_NoMemory();
            }
            else if (fd_to_key != NULL) {
                PyErr_SetString(PyExc_TypeError, "_fd_to_key is not a dict");
            }
            Py_CLEAR(out);
        }
        else {
            memcpy(ev, loop->ready, n * sizeof(*ev));
        }
        loop->nready = 0;
        for (int i = 0; out != NULL && i < n; i++) {
            if (select_add(out, fd_to_key, ev[i].fd, ev[i].events) < 0) {
                Py_CLEAR(out);
            }
        }
        PyMem_Free(ev);
    }
    loop->nready = 0;
    if (out != NULL && PyList_GET_SIZE(loop->pending) > 0) {
        PyObject *d = PyObject_GetAttrString(selector, "_dispatch_ready");
        if (d == NULL ||
            PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, d) < 0) {
            Py_CLEAR(out);
        }
        Py_XDECREF(d);
    }
    Py_XDECREF(fd_to_key);
    return out;
}

void
cd_loop_flush(cd_loop_t *loop)
{
    while (loop->corked.next != &loop->corked) {
        cd_link_t *l = loop->corked.next;
        cd_conn_flush(cd_container_of(l, cd_conn_t, cork_link));
    }
}

int
cd_loop_defer_start(cd_loop_t *loop, PyObject *cycle)
{
    return PyList_Append(loop->pending, cycle);
}

/* dispatch(): start the apps of every request parsed since last time.
 * Called as an asyncio callback when has_pending() said so. */
static PyObject *
loop_dispatch(cd_loop_t *loop, PyObject *unused)
{
    while (PyList_GET_SIZE(loop->pending) > 0) {
        PyObject *batch = loop->pending;
        loop->pending = PyList_New(0);
        if (loop->pending == NULL) {
            loop->pending = batch;
            return NULL;
        }
        Py_ssize_t n = PyList_GET_SIZE(batch);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *cy = PyList_GET_ITEM(batch, i);
            int now = cd_admit_start(loop, (cd_cycle_t *)cy);
            if (now == 0 || (now == 1 && cd_cycle_start(cy) == 0)) {
                continue;
            }
            if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
                PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
                /* An app's first step raised it: it leaves the loop (as
                 * from asyncio's Handle._run); the requests after it in
                 * the batch start at the next dispatch. */
                PyObject *exc = PyErr_GetRaisedException();
                PyObject *rest = PyList_GetSlice(batch, i + 1, n);
                int r = rest != NULL
                            ? PyList_SetSlice(loop->pending, 0, 0, rest)
                            : -1;
                Py_XDECREF(rest);
                Py_DECREF(batch);
                if (r < 0) {
                    Py_DECREF(exc);
                    return NULL;
                }
                PyErr_SetRaisedException(exc);
                return NULL;
            }
            cd_log_exception("Exception starting an ASGI application");
            cd_admit_done((cd_cycle_t *)cy);
        }
        Py_DECREF(batch);
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_has_pending(cd_loop_t *loop, PyObject *unused)
{
    return PyBool_FromLong(PyList_GET_SIZE(loop->pending) > 0);
}

/* attach(asyncio_loop): the loop whose futures receive/send return. */
static PyObject *
loop_attach(cd_loop_t *loop, PyObject *aio_loop)
{
    Py_XSETREF(loop->aio_loop, Py_NewRef(aio_loop));
    if (!loop->closed && cd_pubsub_attach(loop) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The select timer and the prepare handle are embedded in the loop:
 * nothing to free. */
static void
timer_on_close(uv_handle_t *h)
{
    (void)h;
}

/* Servers closed theirs first, and the wake-up is closing: what is left
 * is asyncio's polls, the select timer and the prepare handle. */
static void
walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        uv_close(h, h->type == UV_POLL ? poll_on_close : timer_on_close);
    }
}

static void
loop_close_uv(cd_loop_t *loop)
{
    if (loop->closed) {
        return;
    }
    /* Servers still open close their listeners and connections with
     * their own callbacks, which free them; then everything else, so
     * that uv_loop_close succeeds. */
    for (cd_link_t *l = loop->servers.next; l != &loop->servers; l = l->next) {
        cd_server_abort(cd_container_of(l, cd_server_t, loop_link));
    }
    cd_pubsub_detach(loop);
    loop->closed = 1;
    cd_policy_close(loop);
    cd_hop_loop_close(loop);
    wake_close_poll(loop);
    uv_walk(&loop->uv, walk_close, NULL);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    uv_loop_close(&loop->uv);
    wake_close_fds(loop);
    free(loop->polls);
    loop->polls = NULL;
    loop->npolls = 0;
    free(loop->ready);
    loop->ready = NULL;
    free(loop->read_buf);
    loop->read_buf = NULL;
    cd_conn_blocks_free(loop);
}

static PyObject *
loop_close(cd_loop_t *loop, PyObject *unused)
{
    loop_close_uv(loop);
    /* Breaks the loop <-> core cycles without waiting for the GC. */
    cd_sched_loop_clear(loop, 1);
    Py_CLEAR(loop->aio_loop);
    Py_RETURN_NONE;
}

static PyObject *
loop_sched_batch(cd_loop_t *loop, PyObject *unused)
{
    cd_policy_ask(loop);
    Py_RETURN_NONE;
}

static PyObject *
loop_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "LoopCore() takes no arguments");
        return NULL;
    }
    cd_state *st = cd_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    cd_loop_t *loop = (cd_loop_t *)tp->tp_alloc(tp, 0);
    if (loop == NULL) {
        return NULL;
    }
    loop->st = st;
    loop->closed = 1; /* Until uv_loop_init succeeds. */
    loop->wake_fd = loop->wake_wfd = -1;
    loop->pending = PyList_New(0);
    if (loop->pending == NULL || cd_admit_init(loop) < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    int r = uv_loop_init(&loop->uv);
    if (r < 0) {
        PyErr_Format(PyExc_OSError, "uv_loop_init: %s", uv_strerror(r));
        Py_DECREF(loop);
        return NULL;
    }
    loop->closed = 0;
    loop->corked.next = loop->corked.prev = &loop->corked;
    loop->servers.next = loop->servers.prev = &loop->servers;
    uv_timer_init(&loop->uv, &loop->select_timer);
    uv_unref((uv_handle_t *)&loop->select_timer);
    uv_prepare_init(&loop->uv, &loop->prepare);
    uv_prepare_start(&loop->prepare, loop_on_prepare);
    uv_unref((uv_handle_t *)&loop->prepare);
    cd_hop_loop_init(loop);
    r = wake_init(loop);
    if (r < 0) {
        PyErr_Format(PyExc_OSError, "the loop's wake-up: %s", uv_strerror(r));
        Py_DECREF(loop);
        return NULL;
    }
    loop->uv.data = loop;
    return (PyObject *)loop;
}

static int
loop_traverse(cd_loop_t *loop, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(loop));
    Py_VISIT(loop->pending);
    Py_VISIT(loop->admit.waiting);
    Py_VISIT(loop->aio_loop);
    int r = cd_sched_loop_traverse(loop, visit, arg);
    return r ? r : cd_hop_loop_traverse(loop, visit, arg);
}

static int
loop_clear(cd_loop_t *loop)
{
    cd_hop_loop_close(loop);
    cd_sched_loop_clear(loop, 0);
    Py_CLEAR(loop->pending);
    cd_admit_clear(loop);
    Py_CLEAR(loop->aio_loop);
    return 0;
}

static void
loop_dealloc(cd_loop_t *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    PyObject_GC_UnTrack(loop);
    cd_loopmeth_forget(loop);
    loop_close_uv(loop);
    loop_clear(loop);
    tp->tp_free(loop);
    Py_DECREF(tp);
}

static PyMethodDef loop_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))loop_poll, METH_FASTCALL,
     "poll(fd, events): watch fd for events (0 stops)."},
    {"run_once", (PyCFunction)loop_run_once, METH_O,
     "run_once(timeout) -> [(fd, events)]"},
    {"dispatch", (PyCFunction)loop_dispatch, METH_NOARGS,
     "Start the apps of requests parsed so far."},
    {"has_pending", (PyCFunction)loop_has_pending, METH_NOARGS, NULL},
    {"attach", (PyCFunction)loop_attach, METH_O, "attach(asyncio_loop)"},
    {"wakeup", (PyCFunction)cd_hop_wakeup, METH_NOARGS,
     "Wake select() from any thread (call_soon_threadsafe)."},
    {"sched_dict_replaced", (PyCFunction)cd_sched_dict_replaced, METH_NOARGS,
     "loop.__dict__ was assigned: read and watch the new one"},
    {"sched_init", (PyCFunction)(void (*)(void))cd_sched_attach, METH_FASTCALL,
     "sched_init(report, selector) -> the ready queue (loop._ready)"},
    {"sched_batch_during_hops", (PyCFunction)loop_sched_batch, METH_NOARGS,
     "From now on the loop's thread runs under SCHED_BATCH while thread "
     "hops are out, if it is under the default policy (Linux; policy.c)."},
    {"close", (PyCFunction)loop_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loop_getset[] = {
    {"timer_cancelled_count", (getter)cd_sched_get_cancelled,
     (setter)cd_sched_set_cancelled,
     "Cancelled timers still in the heap (loop._timer_cancelled_count).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_getset, loop_getset},
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {Py_tp_doc, "The libuv loop under cdaphne's asyncio selector."},
    {0, NULL},
};

static PyType_Spec loop_spec = {
    .name = "cdaphne._cdaphne.LoopCore",
    .basicsize = sizeof(cd_loop_t),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = loop_slots,
};

int
cd_loop_type_init(PyObject *module, cd_state *st)
{
    st->LoopCore_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &loop_spec, NULL);
    if (st->LoopCore_type == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->LoopCore_type);
}

void
cd_log_exception(const char *msg)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = NULL, *r = NULL;
    if (logging != NULL) {
        logger = PyObject_CallMethod(logging, "getLogger", "s", "cdaphne");
    }
    if (logger != NULL) {
        PyObject *kw = Py_BuildValue("{sO}", "exc_info", exc ? exc : Py_True);
        PyObject *meth = PyObject_GetAttrString(logger, "error");
        PyObject *a = Py_BuildValue("(s)", msg);
        if (kw && meth && a) {
            r = PyObject_Call(meth, a, kw);
        }
        Py_XDECREF(kw);
        Py_XDECREF(meth);
        Py_XDECREF(a);
    }
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    Py_XDECREF(exc);
}
