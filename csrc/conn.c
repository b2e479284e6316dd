/* A connection: socket reads, queued writes, the timers, closing.  It
 * names no protocol: the one it speaks (c->proto, internal.h cd_proto_t:
 * HTTP/1 from cd_conn_ready, WebSocket after the upgrade) gets the bytes
 * read, the EOF, the timer, the drain and the close through its table.
 *
 * Closing follows libuv's rule: mark CLOSING, uv_close every handle, free
 * in the last close callback.  A write request keeps a strong reference
 * to the Python bytes it sends until its callback runs.
 *
 * The byte transport (c->transport, internal.h) sits between the socket
 * and the protocol: on a plain conn it is NULL and reads land in c->in,
 * a flush writes c->outq; a TLS transport decrypts what is read into
 * c->in and turns c->outq into records in its wire queue at flush. */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Lingering close bounds (nginx: lingering_time 30 s, lingering_timeout
 * 5 s; h2o: 3 s): how long and how much input we discard after an error
 * response before closing anyway. */
#define CD_LINGER_MS 2000
#define CD_LINGER_MAX_BYTES (1 << 20)

/* One uv_write of whatever a flush could not send at once.  The arrays
 * follow the struct in the same allocation. */
typedef struct {
    uv_write_t req;
    cd_conn_t *conn; /* borrowed: a conn waits for its writes to close */
    size_t nbytes;
    int n;
    uv_buf_t *bufs;  /* into this allocation */
    PyObject **keep; /* strong refs the bufs point into (or NULL) */
    char **owned;    /* owned blocks the bufs point into (or NULL) */
} cd_write_req_t;

static void outq_clear(cd_outq_t *q, cd_loop_t *loop);
static void outq_dispose(cd_outq_t *q);
static void conn_uncork(cd_conn_t *c);

static void conn_writes_done(cd_conn_t *c);
static void conn_on_timer(uv_timer_t *t);

/* Nothing left to write: no write in flight, nothing queued, no flush
 * asked for (a transport's own bytes wait for one). */
static inline int
conn_all_out(const cd_conn_t *c)
{
    return c->writes_in_flight == 0 && c->outq.n == 0 &&
           !(c->flags & CD_CONN_F_CORKED);
}

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
    if (c->proto != NULL) {
        c->proto->free(c);
    }
    if (c->transport != NULL && c->transport->free != NULL) {
        c->transport->free(c);
    }
    Py_CLEAR(c->client);
    Py_CLEAR(c->sockname);
    outq_dispose(&c->outq);
    cd_buf_dispose(&c->in);
    if (c->flags & CD_CONN_F_HUP_INIT) {
        close(c->hup_fd);
    }
    free(c);
    srv->st->live.conns--;
    /* The server may be waiting for its last conn to go. */
    Py_DECREF(srv);
}

/* The peer ended its side (FIN, close_notify) and we close at once: the
 * transport says goodbye too (TLS close_notify, which a client closing
 * cleanly waits for), in one try that waits for nothing. */
static void
conn_say_goodbye(cd_conn_t *c)
{
    if (!(c->flags & CD_CONN_F_EOF) || c->transport == NULL ||
        c->transport->shutdown == NULL ||
        (c->flags & (CD_CONN_F_TP_SHUT | CD_CONN_F_SHUT_WR)) ||
        c->writes_in_flight > 0) {
        return;
    }
    c->flags |= CD_CONN_F_TP_SHUT;
    if (c->transport->shutdown(c) <= 0) {
        return;
    }
    cd_outq_t *q = c->transport->encode(c);
    if (q != NULL && q->n > 0) {
        (void)uv_try_write(&c->io.stream, q->bufs, q->n);
    }
}

void
cd_conn_close(cd_conn_t *c)
{
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    c->state = CD_CONN_CLOSING;
    conn_uncork(c);
    outq_clear(&c->outq, c->server->loop);
    conn_say_goodbye(c);
    if (c->proto != NULL) {
        c->proto->on_close(c);
    }
    uv_close(&c->io.handle, conn_on_handle_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_handle_close);
    uv_close((uv_handle_t *)&c->proto_timer, conn_on_handle_close);
    if (c->flags & CD_CONN_F_HUP_INIT) {
        uv_close((uv_handle_t *)&c->hup, conn_on_handle_close);
    }
}

/* Every queued byte is out, before our close or FIN: the transport
 * says goodbye (TLS close_notify).  1 if it queued bytes: they are
 * flushed now (this may run in a timer callback, before the loop polls)
 * and conn_writes_done runs again once they are out; the conn may be
 * closed on return. */
static int
conn_transport_shutdown(cd_conn_t *c)
{
    if (c->transport == NULL || c->transport->shutdown == NULL ||
        (c->flags & CD_CONN_F_TP_SHUT)) {
        return 0;
    }
    c->flags |= CD_CONN_F_TP_SHUT;
    if (c->transport->shutdown(c) <= 0) {
        return 0;
    }
    c->flags |= CD_CONN_F_CLOSE_AFTER;
    cd_conn_flush(c);
    return 1;
}

void
cd_conn_close_after_writes(cd_conn_t *c)
{
    if (!conn_all_out(c) || c->transport != NULL) {
        c->flags |= CD_CONN_F_CLOSE_AFTER;
        cd_conn_read_stop(c);
    }
    if (conn_all_out(c) && !conn_transport_shutdown(c)) {
        cd_conn_close(c);
    }
}

void
cd_conn_linger_after_writes(cd_conn_t *c)
{
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    if (c->flags & CD_CONN_F_EOF) {
        cd_conn_close_after_writes(c); /* Nothing more comes. */
        return;
    }
    c->flags |= CD_CONN_F_LINGER | CD_CONN_F_CLOSE_AFTER;
    c->linger_bytes = 0;
    c->in.len = 0;
    cd_conn_read_start(c);
    if (conn_all_out(c)) {
        conn_writes_done(c);
    }
}

static void
conn_on_shutdown(uv_shutdown_t *req, int status)
{
    cd_conn_t *c = (cd_conn_t *)req->handle->data;
    free(req);
    if (status < 0 && c->state != CD_CONN_CLOSING) {
        cd_gil_ensure(c->server->loop);
        cd_conn_close(c);
    }
}

/* Every write is done: close, or send our FIN and linger. */
static void
conn_writes_done(cd_conn_t *c)
{
    if (conn_transport_shutdown(c)) {
        return;
    }
    if (!(c->flags & CD_CONN_F_LINGER)) {
        cd_conn_close(c);
        return;
    }
    c->flags &= ~CD_CONN_F_CLOSE_AFTER;
    c->flags |= CD_CONN_F_SHUT_WR;
    /* Allocated only here: few conns ever linger. */
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req == NULL || uv_shutdown(req, &c->io.stream, conn_on_shutdown) < 0) {
        free(req);
        cd_conn_close(c);
        return;
    }
    uv_update_time(c->timer.loop);
    uv_timer_start(&c->timer, conn_on_timer, CD_LINGER_MS, 0);
}

/* Lingering: input is read and dropped until EOF or the bounds. */
static void
conn_linger_on_read(cd_conn_t *c, ssize_t nread)
{
    if (nread > 0) {
        c->linger_bytes += (size_t)nread;
        if (c->linger_bytes <= CD_LINGER_MAX_BYTES) {
            return;
        }
    }
    else {
        c->flags |= CD_CONN_F_EOF;
    }
    cd_conn_read_stop(c);
    c->flags &= ~CD_CONN_F_LINGER;
    if (c->flags & CD_CONN_F_SHUT_WR) {
        cd_conn_close(c);
    }
    /* Else CD_CONN_F_CLOSE_AFTER closes once the response is out. */
}

/* Input buffers.  A conn that holds no unparsed bytes reads into the
 * loop's one read buffer (loop->read_buf), and c->in views it for the
 * length of the read callback: parsers see c->in as always.  What they
 * leave (a partial frame or head, a pipelined request) then moves into
 * a buffer of the conn's own, sized to it, which goes once it is empty
 * again.  An idle conn keeps no input buffer: at 64 KiB each, 5,000
 * idle WebSockets held 300 MiB of heap (and their pages spread every
 * other allocation apart).  Nothing reallocates or frees c->in inside a
 * read callback: libuv calls alloc only between read callbacks, and the
 * conn is freed in a close callback.  A read takes at most the server's
 * --read-size bytes; the loop's buffer is as large as the largest of its
 * servers' (grown between read callbacks, when nothing points into it). */
static void
conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    cd_conn_t *c = (cd_conn_t *)h->data;
    if (c->transport != NULL && !(c->flags & CD_CONN_F_LINGER)) {
        c->transport->alloc(c, buf);
        return;
    }
    cd_loop_t *loop = c->server->loop;
    size_t size = c->server->cfg.read_size;
    if (c->in.len == 0) {
        cd_buf_dispose(&c->in);
        if (loop->read_buf == NULL || loop->read_buf_size < size) {
            free(loop->read_buf);
            loop->read_buf = malloc(size);
            loop->read_buf_size = loop->read_buf != NULL ? size : 0;
        }
        if (loop->read_buf != NULL) {
            buf->base = loop->read_buf;
            buf->len = size;
            return;
        }
    }
    if (cd_buf_reserve(&c->in, size) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = c->in.base + c->in.len;
    buf->len = size;
}

/* After a read into the loop's buffer: the bytes the parsers left move
 * into a buffer of the conn's own (none if nothing is left). */
static void
conn_keep_input(cd_conn_t *c)
{
    cd_buf_t rest = {NULL, 0, 0};
    if (c->in.len > 0 && cd_buf_append(&rest, c->in.base, c->in.len) < 0) {
        c->in = rest;
        cd_conn_close(c); /* Out of memory: the bytes are lost. */
        return;
    }
    c->in = rest;
}

/* The peer closed its side or reset the connection. */
static void
conn_on_eof(cd_conn_t *c)
{
    cd_conn_read_stop(c);
    c->flags |= CD_CONN_F_EOF;
    if (c->proto != NULL) {
        c->proto->on_eof(c);
    }
    else {
        cd_conn_close(c);
    }
}

/* Raw bytes through the transport: 1 if c->in grew (parse it), 2 if it
 * grew and the peer then ended (parse it, then EOF), else 0 (more bytes
 * needed, or the conn closed or ended). */
static int
conn_transport_read(cd_conn_t *c, const uv_buf_t *buf, size_t nread)
{
    int r = c->transport->read(c, buf, nread);
    if (r > 0 && c->state != CD_CONN_CLOSING) {
        return r;
    }
    if (c->state == CD_CONN_CLOSING) {
        return 0;
    }
    if (r == UV_EOF) {
        conn_on_eof(c);
    }
    else if (r < 0) {
        cd_conn_close(c);
    }
    return 0;
}

static void
conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cd_conn_t *c = (cd_conn_t *)s->data;
    if (nread == 0 || c->state == CD_CONN_CLOSING) {
        return; /* EAGAIN */
    }
    cd_gil_ensure(c->server->loop);
    if (c->flags & CD_CONN_F_LINGER) {
        conn_linger_on_read(c, nread);
        return;
    }
    if (nread == UV_EOF) {
        conn_on_eof(c); /* The peer's FIN: maybe only a half-close. */
        return;
    }
    if (nread < 0) {
        cd_conn_close(c); /* A reset: the peer is gone. */
        return;
    }
    int then_eof = 0;
    char *shared = c->server->loop->read_buf;
    if (c->transport == NULL) {
        if (buf->base == shared) {
            c->in.base = shared; /* borrowed: until conn_keep_input */
            c->in.cap = buf->len;
        }
        c->in.len += (size_t)nread;
    }
    else {
        int r = conn_transport_read(c, buf, (size_t)nread);
        if (r <= 0) {
            return;
        }
        then_eof = r == 2;
    }
    if (c->proto != NULL) {
        c->proto->on_read(c);
    }
    if (buf->base == shared) {
        conn_keep_input(c);
    }
    else if (c->in.len == 0) {
        cd_buf_dispose(&c->in);
    }
    if (then_eof && c->state != CD_CONN_CLOSING) {
        conn_on_eof(c);
    }
}

static void conn_on_hup(uv_poll_t *h, int status, int events);
static int conn_hup_init(cd_conn_t *c);

/* Watches for the peer leaving while nothing reads (c->hup). */
static void
conn_hup_watch(cd_conn_t *c)
{
    if (c->state == CD_CONN_CLOSING || (c->flags & CD_CONN_F_EOF)) {
        return;
    }
    if (!(c->flags & CD_CONN_F_HUP_INIT) && conn_hup_init(c) < 0) {
        return; /* Without the watch: the timers or the app's end close it. */
    }
    uv_poll_start(&c->hup, UV_DISCONNECT, conn_on_hup);
}

void
cd_conn_read_start(cd_conn_t *c)
{
    c->flags &= ~CD_CONN_F_WATCH_HUP; /* A pause ends. */
    if ((c->flags & CD_CONN_F_HELD) && !(c->flags & CD_CONN_F_LINGER)) {
        c->flags |= CD_CONN_F_WANT_READ; /* Once the output drains; the
                                            hold's watch goes on. */
        return;
    }
    if (c->flags & CD_CONN_F_HUP_INIT) {
        uv_poll_stop(&c->hup);
    }
    if ((c->flags & (CD_CONN_F_READING | CD_CONN_F_EOF)) ||
        c->state == CD_CONN_CLOSING) {
        return;
    }
    if ((c->flags & (CD_CONN_F_CLOSE_AFTER | CD_CONN_F_SHUT_WR)) &&
        !(c->flags & CD_CONN_F_LINGER)) {
        return; /* Closing: nothing more is parsed. */
    }
    if (uv_read_start(&c->io.stream, conn_on_alloc, conn_on_read) == 0) {
        c->flags |= CD_CONN_F_READING;
    }
}

void
cd_conn_read_stop(cd_conn_t *c)
{
    c->flags &= ~(CD_CONN_F_WANT_READ | CD_CONN_F_WATCH_HUP);
    if (c->flags & CD_CONN_F_READING) {
        uv_read_stop(&c->io.stream);
        c->flags &= ~CD_CONN_F_READING;
    }
    if ((c->flags & CD_CONN_F_HUP_INIT) && !(c->flags & CD_CONN_F_HELD)) {
        uv_poll_stop(&c->hup);
    }
}

void
cd_conn_read_hold(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_HELD) {
        return;
    }
    if (c->flags & CD_CONN_F_READING) {
        uv_read_stop(&c->io.stream);
        c->flags &= ~CD_CONN_F_READING;
        c->flags |= CD_CONN_F_WANT_READ;
    }
    c->flags |= CD_CONN_F_HELD;
    if (!(c->flags & CD_CONN_F_LINGER)) {
        conn_hup_watch(c); /* A peer that leaves is still seen. */
    }
}

/* The output drained: reading resumes if the protocol wants it; else
 * the watch stays only if the protocol paused (cd_conn_read_pause). */
static void
conn_read_release(cd_conn_t *c)
{
    c->flags &= ~CD_CONN_F_HELD;
    if (c->flags & CD_CONN_F_WANT_READ) {
        c->flags &= ~CD_CONN_F_WANT_READ;
        cd_conn_read_start(c);
    }
    else if ((c->flags & CD_CONN_F_HUP_INIT) &&
             !(c->flags & CD_CONN_F_WATCH_HUP)) {
        uv_poll_stop(&c->hup);
    }
}

/* Only UV_DISCONNECT is asked for: the peer's FIN (even behind unread
 * data: EPOLLRDHUP), or a hang-up or error.  A pending socket error (a
 * reset) closes the conn; a FIN is an EOF, as when reading, unless the
 * conn already closes once its writes are out (they, or the timers, end
 * it: a peer that half-closed may still read them). */
static void
conn_on_hup(uv_poll_t *h, int status, int events)
{
    cd_conn_t *c = (cd_conn_t *)h->data;
    int err = 0;
    socklen_t len = sizeof(err);
    (void)events;
    cd_gil_ensure(c->server->loop);
    uv_poll_stop(h);
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    if (status < 0 ||
        getsockopt(c->hup_fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 ||
        err != 0) {
        cd_conn_close(c);
        return;
    }
    if (!(c->flags & CD_CONN_F_CLOSE_AFTER)) {
        conn_on_eof(c);
    }
}

static int
conn_hup_init(cd_conn_t *c)
{
    uv_os_fd_t fd;
    int r = uv_fileno(&c->io.handle, &fd);
    if (r < 0) {
        return r;
    }
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) {
        return UV_EMFILE;
    }
    r = uv_poll_init_socket(c->timer.loop, &c->hup, dup_fd);
    if (r < 0) {
        close(dup_fd);
        return r;
    }
    c->hup.data = c;
    c->hup_fd = dup_fd;
    c->open_handles++;
    c->flags |= CD_CONN_F_HUP_INIT;
    return 0;
}

void
cd_conn_read_pause(cd_conn_t *c)
{
    cd_conn_read_stop(c);
    if (c->state == CD_CONN_CLOSING || (c->flags & CD_CONN_F_EOF)) {
        return;
    }
    c->flags |= CD_CONN_F_WATCH_HUP;
    conn_hup_watch(c);
}

static void
conn_on_timer(uv_timer_t *t)
{
    cd_conn_t *c = cd_container_of(t, cd_conn_t, timer);
    cd_gil_ensure(c->server->loop);
    if (c->flags & (CD_CONN_F_LINGER | CD_CONN_F_SHUT_WR)) {
        cd_conn_close(c); /* Lingered long enough. */
        return;
    }
    if (c->proto != NULL) {
        c->proto->on_timeout(c);
    }
    else {
        cd_conn_close(c); /* The transport never got ready. */
    }
}

void
cd_conn_timer_start(cd_conn_t *c, uint64_t ms)
{
    if (c->state != CD_CONN_CLOSING && !(c->flags & CD_CONN_F_SHUT_WR)) {
        /* Called from Python too, after the cached loop time went stale. */
        uv_update_time(c->timer.loop);
        uv_timer_start(&c->timer, conn_on_timer, ms, 0);
    }
}

void
cd_conn_timer_stop(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_SHUT_WR) {
        return; /* The lingering close's own timer. */
    }
    uv_timer_stop(&c->timer);
}

/* ---- write blocks --------------------------------------------------
 * An owned pointer with CD_BLOCK_TAG set is a block of CD_BLOCK_SIZE
 * bytes (cd_conn_block): once its write is done it goes back to the
 * loop's spares instead of free(), so a stream of small frames stops
 * costing a malloc and a free each (about 140 instructions). */
#define CD_BLOCK_TAG ((uintptr_t)1)

/* Under ASan a spare block is poisoned while it waits, so a use after its
 * write let it go is still reported, as it would be after free(). */
#if defined(__SANITIZE_ADDRESS__)
#define CD_ASAN_POISON 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CD_ASAN_POISON 1
#endif
#endif
#ifdef CD_ASAN_POISON
#include <sanitizer/asan_interface.h>
#define block_poison(p) ASAN_POISON_MEMORY_REGION((p), CD_BLOCK_SIZE)
#define block_unpoison(p) ASAN_UNPOISON_MEMORY_REGION((p), CD_BLOCK_SIZE)
#else
#define block_poison(p) ((void)(p))
#define block_unpoison(p) ((void)(p))
#endif

char *
cd_conn_block(cd_conn_t *c)
{
    cd_loop_t *loop = c->server->loop;
    if (loop->nspare_blocks > 0) {
        char *p = loop->spare_blocks[--loop->nspare_blocks];
        block_unpoison(p);
        return p;
    }
    return malloc(CD_BLOCK_SIZE);
}

/* Frees an owned pointer of a write: a tagged block back to loop's spares
 * while it is open and has room (loop may be NULL: freed). */
static void
owned_free(cd_loop_t *loop, char *p)
{
    if (!((uintptr_t)p & CD_BLOCK_TAG)) {
        free(p);
        return;
    }
    p = (char *)((uintptr_t)p & ~CD_BLOCK_TAG);
    if (loop != NULL && !loop->closed &&
        loop->nspare_blocks < CD_SPARE_BLOCKS) {
        block_poison(p);
        loop->spare_blocks[loop->nspare_blocks++] = p;
        return;
    }
    free(p);
}

void
cd_conn_blocks_free(cd_loop_t *loop)
{
    while (loop->nspare_blocks > 0) {
        char *p = loop->spare_blocks[--loop->nspare_blocks];
        block_unpoison(p);
        free(p);
    }
}

static void
write_req_free(cd_write_req_t *w)
{
    cd_loop_t *loop = w->conn->server->loop;
    w->conn->server->st->live.write_reqs--;
    for (int i = 0; i < w->n; i++) {
        Py_XDECREF(w->keep[i]);
        owned_free(loop, w->owned[i]);
    }
    free(w);
}

static void
conn_on_write(uv_write_t *req, int status)
{
    cd_write_req_t *w = cd_container_of(req, cd_write_req_t, req);
    cd_conn_t *c = w->conn;
    cd_gil_ensure(c->server->loop);
    c->writes_in_flight--;
    c->write_queued -= w->nbytes;
    c->inflight_bufs -= (size_t)w->n;
    write_req_free(w);
    if (status < 0) {
        cd_conn_close(c);
        return;
    }
    if (conn_all_out(c) && (c->flags & CD_CONN_F_CLOSE_AFTER)) {
        conn_writes_done(c);
        return;
    }
    if (c->write_queued <= c->server->cfg.write_high_water / 2) {
        cd_conn_on_drain(c);
    }
}

void
cd_conn_on_drain(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_HELD) {
        conn_read_release(c);
    }
    if (c->proto != NULL) {
        c->proto->on_drain(c);
    }
}

/* loop: where released blocks go (NULL: freed). */
static void
outq_clear(cd_outq_t *q, cd_loop_t *loop)
{
    for (int i = 0; i < q->n; i++) {
        Py_XDECREF(q->keep[i]);
        owned_free(loop, q->owned[i]);
    }
    q->n = 0;
}

static void
outq_dispose(cd_outq_t *q)
{
    outq_clear(q, NULL);
    free(q->bufs);
    free(q->keep);
    free(q->owned);
    memset(q, 0, sizeof(*q));
}

static int
outq_reserve(cd_outq_t *q, int extra)
{
    if (q->n + extra <= q->cap) {
        return 0;
    }
    int cap = q->cap ? q->cap : 8;
    while (cap < q->n + extra) {
        cap *= 2;
    }
    uv_buf_t *b = realloc(q->bufs, cap * sizeof(*b));
    if (b == NULL) {
        return UV_ENOMEM;
    }
    q->bufs = b;
    PyObject **k = realloc(q->keep, cap * sizeof(*k));
    if (k == NULL) {
        return UV_ENOMEM;
    }
    q->keep = k;
    char **o = realloc(q->owned, cap * sizeof(*o));
    if (o == NULL) {
        return UV_ENOMEM;
    }
    q->owned = o;
    q->cap = cap;
    return 0;
}

static void
conn_uncork(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_CORKED) {
        c->cork_link.prev->next = c->cork_link.next;
        c->cork_link.next->prev = c->cork_link.prev;
        c->flags &= ~CD_CONN_F_CORKED;
        c->server->loop->ncorked--;
    }
}

/* Appends bufs to q; the last entry carries the references for all of
 * them: a flush releases an entry only once it and every entry before it
 * went out whole, so no buffer of the group is released early. */
static inline __attribute__((always_inline)) int
outq_push(cd_outq_t *q, uv_buf_t *bufs, int nbufs, PyObject *keep, char *owned,
          size_t *queued)
{
    if (outq_reserve(q, nbufs) < 0) {
        owned_free(NULL, owned);
        return UV_ENOMEM;
    }
    for (int i = 0; i < nbufs; i++) {
        q->bufs[q->n] = bufs[i];
        q->keep[q->n] = i == nbufs - 1 ? Py_XNewRef(keep) : NULL;
        q->owned[q->n] = i == nbufs - 1 ? owned : NULL;
        *queued += bufs[i].len;
        q->n++;
    }
    return 0;
}

void
cd_conn_want_flush(cd_conn_t *c)
{
    if (!(c->flags & CD_CONN_F_CORKED)) {
        cd_loop_t *loop = c->server->loop;
        c->cork_link.next = &loop->corked;
        c->cork_link.prev = loop->corked.prev;
        loop->corked.prev->next = &c->cork_link;
        loop->corked.prev = &c->cork_link;
        c->flags |= CD_CONN_F_CORKED;
        loop->ncorked++;
    }
}

/* cd_conn_write, in line in both its callers: a block's write (one
 * buffer, nothing to keep) folds down to one entry pushed. */
static inline __attribute__((always_inline)) int
conn_write(cd_conn_t *c, uv_buf_t *bufs, int nbufs, PyObject *keep,
           char *owned)
{
    if (c->state == CD_CONN_CLOSING ||
        (c->flags & (CD_CONN_F_SHUT_WR | CD_CONN_F_TP_SHUT))) {
        owned_free(c->server->loop, owned);
        return UV_ECANCELED;
    }
    int r = outq_push(&c->outq, bufs, nbufs, keep, owned, &c->write_queued);
    if (r == 0) {
        cd_conn_want_flush(c);
    }
    return r;
}

int
cd_conn_write(cd_conn_t *c, uv_buf_t *bufs, int nbufs, PyObject *keep,
              char *owned)
{
    return conn_write(c, bufs, nbufs, keep, owned);
}

int
cd_conn_write_block(cd_conn_t *c, char *block, size_t len)
{
    uv_buf_t b = cd_uvbuf(block, len);
    return conn_write(c, &b, 1, NULL,
                      (char *)((uintptr_t)block | CD_BLOCK_TAG));
}

void
cd_conn_outq_clear(cd_conn_t *c)
{
    for (int i = 0; i < c->outq.n; i++) {
        c->write_queued -= c->outq.bufs[i].len;
    }
    outq_clear(&c->outq, c->server->loop);
}

int
cd_conn_wire_push(cd_conn_t *c, cd_outq_t *wire, uv_buf_t *bufs, int nbufs,
                  PyObject *keep, char *owned)
{
    return outq_push(wire, bufs, nbufs, keep, owned, &c->write_queued);
}

void
cd_conn_wire_dispose(cd_outq_t *wire)
{
    outq_dispose(wire);
}

/* Writes q out: what the socket takes now, the rest in one uv_write.
 * 0, or -1 if the conn closed. */
static int
conn_write_queue(cd_conn_t *c, cd_outq_t *q)
{
    int first = 0;
    size_t done = 0;
    if (c->writes_in_flight == 0) {
        int r = uv_try_write(&c->io.stream, q->bufs, q->n);
        if (r < 0 && r != UV_EAGAIN) {
            cd_conn_close(c);
            return -1;
        }
        done = r > 0 ? (size_t)r : 0;
        c->write_queued -= done;
        /* Release what went out whole; trim the entry cut in two. */
        while (first < q->n && done >= q->bufs[first].len) {
            done -= q->bufs[first].len;
            first++;
        }
        if (first < q->n) {
            q->bufs[first].base += done;
            q->bufs[first].len -= done;
        }
    }
    if (first == q->n) {
        outq_clear(q, c->server->loop);
        return 0;
    }
    int n = q->n - first;
    cd_write_req_t *w =
        malloc(sizeof(*w) +
               n * (sizeof(uv_buf_t) + sizeof(PyObject *) + sizeof(char *)));
    if (w == NULL) {
        cd_conn_close(c);
        return -1;
    }
    c->server->st->live.write_reqs++;
    w->conn = c;
    w->n = n;
    w->bufs = (uv_buf_t *)(w + 1);
    w->keep = (PyObject **)(w->bufs + n);
    w->owned = (char **)(w->keep + n);
    w->nbytes = 0;
    for (int i = 0; i < n; i++) {
        w->bufs[i] = q->bufs[first + i];
        w->keep[i] = q->keep[first + i];
        w->owned[i] = q->owned[first + i];
        w->nbytes += w->bufs[i].len;
    }
    /* The sent entries' references go; the rest moved to w. */
    for (int i = 0; i < first; i++) {
        Py_XDECREF(q->keep[i]);
        owned_free(c->server->loop, q->owned[i]);
    }
    q->n = 0;
    int r = uv_write(&w->req, &c->io.stream, w->bufs, w->n, conn_on_write);
    if (r < 0) {
        c->write_queued -= w->nbytes;
        write_req_free(w);
        cd_conn_close(c);
        return -1;
    }
    c->writes_in_flight++;
    c->inflight_bufs += (size_t)n;
    return 0;
}

void
cd_conn_flush(cd_conn_t *c)
{
    conn_uncork(c);
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    cd_outq_t *q = &c->outq;
    if (c->transport != NULL) {
        q = c->transport->encode(c);
        if (q == NULL) {
            cd_conn_close(c);
            return;
        }
    }
    if (q->n == 0) {
        /* Plain: nothing happened.  A transport may have nothing left
         * to send (its shutdown hook queued nothing). */
        if (conn_all_out(c) && (c->flags & CD_CONN_F_CLOSE_AFTER)) {
            conn_writes_done(c);
        }
        return;
    }
    if (conn_write_queue(c, q) < 0) {
        return;
    }
    if (conn_all_out(c) && (c->flags & CD_CONN_F_CLOSE_AFTER)) {
        conn_writes_done(c);
        return;
    }
    if (c->write_queued <= c->server->cfg.write_high_water / 2) {
        cd_conn_on_drain(c);
    }
}

static PyObject *
conn_peer_tuple(cd_conn_t *c)
{
    if (c->flags & CD_CONN_F_UNIX) {
        Py_RETURN_NONE;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) < 0) {
        Py_RETURN_NONE;
    }
    return cd_server_addr_tuple(&ss);
}

/* --limit-concurrency: a connection over the limit is answered 503 once
 * it is ready (a TLS one after its handshake, so the client reads why).
 * A half-done TLS handshake holds ~46 KiB until --header-timeout, so a
 * client could hold any number past the limit: TLS connections over it
 * are let in up to as many again as the limit, and at least
 * CD_OVER_LIMIT_TLS_MIN (a small limit still answers a burst); beyond,
 * one is closed at accept.  Returns 1 for that; c is counted already. */
#define CD_OVER_LIMIT_TLS_MIN 64
static int
conn_over_limit(cd_conn_t *c, const cd_listener_t *ls)
{
    int64_t limit = c->server->cfg.limit_concurrency;
    int64_t n = c->server->nconns;
    if (limit == 0 || n <= limit) {
        return 0;
    }
    c->flags |= CD_CONN_F_OVER_LIMIT; /* Refused once ready. */
    int64_t extra =
        limit > CD_OVER_LIMIT_TLS_MIN ? limit : CD_OVER_LIMIT_TLS_MIN;
    return ls->transport != NULL && n > limit + extra;
}

cd_conn_t *
cd_conn_new(cd_listener_t *ls)
{
    cd_server_t *srv = ls->server;
    if (srv->test_fail_conn_new > 0) {
        srv->test_fail_conn_new--;
        return NULL;
    }
    cd_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    srv->st->live.conns++;
    c->server = srv;
    c->sockname = Py_NewRef(ls->sockname);
    if (ls->is_unix) {
        c->flags |= CD_CONN_F_UNIX;
    }
    int r;
    if (ls->is_unix) {
        r = uv_pipe_init(&srv->loop->uv, &c->io.pipe, 0);
    }
    else {
        r = uv_tcp_init(&srv->loop->uv, &c->io.tcp);
    }
    if (r < 0) {
        Py_DECREF(c->sockname);
        free(c);
        srv->st->live.conns--;
        return NULL;
    }
    uv_timer_init(&srv->loop->uv, &c->timer);
    uv_timer_init(&srv->loop->uv, &c->proto_timer);
    c->io.handle.data = c;
    c->timer.data = c;
    c->proto_timer.data = c;
    c->open_handles = 3;
    c->state = CD_CONN_HEAD;
    /* Linked before accept so that the close path always unlinks. */
    c->link.next = srv->conns.next;
    c->link.prev = &srv->conns;
    srv->conns.next->prev = &c->link;
    srv->conns.next = &c->link;
    srv->nconns++;
    int turn_away = conn_over_limit(c, ls);
    Py_INCREF(srv);

    if (uv_accept(&ls->io.stream, &c->io.stream) < 0) {
        cd_conn_close(c);
        return NULL;
    }
    if (turn_away) {
        cd_conn_close(c); /* Freed by its close callbacks, as above. */
        return c;
    }
    if (!ls->is_unix) {
        uv_tcp_nodelay(&c->io.tcp, 1);
    }
    if (ls->transport != NULL) {
        c->transport = ls->transport;
        if (c->transport->open(c, ls) < 0) {
            cd_conn_close(c);
            return NULL;
        }
    }
    c->client = conn_peer_tuple(c);
    if (c->client == NULL) {
        PyErr_Clear();
        c->client = Py_NewRef(Py_None);
    }
    cd_conn_read_start(c);
    cd_conn_timer_start(c, srv->cfg.keepalive_timeout);
    if (c->transport == NULL) {
        cd_conn_ready(c); /* A plain conn is ready at accept. */
    }
    return c;
}

void
cd_conn_ready(cd_conn_t *c)
{
    const cd_proto_t *proto = c->server->first_proto;
    if (c->proto != NULL || c->state == CD_CONN_CLOSING) {
        return;
    }
    if (proto->open(c) < 0) {
        cd_conn_close(c);
        return;
    }
    c->proto = proto;
    if (c->flags & CD_CONN_F_OVER_LIMIT) {
        /* Answered after the TLS handshake on a TLS conn, so the client
         * reads why. */
        cd_conn_read_stop(c);
        proto->refuse(c);
    }
}

void
cd_conn_set_proto(cd_conn_t *c, const cd_proto_t *proto, void *data)
{
    c->proto = proto;
    c->proto_data = data;
}

int
cd_conn_activity(const cd_conn_t *c)
{
    if (c->proto == NULL) {
        return 0; /* The transport is not ready: nothing read yet. */
    }
    /* A protocol without the hook is waited for (busy, never cut). */
    int act = c->proto->activity != NULL ? c->proto->activity(c) : CD_ACT_BUSY;
    if (c->flags &
        (CD_CONN_F_CLOSE_AFTER | CD_CONN_F_LINGER | CD_CONN_F_SHUT_WR)) {
        act &= ~CD_ACT_CLOSE_NOW; /* Bounded: left to finish. */
    }
    return act;
}

void
cd_conn_shutdown(cd_conn_t *c)
{
    if (c->proto != NULL && c->state != CD_CONN_CLOSING) {
        c->proto->shutdown(c);
    }
    else {
        cd_conn_close(c);
    }
}

void
cd_conn_stop(cd_conn_t *c)
{
    if (c->proto != NULL && c->proto->stop != NULL &&
        c->state != CD_CONN_CLOSING) {
        c->proto->stop(c);
    }
}
