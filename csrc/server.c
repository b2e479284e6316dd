/* Server: listeners, accepting, the set of connections, shutdown. */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Workers sharing a listening socket (listener_on_connection): a worker
 * with CD_SHARE_SLACK more connections than another holds a new one back
 * CD_SHARE_WAIT_MS.  When it has been holding back for CD_SHARE_PATIENCE_MS
 * and the others took nothing meanwhile (blocked, or starved of CPU), it
 * takes all that comes for CD_SHARE_GREEDY_MS. */
#define CD_SHARE_SLACK 2
#define CD_SHARE_WAIT_MS 1
#define CD_SHARE_PATIENCE_MS 50
#define CD_SHARE_GREEDY_MS 5
/* Out of file descriptors (listener_pause): how long a listener does not
 * accept before it listens again.  asyncio waits 1 s (ACCEPT_RETRY_DELAY),
 * nginx 500 ms. */
#define CD_ACCEPT_RETRY_MS 100

static void
listener_on_close(uv_handle_t *h)
{
    cd_listener_t *ls = (cd_listener_t *)h->data;
    if (--ls->open_handles > 0) {
        return;
    }
    /* Runs inside uv_run with the GIL released; ls->server may be gone. */
    cd_gil_ensure(cd_container_of(h->loop, cd_loop_t, uv));
    Py_XDECREF(ls->sockname);
    Py_XDECREF(ls->tls);
    free(ls);
}

static void listener_on_resume(uv_timer_t *h);

static void
listener_on_drop_close(uv_handle_t *h)
{
    cd_listener_t *ls = (cd_listener_t *)h->data;
    ls->dropping = 0;
    listener_on_close(h);
}

/* cd_conn_new failed.  If it did before uv_accept, libuv still holds the
 * accepted fd and no longer watches the socket: accept it into the drop
 * handle and close it (the client sees a reset).  While that handle is
 * still closing, try again in a moment. */
static void
listener_drop(cd_listener_t *ls)
{
    uv_loop_t *uv = ls->io.handle.loop;
    if (ls->dropping || (ls->is_unix ? uv_pipe_init(uv, &ls->drop.pipe, 0)
                                     : uv_tcp_init(uv, &ls->drop.tcp)) < 0) {
        ls->held = 1;
        uv_timer_start(&ls->resume, listener_on_resume, CD_SHARE_WAIT_MS, 0);
        return;
    }
    ls->dropping = 1;
    ls->open_handles++;
    ls->drop.handle.data = ls;
    if (uv_accept(&ls->io.stream, &ls->drop.stream) == 0) {
        ls->server->accept_drops++;
    }
    uv_close(&ls->drop.handle, listener_on_drop_close);
}

static void
listener_accept(cd_listener_t *ls)
{
    if (cd_conn_new(ls) == NULL) {
        PyErr_Clear();
        listener_drop(ls);
    }
}

/* Publishes this worker's connection count; 1 if a worker sharing the
 * listening socket holds CD_SHARE_SLACK fewer connections than this one.
 * *others: the other workers' counts added up. */
static int
server_share_busier(cd_server_t *srv, uint64_t *others)
{
    uint32_t *slots = srv->share.buf;
    Py_ssize_t n = srv->share.len / (Py_ssize_t)sizeof(uint32_t);
    uint32_t mine = (uint32_t)srv->nconns + 1;
    int busier = 0;
    *others = 0;
    __atomic_store_n(&slots[srv->share_index], mine, __ATOMIC_RELAXED);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = __atomic_load_n(&slots[i], __ATOMIC_RELAXED);
        if (i != srv->share_index && v != 0) {
            *others += v;
            busier |= v + CD_SHARE_SLACK <= mine;
        }
    }
    return busier;
}

/* 1 if the connection libuv holds for us should wait for the others. */
static int
listener_should_wait(cd_listener_t *ls)
{
    cd_server_t *srv = ls->server;
    uint64_t others;
    if (srv->share_index < 0 || uv_now(&srv->loop->uv) < ls->greedy_until ||
        !server_share_busier(srv, &others)) {
        return 0;
    }
    /* The others' patience clock: from the first wait of a series, or
     * from the last connection they took. */
    uint64_t now = uv_now(&srv->loop->uv);
    if (others != ls->others_seen ||
        now - ls->last_wait > CD_SHARE_PATIENCE_MS) {
        ls->others_seen = others;
        ls->stall_since = now;
    }
    ls->last_wait = now;
    if (now - ls->stall_since >= CD_SHARE_PATIENCE_MS) {
        /* They are blocked or starved: take all that comes, for a while. */
        ls->greedy_until = now + CD_SHARE_GREEDY_MS;
        return 0;
    }
    return 1;
}

/* One warning per shortage (out_of_fds is reset by the next accept). */
static void
listener_warn_paused(int status)
{
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = NULL, *r = NULL;
    if (logging != NULL) {
        logger = PyObject_CallMethod(logging, "getLogger", "s", "cdaphne");
    }
    if (logger != NULL) {
        r = PyObject_CallMethod(logger, "warning", "ssi",
                                "accept(): %s: not accepting connections "
                                "for %d ms at a time until some close",
                                uv_strerror(status), CD_ACCEPT_RETRY_MS);
    }
    if (r == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    Py_XDECREF(logger);
    Py_XDECREF(logging);
}

static void listener_on_retry(uv_timer_t *h);
static void listener_on_connection(uv_stream_t *s, int status);

/* libuv got EMFILE or ENFILE and could not free its own spare descriptor
 * to shed the connection (uv__emfile_trick), or the kernel is out of
 * memory: uv__server_io would call accept() again at once, for as long as
 * the shortage lasts, and the loop would close nothing meanwhile.  Closing
 * io ends that loop; spare_fd keeps the socket and its queue, and the
 * listener listens again in CD_ACCEPT_RETRY_MS, as asyncio's does. */
static void
listener_pause(cd_listener_t *ls, int status)
{
    if (ls->spare_fd < 0 || !ls->io_open) {
        return;
    }
    ls->server->accept_pauses++;
    if (!ls->out_of_fds) {
        ls->out_of_fds = 1;
        listener_warn_paused(status);
    }
    if (ls->is_unix) {
        /* Keep the bound path: libuv unlinks it when a pipe closes. */
        ls->pipe_fname = ls->io.pipe.pipe_fname;
        ls->io.pipe.pipe_fname = NULL;
    }
    ls->io_open = 0;
    uv_close(&ls->io.handle, listener_on_close);
    uv_timer_start(&ls->resume, listener_on_retry, CD_ACCEPT_RETRY_MS, 0);
}

/* Listens again on a new descriptor of the socket: 0, or a negative
 * errno (io is closed again). */
static int
listener_reopen(cd_listener_t *ls)
{
    uv_loop_t *uv = &ls->server->loop->uv;
    /* Init first: libuv takes back its own spare descriptor if it can. */
    int r = ls->is_unix ? uv_pipe_init(uv, &ls->io.pipe, 0)
                        : uv_tcp_init(uv, &ls->io.tcp);
    if (r < 0) {
        return r;
    }
    ls->io.handle.data = ls;
    ls->open_handles++;
    ls->io_open = 1;
    int fd = fcntl(ls->spare_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
    }
    else {
        r = ls->is_unix ? uv_pipe_open(&ls->io.pipe, fd)
                        : uv_tcp_open(&ls->io.tcp, fd);
        if (r < 0) {
            close(fd); /* Not the handle's. */
        }
    }
    if (r == 0) {
        r = uv_listen(&ls->io.stream, ls->backlog, listener_on_connection);
    }
    if (r < 0) {
        ls->io_open = 0;
        uv_close(&ls->io.handle, listener_on_close);
        return r;
    }
    if (ls->is_unix) {
        ls->io.pipe.pipe_fname = ls->pipe_fname;
        ls->pipe_fname = NULL;
    }
    return 0;
}

static void
listener_on_retry(uv_timer_t *h)
{
    cd_listener_t *ls = cd_container_of(h, cd_listener_t, resume);
    if (listener_reopen(ls) < 0) {
        uv_timer_start(&ls->resume, listener_on_retry, CD_ACCEPT_RETRY_MS, 0);
    }
}

static void
listener_on_resume(uv_timer_t *h)
{
    cd_listener_t *ls = cd_container_of(h, cd_listener_t, resume);
    cd_gil_ensure(ls->server->loop);
    ls->held = 0;
    listener_accept(ls); /* uv_accept() watches the socket again. */
}

/* libuv accepts until EAGAIN and calls this for each connection.  Workers
 * sharing one listening socket are all woken; the first awake would take
 * the whole queue.  So a worker busier than another one leaves the
 * connection with libuv (which stops watching the socket) for
 * CD_SHARE_WAIT_MS: the others take what comes meanwhile. */
static void
listener_on_connection(uv_stream_t *s, int status)
{
    cd_listener_t *ls = (cd_listener_t *)s->data;
    cd_server_t *srv = ls->server;
    cd_gil_ensure(srv->loop);
    if (status == UV_EMFILE || status == UV_ENFILE || status == UV_ENOBUFS ||
        status == UV_ENOMEM) {
        listener_pause(ls, status);
        return;
    }
    if (status < 0) {
        return;
    }
    ls->out_of_fds = 0;
    if (listener_should_wait(ls)) {
        ls->held = 1;
        uv_timer_start(&ls->resume, listener_on_resume, CD_SHARE_WAIT_MS, 0);
        return;
    }
    listener_accept(ls);
}

void
cd_server_log_action(cd_server_t *srv, const char *protocol,
                     const char *action, PyObject *details)
{
    if (srv->action_logger == NULL) {
        return;
    }
    PyObject *r = PyObject_CallFunction(srv->action_logger, "ssO", protocol,
                                        action, details);
    if (r == NULL) {
        cd_log_exception("Exception in action_logger");
    }
    Py_XDECREF(r);
}

/* A listener; `tls` (borrowed) is None or a TLSContext its conns speak. */
static cd_listener_t *
listener_new(cd_server_t *srv, int is_unix, PyObject *tls)
{
    if (tls != Py_None && !PyObject_TypeCheck(tls, srv->st->TLSContext_type)) {
        PyErr_SetString(PyExc_TypeError, "tls must be a TLSContext or None");
        return NULL;
    }
    cd_listener_t *ls = calloc(1, sizeof(*ls));
    if (ls == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int r = is_unix ? uv_pipe_init(&srv->loop->uv, &ls->io.pipe, 0)
                    : uv_tcp_init(&srv->loop->uv, &ls->io.tcp);
    if (r < 0) {
        free(ls);
        PyErr_Format(PyExc_OSError, "%s", uv_strerror(r));
        return NULL;
    }
    uv_timer_init(&srv->loop->uv, &ls->resume);
    ls->server = srv;
    ls->is_unix = is_unix;
    ls->transport = cd_transport_test();
    if (tls != Py_None) {
        ls->tls = Py_NewRef(tls);
        ls->transport = &cd_tls_transport;
    }
    ls->io.handle.data = ls;
    ls->resume.data = ls;
    ls->open_handles = 2;
    ls->io_open = 1;
    ls->spare_fd = -1;
    return ls;
}

/* Listening now: keep a second descriptor of the socket for
 * listener_pause (none if the process has none to spare: no pause). */
static void
listener_keep_spare(cd_listener_t *ls, int backlog)
{
    uv_os_fd_t fd;
    ls->backlog = backlog;
    if (uv_fileno(&ls->io.handle, &fd) == 0) {
        ls->spare_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    }
}

static void
listener_close(cd_listener_t *ls)
{
    if (ls->held) {
        /* Closing would reset the connection libuv holds: serve it. */
        uv_timer_stop(&ls->resume);
        ls->held = 0;
        listener_accept(ls);
    }
    if (ls->io_open) {
        uv_close(&ls->io.handle, listener_on_close);
    }
    else if (ls->pipe_fname != NULL) {
        /* Paused: what libuv would do on closing a bound pipe. */
        unlink(ls->pipe_fname);
        free((void *)(uintptr_t)ls->pipe_fname);
        ls->pipe_fname = NULL;
    }
    uv_close((uv_handle_t *)&ls->resume, listener_on_close);
    if (ls->spare_fd >= 0) {
        close(ls->spare_fd);
        ls->spare_fd = -1;
    }
}

/* The server owns a listening listener from here on. */
static int
listener_track(cd_server_t *srv, cd_listener_t *ls)
{
    cd_listener_t **arr =
        realloc(srv->listeners, (srv->nlisteners + 1) * sizeof(*arr));
    if (arr == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    srv->listeners = arr;
    arr[srv->nlisteners++] = ls;
    return 0;
}

static int
server_add_listener(cd_server_t *srv, cd_listener_t *ls, int backlog)
{
    int r = uv_listen(&ls->io.stream, backlog, listener_on_connection);
    if (r < 0) {
        PyErr_Format(PyExc_OSError, "listen: %s", uv_strerror(r));
        return -1;
    }
    listener_keep_spare(ls, backlog);
    return listener_track(srv, ls);
}

PyObject *
cd_server_addr_tuple(const struct sockaddr_storage *ss)
{
    char host[64];
    int port;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, host, sizeof(host));
        port = ntohs(a->sin6_port);
    }
    else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, host, sizeof(host));
        port = ntohs(a->sin_port);
    }
    return Py_BuildValue("(si)", host, port);
}

static PyObject *
tcp_sockname(uv_tcp_t *tcp)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int r = uv_tcp_getsockname(tcp, (struct sockaddr *)&ss, &len);
    if (r < 0) {
        PyErr_Format(PyExc_OSError, "getsockname: %s", uv_strerror(r));
        return NULL;
    }
    return cd_server_addr_tuple(&ss);
}

/* listen_tcp(host, port, backlog, tls=None) -> (host, port) bound.
 * host is a numeric IPv4/IPv6 address (cdaphne.config resolves names). */
static PyObject *
server_listen_tcp(cd_server_t *srv, PyObject *args)
{
    const char *host;
    int port, backlog;
    PyObject *tls = Py_None;
    if (!PyArg_ParseTuple(args, "sii|O", &host, &port, &backlog, &tls)) {
        return NULL;
    }
    struct sockaddr_storage ss;
    int r = strchr(host, ':')
                ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
                : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "invalid address %s", host);
        return NULL;
    }
    cd_listener_t *ls = listener_new(srv, 0, tls);
    if (ls == NULL) {
        return NULL;
    }
    r = uv_tcp_bind(&ls->io.tcp, (struct sockaddr *)&ss, 0);
    if (r == 0) {
        /* libuv reports bind errors at listen time on some kernels. */
        r = uv_listen(&ls->io.stream, backlog, listener_on_connection);
    }
    if (r < 0) {
        listener_close(ls);
        errno = -r;
        PyErr_Format(PyExc_OSError,
                     "[Errno %d] error while attempting to "
                     "bind on address ('%s', %d): %s",
                     -r, host, port, uv_strerror(r));
        return NULL;
    }
    ls->sockname = tcp_sockname(&ls->io.tcp);
    if (ls->sockname == NULL) {
        listener_close(ls);
        return NULL;
    }
    listener_keep_spare(ls, backlog);
    if (listener_track(srv, ls) < 0) {
        listener_close(ls);
        return NULL;
    }
    return Py_NewRef(ls->sockname);
}

/* listen_unix(path, backlog, tls=None) */
static PyObject *
server_listen_unix(cd_server_t *srv, PyObject *args)
{
    const char *path;
    int backlog;
    PyObject *tls = Py_None;
    if (!PyArg_ParseTuple(args, "si|O", &path, &backlog, &tls)) {
        return NULL;
    }
    cd_listener_t *ls = listener_new(srv, 1, tls);
    if (ls == NULL) {
        return NULL;
    }
    int r = uv_pipe_bind(&ls->io.pipe, path);
    if (r < 0) {
        listener_close(ls);
        PyErr_Format(PyExc_OSError, "bind %s: %s", path, uv_strerror(r));
        return NULL;
    }
    ls->sockname = Py_BuildValue("(sO)", path, Py_None);
    if (ls->sockname == NULL || server_add_listener(srv, ls, backlog) < 0) {
        listener_close(ls);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* listen_fd(fd, is_unix, backlog, tls=None) -> sockname: an inherited
 * socket. */
static PyObject *
server_listen_fd(cd_server_t *srv, PyObject *args)
{
    int fd, is_unix, backlog;
    PyObject *tls = Py_None;
    if (!PyArg_ParseTuple(args, "ipi|O", &fd, &is_unix, &backlog, &tls)) {
        return NULL;
    }
    cd_listener_t *ls = listener_new(srv, is_unix, tls);
    if (ls == NULL) {
        return NULL;
    }
    int r = is_unix ? uv_pipe_open(&ls->io.pipe, fd)
                    : uv_tcp_open(&ls->io.tcp, fd);
    if (r < 0) {
        listener_close(ls);
        PyErr_Format(PyExc_OSError, "fd %d: %s", fd, uv_strerror(r));
        return NULL;
    }
    if (is_unix) {
        /* The scope's server is [path, None], as for -u. */
        char path[1024];
        size_t plen = sizeof(path);
        if (uv_pipe_getsockname(&ls->io.pipe, path, &plen) < 0) {
            plen = 0;
        }
        ls->sockname = Py_BuildValue("(s#O)", path, (Py_ssize_t)plen, Py_None);
    }
    else {
        ls->sockname = tcp_sockname(&ls->io.tcp);
    }
    if (ls->sockname == NULL || server_add_listener(srv, ls, backlog) < 0) {
        listener_close(ls);
        return NULL;
    }
    return Py_NewRef(ls->sockname);
}

static void
server_close_listeners_c(cd_server_t *srv)
{
    if (srv->share_index >= 0) {
        /* Not accepting: the other workers stop comparing with us. */
        uint32_t *slots = srv->share.buf;
        __atomic_store_n(&slots[srv->share_index], 0, __ATOMIC_RELAXED);
        srv->share_index = -1;
    }
    for (int i = 0; i < srv->nlisteners; i++) {
        listener_close(srv->listeners[i]);
    }
    free(srv->listeners);
    srv->listeners = NULL;
    srv->nlisteners = 0;
}

/* close_listeners(): stop accepting; conns with no request for the app
 * (idle keep-alive, or part of a head: uvicorn closes those too) close
 * now, busy ones once their response is done.  A conn finishing an error
 * response (lingering close) is left to finish; it is bounded.  So is a
 * fresh conn (accepted, no byte read yet): its request may be in the
 * socket already, so it is served (then closed) if it comes soon; the
 * caller closes it with close_all() otherwise.  An open WebSocket is
 * closed with 1012 now (uvicorn's shutdown): its app hears at once. */
static PyObject *
server_close_listeners(cd_server_t *srv, PyObject *unused)
{
    server_close_listeners_c(srv);
    if (cd_admit_all(srv->loop) < 0) {
        return NULL;
    }
    srv->closing = 1;
    cd_link_t *l = srv->conns.next;
    while (l != &srv->conns) {
        cd_conn_t *c = cd_container_of(l, cd_conn_t, link);
        l = l->next;
        if (cd_conn_activity(c) & CD_ACT_CLOSE_NOW) {
            cd_conn_close(c);
        }
        else {
            cd_conn_stop(c);
        }
    }
    Py_RETURN_NONE;
}

void
cd_server_abort(cd_server_t *srv)
{
    server_close_listeners_c(srv);
    srv->closing = 1;
    cd_link_t *l = srv->conns.next;
    while (l != &srv->conns) {
        cd_conn_t *c = cd_container_of(l, cd_conn_t, link);
        l = l->next;
        cd_conn_close(c);
    }
}

/* close_all(): close every connection now (end of the grace period). */
static PyObject *
server_close_all(cd_server_t *srv, PyObject *unused)
{
    cd_link_t *l = srv->conns.next;
    while (l != &srv->conns) {
        cd_conn_t *c = cd_container_of(l, cd_conn_t, link);
        l = l->next;
        cd_conn_shutdown(c); /* WebSocket: 1012, service restart */
    }
    Py_RETURN_NONE;
}

static PyObject *
server_set_state(cd_server_t *srv, PyObject *state)
{
    if (state != Py_None && !PyDict_Check(state)) {
        PyErr_SetString(PyExc_TypeError, "state must be a dict or None");
        return NULL;
    }
    Py_XSETREF(srv->lifespan_state,
               state == Py_None ? NULL : Py_NewRef(state));
    Py_RETURN_NONE;
}

static PyObject *
server_get_connections(cd_server_t *srv, void *closure)
{
    return PyLong_FromLong(srv->nconns);
}

static PyObject *
server_get_busy(cd_server_t *srv, void *closure)
{
    long busy = 0;
    for (cd_link_t *l = srv->conns.next; l != &srv->conns; l = l->next) {
        cd_conn_t *c = cd_container_of(l, cd_conn_t, link);
        if (cd_conn_activity(c) & CD_ACT_BUSY) {
            busy++;
        }
    }
    return PyLong_FromLong(busy);
}

/* New reference: config.<name>.  Defaults live in config.py only: a
 * config without the attribute is an AttributeError naming it. */
static PyObject *
cfg_object(PyObject *config, const char *name)
{
    PyObject *v = PyObject_GetAttrString(config, name);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Format(PyExc_AttributeError,
                     "server config has no attribute '%s' (build it with "
                     "cdaphne.config.Config)",
                     name);
    }
    return v;
}

/* config.<name>: a number (times `scale`, 1000 for seconds to ms) or None
 * (0); 0 for anything not above zero. */
static int
cfg_number_required(PyObject *config, const char *name, double scale,
                    uint64_t *out)
{
    PyObject *v = cfg_object(config, name);
    if (v == NULL) {
        return -1;
    }
    double d = 0;
    if (v != Py_None) {
        d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Format(PyExc_TypeError,
                             "server config '%s' must be a number or None, "
                             "not %.100s",
                             name, Py_TYPE(v)->tp_name);
            }
            Py_DECREF(v);
            return -1;
        }
    }
    Py_DECREF(v);
    *out = d <= 0 ? 0 : (uint64_t)(d * scale);
    return 0;
}

/* permessage-deflate: on unless the config says false; window bits and
 * memLevel within zlib's ranges (config.py validates them first). */
static int
cfg_deflate(PyObject *config, cd_config_t *c)
{
    uint64_t bits, level;
    PyObject *o = cfg_object(config, "ws_per_message_deflate");
    if (o == NULL) {
        return -1;
    }
    c->ws_deflate = o == Py_None ? 1 : PyObject_IsTrue(o);
    Py_DECREF(o);
    if (c->ws_deflate < 0 ||
        cfg_number_required(config, "ws_deflate_window_bits", 1, &bits) < 0 ||
        cfg_number_required(config, "ws_deflate_mem_level", 1, &level) < 0) {
        return -1;
    }
    if (bits < 9 || bits > 15 || level < 1 || level > 9) {
        PyErr_SetString(PyExc_ValueError,
                        "ws_deflate_window_bits must be 9..15 and "
                        "ws_deflate_mem_level 1..9");
        return -1;
    }
    c->ws_deflate_window_bits = (int)bits;
    c->ws_deflate_mem_level = (int)level;
    return 0;
}

/* cdaphne.pubsub's bounds. */
static int
cfg_pubsub(PyObject *config, cd_config_t *c)
{
    if (cfg_number_required(config, "pubsub_max_queue", 1,
                            &c->pubsub_max_queue) < 0 ||
        cfg_number_required(config, "pubsub_max_topics", 1,
                            &c->pubsub_max_topics) < 0 ||
        cfg_number_required(config, "pubsub_max_inbox", 1,
                            &c->pubsub_max_inbox) < 0 ||
        cfg_number_required(config, "pubsub_max_inbox_bytes", 1,
                            &c->pubsub_max_inbox_bytes) < 0) {
        return -1;
    }
    return 0;
}

/* The buffer sizes: every one positive. */
static int
cfg_buffers(PyObject *config, cd_config_t *c)
{
    uint64_t body, write, tls, rd;
    if (cfg_number_required(config, "body_buffer_size", 1, &body) < 0 ||
        cfg_number_required(config, "write_buffer_size", 1, &write) < 0 ||
        cfg_number_required(config, "tls_read_size", 1, &tls) < 0 ||
        cfg_number_required(config, "read_size", 1, &rd) < 0) {
        return -1;
    }
    if (body == 0 || write == 0 || tls == 0 || rd == 0) {
        /* 0 would pause every read and every send() for good. */
        PyErr_SetString(PyExc_ValueError,
                        "server config 'body_buffer_size', "
                        "'write_buffer_size', 'tls_read_size' and "
                        "'read_size' must be positive");
        return -1;
    }
    c->body_high_water = (size_t)body;
    c->write_high_water = (size_t)write;
    c->tls_read_size = (size_t)tls;
    c->read_size = (size_t)rd;
    return 0;
}

/* The numbers of the config (every one required: the defaults live in
 * config.py).  0, or -1 with an exception set. */
static int
server_read_limits(cd_config_t *c, PyObject *config)
{
    uint64_t v;
    if (cfg_number_required(config, "max_body_size", 1, &c->max_body) < 0 ||
        cfg_number_required(config, "max_header_size", 1, &v) < 0) {
        return -1;
    }
    c->max_head = (size_t)v;
    if (cfg_number_required(config, "max_header_count", 1, &v) < 0) {
        return -1;
    }
    c->max_headers = v > UINT_MAX ? UINT_MAX : (unsigned)v;
    if (cfg_number_required(config, "header_timeout", 1000,
                            &c->header_timeout) < 0 ||
        cfg_number_required(config, "timeout_keep_alive", 1000,
                            &c->keepalive_timeout) < 0 ||
        cfg_number_required(config, "http_timeout", 1000, &c->http_timeout) <
            0 ||
        cfg_number_required(config, "application_close_timeout", 1000,
                            &c->app_close_timeout) < 0 ||
        cfg_number_required(config, "limit_concurrency", 1, &v) < 0) {
        return -1;
    }
    c->limit_concurrency = (int)v;
    if (cfg_number_required(config, "max_running_requests", 1, &v) < 0) {
        return -1;
    }
    c->max_running_requests = v > INT_MAX ? INT_MAX : (int)v;
    if (cfg_number_required(config, "websocket_connect_timeout", 1000,
                            &c->ws_connect_timeout) < 0 ||
        cfg_number_required(config, "websocket_timeout", 1000,
                            &c->ws_timeout) < 0 ||
        cfg_number_required(config, "ping_interval", 1000, &c->ping_interval) <
            0 ||
        cfg_number_required(config, "ping_timeout", 1000, &c->ping_timeout) <
            0 ||
        cfg_number_required(config, "websocket_max_message_size", 1,
                            &c->ws_max_message) < 0 ||
        cfg_number_required(config, "websocket_max_frame_size", 1,
                            &c->ws_max_frame) < 0 ||
        cfg_deflate(config, c) < 0 ||
        cfg_number_required(config, "min_body_rate", 1, &c->min_body_rate) <
            0 ||
        cfg_number_required(config, "body_rate_grace", 1000,
                            &c->body_rate_grace) < 0 ||
        cfg_number_required(config, "half_close_grace", 1000,
                            &c->half_close_grace) < 0 ||
        cfg_pubsub(config, c) < 0) {
        return -1;
    }
    if (c->header_timeout == 0 || c->keepalive_timeout == 0) {
        /* Both arm a conn's timer unconditionally: 0 would close it. */
        PyErr_SetString(PyExc_ValueError, "server config 'header_timeout' and "
                                          "'timeout_keep_alive' must be "
                                          "positive");
        return -1;
    }
    if (cfg_buffers(config, c) < 0) {
        return -1;
    }
    c->eager_tasks = PY_VERSION_HEX >= 0x030C0000;
    return 0;
}

/* root_path, action_logger and the server header.  0, or -1 with an
 * exception set (what was read stays on srv: its dealloc frees it). */
static int
server_read_names(cd_server_t *srv, PyObject *config)
{
    cd_state *st = srv->st;
    PyObject *o;
    if ((o = cfg_object(config, "root_path")) == NULL) {
        return -1;
    }
    if (o == Py_None) {
        Py_SETREF(o, Py_NewRef(st->s_empty));
    }
    srv->root_path = o;
    if ((o = cfg_object(config, "action_logger")) == NULL) {
        return -1;
    }
    srv->action_logger = o == Py_None ? NULL : o;
    if (o == Py_None) {
        Py_DECREF(o);
    }
    if ((o = cfg_object(config, "server_name")) == NULL) {
        return -1;
    }
    if (o != Py_None) {
        const char *name = PyUnicode_AsUTF8(o);
        if (name == NULL) {
            Py_DECREF(o);
            return -1;
        }
        if (*name) {
            size_t n = strlen(name) + 16;
            srv->server_header = malloc(n);
            if (srv->server_header == NULL) {
                Py_DECREF(o);
                PyErr_NoMemory();
                return -1;
            }
            snprintf(srv->server_header, n, "server: %s\r\n", name);
        }
    }
    Py_DECREF(o);
    return 0;
}

/* Server(loop_core, app, config) */
static PyObject *
server_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *loop, *app, *config;
    if (!PyArg_ParseTuple(args, "OOO", &loop, &app, &config)) {
        return NULL;
    }
    cd_state *st = cd_state_from_type(tp);
    if (st == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(loop, st->LoopCore_type)) {
        PyErr_SetString(PyExc_TypeError, "Server() needs a LoopCore");
        return NULL;
    }
    cd_server_t *srv = (cd_server_t *)tp->tp_alloc(tp, 0);
    if (srv == NULL) {
        return NULL;
    }
    srv->st = st;
    srv->first_proto = &cd_http1_proto;
    srv->conns.next = srv->conns.prev = &srv->conns;
    srv->share_index = -1;
    const char *fail = getenv("CDAPHNE_TEST_FAIL_CONN_NEW"); /* tests only */
    srv->test_fail_conn_new = fail != NULL ? atoi(fail) : 0;
    srv->loop = (cd_loop_t *)Py_NewRef(loop);
    cd_link_t *ll = &srv->loop->servers;
    srv->loop_link.next = ll->next;
    srv->loop_link.prev = ll;
    ll->next->prev = &srv->loop_link;
    ll->next = &srv->loop_link;
    srv->app = Py_NewRef(app);
    srv->scheme = Py_NewRef(st->s_http);

    if (server_read_limits(&srv->cfg, config) < 0 ||
        server_read_names(srv, config) < 0) {
        Py_DECREF(srv);
        return NULL;
    }
    cd_pubsub_set_inbox_limits(srv->loop, srv->cfg.pubsub_max_inbox,
                               srv->cfg.pubsub_max_inbox_bytes);
    cd_admit_set_limit(srv->loop, srv->cfg.max_running_requests);
    return (PyObject *)srv;
}

static int
server_traverse(cd_server_t *srv, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(srv));
    Py_VISIT(srv->loop);
    Py_VISIT(srv->app);
    Py_VISIT(srv->root_path);
    Py_VISIT(srv->lifespan_state);
    Py_VISIT(srv->action_logger);
    Py_VISIT(srv->share.obj);
    return 0;
}

static int
server_clear(cd_server_t *srv)
{
    Py_CLEAR(srv->app);
    Py_CLEAR(srv->root_path);
    Py_CLEAR(srv->lifespan_state);
    Py_CLEAR(srv->action_logger);
    Py_CLEAR(srv->scheme);
    if (srv->share.obj != NULL) {
        srv->share_index = -1;
        PyBuffer_Release(&srv->share);
    }
    return 0;
}

static void
server_dealloc(cd_server_t *srv)
{
    PyTypeObject *tp = Py_TYPE(srv);
    PyObject_GC_UnTrack(srv);
    /* Connections hold a reference, so none is left here, and none may be
     * made: a connection libuv holds for us is closed with its listener. */
    if (srv->loop != NULL && !srv->loop->closed) {
        for (int i = 0; i < srv->nlisteners; i++) {
            srv->listeners[i]->held = 0;
        }
        server_close_listeners_c(srv);
    }
    if (srv->loop_link.next != NULL) {
        srv->loop_link.prev->next = srv->loop_link.next;
        srv->loop_link.next->prev = srv->loop_link.prev;
    }
    server_clear(srv);
    Py_CLEAR(srv->loop);
    free(srv->server_header);
    free(srv->tls_rbuf);
    tp->tp_free(srv);
    Py_DECREF(tp);
}

/* share_accept(buffer, index): the memory the workers sharing this
 * server's listening sockets map (writable, one uint32 per worker) and
 * this worker's slot in it.  Call it once listening. */
static PyObject *
server_share_accept(cd_server_t *srv, PyObject *args)
{
    PyObject *obj;
    int index;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oi", &obj, &index)) {
        return NULL;
    }
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (index < 0 ||
        (Py_ssize_t)(index + 1) * (Py_ssize_t)sizeof(uint32_t) > view.len ||
        ((uintptr_t)view.buf & (sizeof(uint32_t) - 1)) != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "share_accept: index out of range");
        return NULL;
    }
    if (srv->share.obj != NULL) {
        PyBuffer_Release(&srv->share);
    }
    srv->share = view;
    srv->share_index = srv->closing ? -1 : index;
    if (srv->share_index >= 0) {
        uint64_t others;
        server_share_busier(srv, &others);
    }
    Py_RETURN_NONE;
}

static PyMethodDef server_methods[] = {
    {"listen_tcp", (PyCFunction)server_listen_tcp, METH_VARARGS,
     "listen_tcp(host, port, backlog, tls=None) -> (host, port)"},
    {"listen_unix", (PyCFunction)server_listen_unix, METH_VARARGS,
     "listen_unix(path, backlog, tls=None)"},
    {"listen_fd", (PyCFunction)server_listen_fd, METH_VARARGS,
     "listen_fd(fd, is_unix, backlog, tls=None) -> sockname"},
    {"close_listeners", (PyCFunction)server_close_listeners, METH_NOARGS,
     "Stop accepting and close idle connections."},
    {"close_all", (PyCFunction)server_close_all, METH_NOARGS,
     "Close every connection."},
    {"set_state", (PyCFunction)server_set_state, METH_O,
     "set_state(dict): the lifespan state copied into each scope."},
    {"share_accept", (PyCFunction)server_share_accept, METH_VARARGS,
     "share_accept(buffer, index): balance accepts with other workers."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
server_get_requests(cd_server_t *srv, void *closure)
{
    return PyLong_FromUnsignedLongLong(srv->requests);
}

static PyObject *
server_get_accept_drops(cd_server_t *srv, void *closure)
{
    return PyLong_FromUnsignedLongLong(srv->accept_drops);
}

static PyObject *
server_get_accept_pauses(cd_server_t *srv, void *closure)
{
    return PyLong_FromUnsignedLongLong(srv->accept_pauses);
}

static PyGetSetDef server_getset[] = {
    {"connections", (getter)server_get_connections, NULL, NULL, NULL},
    {"busy_connections", (getter)server_get_busy, NULL, NULL, NULL},
    {"requests", (getter)server_get_requests, NULL,
     "HTTP requests and WebSocket sessions started so far.", NULL},
    {"accept_drops", (getter)server_get_accept_drops, NULL,
     "Connections closed at accept: no memory to serve them.", NULL},
    {"accept_pauses", (getter)server_get_accept_pauses, NULL,
     "Times a listener stopped accepting for a moment: out of file "
     "descriptors.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {Py_tp_doc, "Server(loop_core, app, config): HTTP/WebSocket server."},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "cdaphne._cdaphne.Server",
    .basicsize = sizeof(cd_server_t),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = server_slots,
};

int
cd_server_type_init(PyObject *module, cd_state *st)
{
    st->Server_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &server_spec, NULL);
    if (st->Server_type == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->Server_type);
}
