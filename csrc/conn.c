/* A connection: socket reads, queued writes, the timer, closing.
 *
 * Closing follows libuv's rule: mark CLOSING, uv_close both handles, free
 * in the last close callback.  A write request keeps a strong reference
 * to the Python bytes it sends until its callback runs. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define CD_READ_SIZE 65536
#define CD_MAX_WRITE_BUFS 4

typedef struct {
    uv_write_t req;
    cd_conn_t *conn;   /* borrowed: a conn waits for its writes to close */
    PyObject *keep;    /* strong: bytes the bufs point into, or NULL */
    char *owned;       /* owned: memory the bufs point into, or NULL */
    size_t nbytes;
    int nbufs;
    uv_buf_t bufs[CD_MAX_WRITE_BUFS];
} cd_write_req_t;

static void
conn_on_handle_close(uv_handle_t *h)
{
    cd_conn_t *c = (cd_conn_t *)h->data;
    if (--c->open_handles > 0) {
        return;
    }
    cd_server_t *srv = c->server;
    cd_gil_ensure(srv->loop);
    c->link.prev->next = c->link.next;
    c->link.next->prev = c->link.prev;
    srv->nconns--;
    cd_http1_release_request(c);
    Py_CLEAR(c->client);
    cd_buf_dispose(&c->in);
    cd_buf_dispose(&c->url);
    cd_buf_dispose(&c->hname);
    cd_buf_dispose(&c->hvalue);
    free(c);
    /* The server may be waiting for its last conn to go. */
    Py_DECREF(srv);
}

void
cd_conn_close(cd_conn_t *c)
{
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    c->state = CD_CONN_CLOSING;
    if (c->cycle != NULL) {
        cd_cycle_on_disconnect(c->cycle);
    }
    if (c->ws != NULL) {
        /* websocket.c hooks in here once it exists. */
    }
    uv_close(&c->io.handle, conn_on_handle_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_handle_close);
}

void
cd_conn_close_after_writes(cd_conn_t *c)
{
    if (c->writes_in_flight == 0) {
        cd_conn_close(c);
        return;
    }
    c->flags |= CD_CONN_F_CLOSE_AFTER;
    cd_conn_read_stop(c);
}

static void
conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    cd_conn_t *c = (cd_conn_t *)h->data;
    if (cd_buf_reserve(&c->in, CD_READ_SIZE) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = c->in.base + c->in.len;
    buf->len = c->in.cap - c->in.len;
}

static void
conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cd_conn_t *c = (cd_conn_t *)s->data;
    if (nread == 0 || c->state == CD_CONN_CLOSING) {
        return; /* EAGAIN */
    }
    cd_gil_ensure(c->server->loop);
    if (nread < 0) {
        cd_conn_read_stop(c);
        c->flags |= CD_CONN_F_EOF;
        if (c->state == CD_CONN_UPGRADED) {
            cd_conn_close(c);
        }
        else {
            cd_http1_on_eof(c);
        }
        return;
    }
    c->in.len += (size_t)nread;
    if (c->state == CD_CONN_UPGRADED) {
        return; /* websocket.c reads from here once it exists. */
    }
    cd_http1_parse(c);
}

void
cd_conn_read_start(cd_conn_t *c)
{
    if ((c->flags & (CD_CONN_F_READING | CD_CONN_F_EOF)) ||
        c->state == CD_CONN_CLOSING) {
        return;
    }
    if (uv_read_start(&c->io.stream, conn_on_alloc, conn_on_read) == 0) {
        c->flags |= CD_CONN_F_READING;
    }
}

void
cd_conn_read_stop(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_READING) {
        uv_read_stop(&c->io.stream);
        c->flags &= ~CD_CONN_F_READING;
    }
}

static void
conn_on_timer(uv_timer_t *t)
{
    cd_conn_t *c = cd_container_of(t, cd_conn_t, timer);
    cd_gil_ensure(c->server->loop);
    cd_http1_on_timeout(c);
}

void
cd_conn_timer_start(cd_conn_t *c, uint64_t ms)
{
    if (c->state != CD_CONN_CLOSING) {
        /* Called from Python too, after the cached loop time went stale. */
        uv_update_time(c->timer.loop);
        uv_timer_start(&c->timer, conn_on_timer, ms, 0);
    }
}

void
cd_conn_timer_stop(cd_conn_t *c)
{
    uv_timer_stop(&c->timer);
}

static void
conn_on_write(uv_write_t *req, int status)
{
    cd_write_req_t *w = cd_container_of(req, cd_write_req_t, req);
    cd_conn_t *c = w->conn;
    cd_gil_ensure(c->server->loop);
    Py_XDECREF(w->keep);
    free(w->owned);
    c->writes_in_flight--;
    c->write_queued -= w->nbytes;
    free(w);
    if (status < 0) {
        cd_conn_close(c);
        return;
    }
    if (c->writes_in_flight == 0 && (c->flags & CD_CONN_F_CLOSE_AFTER)) {
        cd_conn_close(c);
        return;
    }
    if (c->write_queued <= c->server->cfg.write_high_water / 2) {
        cd_conn_on_drain(c);
    }
}

void
cd_conn_on_drain(cd_conn_t *c)
{
    if (c->cycle != NULL) {
        cd_cycle_on_drain(c->cycle);
    }
}

int
cd_conn_write(cd_conn_t *c, uv_buf_t *bufs, int nbufs, PyObject *keep,
              char *owned)
{
    if (c->state == CD_CONN_CLOSING) {
        free(owned);
        return UV_ECANCELED;
    }
    size_t total = 0;
    for (int i = 0; i < nbufs; i++) {
        total += bufs[i].len;
    }
    int first = 0;
    if (c->writes_in_flight == 0) {
        int r = uv_try_write(&c->io.stream, bufs, nbufs);
        if (r < 0 && r != UV_EAGAIN) {
            free(owned);
            cd_conn_close(c);
            return r;
        }
        if (r > 0) {
            size_t done = (size_t)r;
            total -= done;
            while (first < nbufs && done >= bufs[first].len) {
                done -= bufs[first].len;
                first++;
            }
            if (first < nbufs) {
                bufs[first].base += done;
                bufs[first].len -= done;
            }
        }
        if (total == 0) {
            free(owned);
            return 0;
        }
    }
    cd_write_req_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        free(owned);
        cd_conn_close(c);
        return UV_ENOMEM;
    }
    w->conn = c;
    w->keep = Py_XNewRef(keep);
    w->owned = owned;
    w->nbytes = total;
    w->nbufs = nbufs - first;
    memcpy(w->bufs, bufs + first, w->nbufs * sizeof(uv_buf_t));
    int r = uv_write(&w->req, &c->io.stream, w->bufs, w->nbufs,
                     conn_on_write);
    if (r < 0) {
        Py_XDECREF(w->keep);
        free(w->owned);
        free(w);
        cd_conn_close(c);
        return r;
    }
    c->writes_in_flight++;
    c->write_queued += total;
    return 0;
}

static PyObject *
conn_peer_tuple(cd_conn_t *c)
{
    if (c->listener->is_unix) {
        Py_RETURN_NONE;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) < 0) {
        Py_RETURN_NONE;
    }
    char host[64];
    int port;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, host, sizeof(host));
        port = ntohs(a->sin6_port);
    }
    else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, host, sizeof(host));
        port = ntohs(a->sin_port);
    }
    return Py_BuildValue("(si)", host, port);
}

cd_conn_t *
cd_conn_new(cd_listener_t *ls)
{
    cd_server_t *srv = ls->server;
    cd_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->server = srv;
    c->listener = ls;
    int r;
    if (ls->is_unix) {
        r = uv_pipe_init(&srv->loop->uv, &c->io.pipe, 0);
    }
    else {
        r = uv_tcp_init(&srv->loop->uv, &c->io.tcp);
    }
    if (r < 0) {
        free(c);
        return NULL;
    }
    uv_timer_init(&srv->loop->uv, &c->timer);
    c->io.handle.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->state = CD_CONN_HEAD;
    /* Linked before accept so that the close path always unlinks. */
    c->link.next = srv->conns.next;
    c->link.prev = &srv->conns;
    srv->conns.next->prev = &c->link;
    srv->conns.next = &c->link;
    srv->nconns++;
    Py_INCREF(srv);

    if (uv_accept(&ls->io.stream, &c->io.stream) < 0) {
        cd_conn_close(c);
        return NULL;
    }
    if (!ls->is_unix) {
        uv_tcp_nodelay(&c->io.tcp, 1);
    }
    c->client = conn_peer_tuple(c);
    if (c->client == NULL) {
        PyErr_Clear();
        c->client = Py_NewRef(Py_None);
    }
    cd_http1_init(c);
    cd_conn_read_start(c);
    cd_conn_timer_start(c, srv->cfg.keepalive_timeout);
    return c;
}
