/* HTTP/1.1 on llhttp: the protocol a connection speaks first
 * (cd_http1_proto, installed when the conn is ready).  Request heads into
 * scopes, keep-alive, pipelining, limits, the minimum body rate and the
 * simple error responses; the WebSocket upgrade hands the conn over to
 * cd_ws_proto.  Its parser state is private (cd_http1_t, the conn's
 * proto_data), freed with the conn or at the upgrade.
 *
 * The parser pauses (HPE_PAUSED) at the end of every request so that a
 * pipelined request waits in c->in until the current response is done;
 * reading goes on meanwhile so that a disconnect is still seen. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* HTTP/1's state on a connection: c->proto_data while c->proto is
 * cd_http1_proto. */
typedef struct {
    llhttp_t parser;
    cd_conn_t *conn; /* borrowed: the conn frees us (http1_free) */
    /* The request being parsed. */
    cd_buf_t url;               /* owned */
    cd_buf_t hname;             /* owned: current header name */
    cd_buf_t hvalue;            /* owned: current header value */
    PyObject *headers;          /* strong: list of (name, value) or NULL */
    PyObject *root_path_header; /* strong: Daphne-Root-Path (bytes) or NULL */
    size_t head_bytes;          /* head bytes on the wire (see count_head) */
    size_t head_seen;           /* of them, to the last span counted */
    uint64_t body_bytes;        /* request body bytes seen */
    size_t ext_bytes;           /* the current chunk's extension bytes */
    /* Chunk framing (size lines, leading zeros, CRLFs) between two
     * chunks' data, in offsets on the connection's byte stream:
     * base_off is c->in.base's during an execute. */
    uint64_t base_off;       /* bytes parsed before c->in.base */
    uint64_t span_end;       /* end of the head's last token */
    uint64_t frame_start;    /* where the current framing run began */
    unsigned last_chunk : 1; /* the 0-size chunk came: trailers follow */
    unsigned last_size : 1;  /* paused at the end of its size line */
    unsigned ext_semi : 1;   /* a token value ended at a ';' */
    unsigned ext_next : 1;   /* paused after it (value_complete) */
    unsigned nheaders;       /* header fields so far, trailers included */
    unsigned nhost;          /* Host fields */
    unsigned nte;            /* Transfer-Encoding fields */
    unsigned te_other : 1;   /* one names a coding other than chunked */
    int fail_status;         /* set by a parser callback that failed */
    unsigned in_value : 2;   /* in a value; 2: it ended with the buffer */
    unsigned in_head : 1;    /* between message begin and headers done */
    unsigned expect_continue : 1;
    unsigned ws_upgrade : 1; /* Upgrade: websocket was asked for */
    /* The minimum request body rate (cd_http1_body_wait), on
     * c->proto_timer. */
    uint64_t rate_waited; /* ms the app waited for body, before rate_since */
    uint64_t rate_since;  /* loop ms the current wait began */
    uint64_t rate_bytes;  /* body bytes that came while the app waited */
    /* Loop ms of the peer's FIN, or of a whole request parsed after it
     * (fin_grace_arm), on c->proto_timer once the body is complete. */
    uint64_t fin_at;
} cd_http1_t;

static void http1_parse(cd_http1_t *h);
static void fin_grace_arm(cd_conn_t *c);

/* The conn's HTTP/1 state, or NULL once the conn is no longer HTTP/1
 * (a WebSocket, closing before it was ready). */
static cd_http1_t *
http1_of(cd_conn_t *c)
{
    return c->proto == &cd_http1_proto ? c->proto_data : NULL;
}

static int
fail(llhttp_t *p, int status)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    h->fail_status = status;
    return -1;
}

/* Counts the head as it arrives on the wire against --max-header-size:
 * every byte llhttp took since the message began (request line,
 * separators, whitespace, CRLFs), not only the names and values, which
 * 60,000 "a:" lines would hold to a few bytes each.  While the head is
 * being read, h->head_bytes is what earlier reads brought and `at + n`
 * is how far this one got; a trailer after a chunked body adds its bytes. */
static int
count_head(cd_http1_t *h, const char *at, size_t n)
{
    cd_conn_t *c = h->conn;
    size_t seen;
    if (h->in_head) {
        seen = h->head_bytes + (size_t)(at + n - c->in.base);
    }
    else {
        seen = h->head_bytes += n;
    }
    if (seen > c->server->cfg.max_head) {
        return fail(&h->parser, 431);
    }
    h->head_seen = seen;
    h->span_end = h->base_off + (uint64_t)(at + n - c->in.base);
    return 0;
}

/* ---- chunk framing ---------------------------------------------------
 *
 * We read no chunk extension (RFC 9112 7.1.1 lets a server ignore them),
 * yet their bytes are neither body nor head: nothing else bounds them,
 * nor the leading zeros of a chunk size (llhttp took 100,000).  One
 * chunk's extensions (names, values and a separator each) get
 * CD_HTTP1_MAX_CHUNK_EXT bytes, as in Node (kMaxChunkExtensionsSize, on
 * llhttp too), Bun and h11 (uvicorn's max_incomplete_event_size bounds
 * the whole chunk-size line); the framing between two chunks' data (CRLF,
 * size, extensions, CRLF) gets 1 KiB more.  Beyond either, 400 and
 * close. */
#define CD_HTTP1_MAX_CHUNK_EXT (16 * 1024)
#define CD_HTTP1_MAX_CHUNK_FRAMING (CD_HTTP1_MAX_CHUNK_EXT + 1024)

/* The framing run from h->frame_start ends at stream offset `off` (or
 * has reached it): within the bound? */
static int
check_framing(cd_http1_t *h, uint64_t off)
{
    if ((h->parser.flags & F_CHUNKED) && !h->last_chunk &&
        off - h->frame_start > CD_HTTP1_MAX_CHUNK_FRAMING) {
        return fail(&h->parser, 400);
    }
    return 0;
}

static int
on_message_begin(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    cd_conn_t *c = h->conn;
    h->url.len = 0;
    h->hname.len = 0;
    h->hvalue.len = 0;
    h->in_value = 0;
    h->head_bytes = 0;
    h->head_seen = 0;
    h->ext_bytes = 0;
    h->last_chunk = 0;
    h->in_head = 1;
    h->nheaders = 0;
    h->nhost = 0;
    h->nte = 0;
    h->te_other = 0;
    h->expect_continue = 0;
    h->ws_upgrade = 0;
    Py_CLEAR(h->root_path_header);
    Py_XSETREF(h->headers, PyList_New(0));
    if (h->headers == NULL) {
        return fail(p, 500);
    }
    if (!(c->flags & CD_CONN_F_GOT_BYTES)) {
        c->flags |= CD_CONN_F_GOT_BYTES;
        cd_conn_timer_start(c, c->server->cfg.header_timeout);
    }
    return 0;
}

static int
on_url(llhttp_t *p, const char *at, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    if (count_head(h, at, n) < 0) {
        return -1;
    }
    return cd_buf_append(&h->url, at, n) < 0 ? fail(p, 500) : 0;
}

static int
header_is(const cd_buf_t *name, const char *lower)
{
    size_t n = strlen(lower);
    return name->len == n && strncasecmp(name->base, lower, n) == 0;
}

static int
value_has_token(const cd_buf_t *v, const char *token)
{
    size_t n = strlen(token);
    for (size_t i = 0; i + n <= v->len; i++) {
        if (strncasecmp(v->base + i, token, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* RFC 9110 5.5: a field value is HTAB, SP, VCHAR and obs-text.  Also
 * reject NEL (0x85), which Python's str.splitlines() and others take for a
 * line break, as Daphne 4.2.3 does (its header-injection fix). */
static int
request_value_ok(const cd_buf_t *v)
{
    for (size_t i = 0; i < v->len; i++) {
        unsigned char ch = (unsigned char)v->base[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f || ch == 0x85) {
            return 0;
        }
    }
    return 1;
}

static void
header_reset(cd_http1_t *h)
{
    h->hname.len = 0;
    h->hvalue.len = 0;
    h->in_value = 0;
}

/* A header the request keeps: counted, noted, appended to h->headers.
 * Steals name and value. */
static int
header_keep(cd_http1_t *h, PyObject *name, PyObject *value)
{
    if (header_is(&h->hname, "host")) {
        h->nhost++;
    }
    else if (header_is(&h->hname, "transfer-encoding")) {
        h->nte++;
        h->te_other |= !(h->hvalue.len == 7 &&
                         strncasecmp(h->hvalue.base, "chunked", 7) == 0);
    }
    else if (header_is(&h->hname, "expect") &&
             value_has_token(&h->hvalue, "100-continue")) {
        h->expect_continue = 1;
    }
    else if (header_is(&h->hname, "upgrade") &&
             value_has_token(&h->hvalue, "websocket")) {
        h->ws_upgrade = 1;
    }
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(name);
    Py_DECREF(value);
    if (pair == NULL) {
        return -1;
    }
    int r = PyList_Append(h->headers, pair);
    Py_DECREF(pair);
    header_reset(h);
    return r;
}

/* Append the header gathered in hname/hvalue to h->headers; -1 on a
 * memory error, -2 on a value to answer with 400. */
static int
flush_header(cd_http1_t *h)
{
    if (h->hname.len == 0) {
        return 0;
    }
    if (!request_value_ok(&h->hvalue)) {
        return -2;
    }
    if (h->headers == NULL ||
        memchr(h->hname.base, '_', h->hname.len) != NULL) {
        /* A trailer of a chunked body (the scope is gone): dropped.  A
         * name with "_" is dropped too, as Daphne does (CVE-2015-0219):
         * Django maps both X-Auth_User and X-Auth-User to META's
         * HTTP_X_AUTH_USER, so a client could pass one off as the header
         * a proxy sets. */
        header_reset(h);
        return 0;
    }
    PyObject *name = PyBytes_FromStringAndSize(NULL, h->hname.len);
    if (name == NULL) {
        return -1;
    }
    char *dst = PyBytes_AS_STRING(name);
    for (size_t i = 0; i < h->hname.len; i++) {
        char ch = h->hname.base[i];
        dst[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    /* llhttp leaves optional whitespace at the end of a value. */
    while (h->hvalue.len > 0 && (h->hvalue.base[h->hvalue.len - 1] == ' ' ||
                                 h->hvalue.base[h->hvalue.len - 1] == '\t')) {
        h->hvalue.len--;
    }
    PyObject *value = PyBytes_FromStringAndSize(
        h->hvalue.base ? h->hvalue.base : "", h->hvalue.len);
    if (value == NULL) {
        Py_DECREF(name);
        return -1;
    }
    if (header_is(&h->hname, "daphne-root-path")) {
        /* A proxy's root_path for this request (Daphne's header): it sets
         * the scope's root_path and is not passed on in headers. */
        Py_XSETREF(h->root_path_header, value);
        Py_DECREF(name);
        header_reset(h);
        return 0;
    }
    return header_keep(h, name, value);
}

static int
on_header_field(llhttp_t *p, const char *at, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    if (count_head(h, at, n) < 0) {
        return -1;
    }
    int r = h->in_value ? flush_header(h) : 0;
    if (r < 0) {
        return fail(p, r == -2 ? 400 : 500);
    }
    /* A new field (not the next piece of a split name): count it. */
    unsigned max = h->conn->server->cfg.max_headers;
    if (h->hname.len == 0 && ++h->nheaders > max && max != 0) {
        return fail(p, 431);
    }
    return cd_buf_append(&h->hname, at, n) < 0 ? fail(p, 500) : 0;
}

static int
on_header_value(llhttp_t *p, const char *at, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    cd_conn_t *c = h->conn;
    if (count_head(h, at, n) < 0) {
        return -1;
    }
    /* llhttp splits a value only at the end of the buffer it parses and
     * at an obs-fold, which RFC 9112 lets a server reject: do that.
     * in_value 2: the last piece ended where the buffer did. */
    if (h->in_value && !(h->in_value == 2 && at == c->in.base)) {
        return fail(p, 400);
    }
    h->in_value = at + n == c->in.base + c->in.len ? 2 : 1;
    return cd_buf_append(&h->hvalue, at, n) < 0 ? fail(p, 500) : 0;
}

/* llhttp 8.1 takes ": x" as a header with an empty name. */
static int
on_header_value_complete(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    return h->hname.len == 0 ? fail(p, 400) : 0;
}

/* llhttp takes HTTP/2.0 (and 0.9) request lines; we speak 1.x only. */
static int
on_version_complete(llhttp_t *p)
{
    return p->http_major != 1 ? fail(p, 505) : 0;
}

/* The status a head that llhttp took is refused with, or 0.
 * RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0;
 * 6.1: Transfer-Encoding in HTTP/1.0 is a framing error, and chunked is
 * applied once.  llhttp frames "gzip, chunked" as chunked, which would
 * hand the app a body still gzip-coded: we decode no coding but chunked,
 * and 6.1 says to answer 501 to one we do not understand. */
static int
check_head(cd_http1_t *h)
{
    llhttp_t *p = &h->parser;
    int http10 = p->http_major == 1 && p->http_minor == 0;
    if (h->nhost > 1 || (h->nhost == 0 && !http10)) {
        return 400;
    }
    if (http10 && (p->flags & F_TRANSFER_ENCODING)) {
        return 400;
    }
    if (h->te_other) {
        return 501;
    }
    return h->nte > 1 ? 400 : 0;
}

/* New reference: the cycle of the request whose head was just parsed;
 * NULL with an exception. */
static cd_cycle_t *
request_cycle(cd_http1_t *h, int websocket)
{
    llhttp_t *p = &h->parser;
    cd_scope_req_t req = {
        .url = h->url.base,
        .url_len = h->url.len,
        .http10 = p->http_major == 1 && p->http_minor == 0,
        .method = p->method,
        .websocket = websocket,
        .headers = h->headers,
        .root_path_header = h->root_path_header,
    };
    PyObject *scope = cd_scope_http(h->conn, &req);
    Py_CLEAR(h->headers); /* The scope has them now. */
    if (scope == NULL) {
        return NULL;
    }
    cd_cycle_t *cy = cd_cycle_new(h->conn, scope);
    Py_DECREF(scope);
    if (cy == NULL) {
        return NULL;
    }
    cy->http10 = req.http10;
    /* RFC 9110 10.1.1: ignore 100-continue from HTTP/1.0 clients. */
    cy->expect_continue = h->expect_continue && !cy->http10;
    cy->is_head = p->method == HTTP_HEAD;
    cy->keep_alive = llhttp_should_keep_alive(p);
    return cy;
}

static int
on_headers_complete(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    cd_conn_t *c = h->conn;
    cd_server_t *srv = c->server;
    int r = flush_header(h);
    if (r < 0) {
        return fail(p, r == -2 ? 400 : 500);
    }
    /* The CRLF ending the last field and the empty line came after the
     * last span counted: a head 1 to 4 bytes over the bound was served. */
    if (h->head_seen + 4 > srv->cfg.max_head) {
        return fail(p, 431);
    }
    h->in_head = 0;
    h->frame_start = h->span_end; /* The body begins (CRLFs aside). */
    int refuse = check_head(h);
    if (refuse) {
        return fail(p, refuse);
    }
    cd_conn_timer_stop(c);
    h->rate_waited = 0;
    h->rate_bytes = 0;
    if (srv->cfg.max_body && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > srv->cfg.max_body) {
        return fail(p, 413);
    }
    int websocket = h->ws_upgrade && p->upgrade;
    if (!websocket) {
        /* Upgrades other than WebSocket (h2c...) are plain requests. */
        p->upgrade = 0;
    }
    cd_cycle_t *cy = request_cycle(h, websocket);
    if (cy == NULL) {
        return fail(p, 500);
    }
    if (websocket) {
        /* RFC 6455 4.1: an HTTP/1.1 GET (autobahn, under Daphne, answers
         * an HTTP/1.0 handshake 505; websockets 400). */
        int status = p->method != HTTP_GET ? 400
                     : cy->http10          ? 505
                                           : cd_ws_begin(c, cy);
        if (status) {
            Py_DECREF(cy);
            return fail(p, status);
        }
        c->cycle = cy;
        if (cd_loop_defer_start(srv->loop, (PyObject *)cy) < 0) {
            return fail(p, 500);
        }
        return 0;
    }
    c->cycle = cy; /* The conn's strong reference. */
    c->state = CD_CONN_ACTIVE;
    if (cd_loop_defer_start(srv->loop, (PyObject *)cy) < 0) {
        return fail(p, 500);
    }
    if (srv->cfg.http_timeout) {
        cd_conn_timer_start(c, srv->cfg.http_timeout);
    }
    return 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    cd_conn_t *c = h->conn;
    cd_cycle_t *cy = c->cycle;
    uint64_t off = h->base_off + (uint64_t)(at - c->in.base);
    if (check_framing(h, off) < 0) {
        return -1;
    }
    h->frame_start = off + n;
    if (cy == NULL || cy->disconnected) {
        return 0; /* The response is done: drop the rest. */
    }
    h->body_bytes += n;
    if (c->flags & CD_CONN_F_BODY_WAIT) {
        h->rate_bytes += n;
    }
    if (c->server->cfg.max_body && h->body_bytes > c->server->cfg.max_body) {
        return fail(p, 413);
    }
    if (cd_buf_append(&cy->body, at, n) < 0) {
        return fail(p, 500);
    }
    if (cy->body.len > c->server->cfg.body_high_water) {
        cd_conn_read_stop(c);
    }
    cd_cycle_on_body(cy);
    return 0;
}

/* ---- chunk extensions (bounds: see check_framing) ----------------- */

static int
count_chunk_ext(llhttp_t *p, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    h->ext_bytes += n;
    return h->ext_bytes > CD_HTTP1_MAX_CHUNK_EXT ? fail(p, 400) : 0;
}

static int
on_chunk_extension_name(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return count_chunk_ext(p, n);
}

/* A name or value ended: its ';' or '=' counts. */
static int
on_chunk_extension_complete(llhttp_t *p)
{
    return count_chunk_ext(p, 1);
}

/* llhttp 8.1 (Debian bookworm's) ends a token value at a ';' by taking
 * the ';' and going to the state that expects one (chunk_size_otherwise),
 * so that ";a=b;c=d", valid (RFC 9112 7.1.1), fails on the "c".  A
 * quoted value or a name followed by ';' goes to chunk_extensions, as
 * later llhttp does here too.  We see the value's end: its span stops at
 * the byte that ended it (unless the read ended there: then the span
 * goes on in the next execute, from its first byte). */
static int
on_chunk_extension_value(llhttp_t *p, const char *at, size_t n)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    const cd_conn_t *c = h->conn;
    h->ext_semi = at + n < c->in.base + c->in.len && at[n] == ';';
    return count_chunk_ext(p, n);
}

/* ... and once the value is complete, llhttp has taken that ';': we
 * pause, and http1_execute feeds the ';' to the state that expects it
 * before the bytes after it, which llhttp then reads as the next
 * extension, with the checks of any other. */
static int
on_chunk_extension_value_complete(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    if (count_chunk_ext(p, 1) < 0) {
        return -1;
    }
    if (h->ext_semi) {
        h->ext_semi = 0;
        h->ext_next = 1;
        return HPE_PAUSED;
    }
    return 0;
}

/* The chunk-size line ended: the next chunk starts from 0.  After the
 * last chunk, trailers follow: they count as head (count_head).  No data
 * follows the last chunk's size line to show where it ended (on_body
 * does for the others), and llhttp tells a callback without a span no
 * position: we pause, once a request, for http1_execute to measure it
 * (llhttp_get_error_pos) and set last_chunk. */
static int
on_chunk_header(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    h->ext_bytes = 0;
    if (p->content_length == 0) {
        h->last_size = 1;
        return HPE_PAUSED;
    }
    return 0;
}

static int
on_message_complete(llhttp_t *p)
{
    cd_http1_t *h = cd_container_of(p, cd_http1_t, parser);
    cd_conn_t *c = h->conn;
    if (c->cycle != NULL) {
        c->cycle->body_complete = 1;
        cd_cycle_on_body(c->cycle);
        if (c->flags & CD_CONN_F_EOF) {
            /* Pipelined before the FIN: its own grace from now. */
            h->fin_at = uv_now(c->proto_timer.loop);
            fin_grace_arm(c);
        }
    }
    c->flags |= CD_CONN_F_PAUSED;
    return HPE_PAUSED;
}

/* ---- a FIN during a request -----------------------------------------
 *
 * The peer's FIN after a whole request is a half-close (`nc -N`, health
 * checkers: it still reads) or a departure (close()): the wire tells them
 * apart only when a write fails.  Django listens for http.disconnect while
 * its view runs and drops the response when it comes, so telling it at
 * the FIN left half-closed clients unanswered.  An app whose response has
 * not started gets --half-close-grace from the FIN to start it; then a
 * receive() says http.disconnect (a long poll hears of a departure).  Once
 * its response has started, its writes tell (a reset fails them).  A
 * response already started at the FIN is told at once (a stream). */

static void
fin_grace_on_timer(uv_timer_t *t)
{
    cd_conn_t *c = cd_container_of(t, cd_conn_t, proto_timer);
    cd_gil_ensure(c->server->loop);
    cd_cycle_t *cy = c->cycle;
    if (http1_of(c) == NULL || c->state != CD_CONN_ACTIVE || cy == NULL ||
        !(c->flags & CD_CONN_F_EOF)) {
        return;
    }
    cy->fin_told = 1;
    cd_cycle_wake_receiver(cy);
}

/* Starts (or restarts, for what is left) the grace of c's request after
 * the peer's FIN; nothing if there is no such request or it was told.
 * The grace ends when it is over or, once the response has started, at
 * the next loop turn: an app that started its response and then waits in
 * receive() must hear of the FIN (a half-closed peer's socket gives no
 * other sign until a write fails, and such an app may write nothing). */
static void
fin_grace_arm(cd_conn_t *c)
{
    cd_http1_t *h = http1_of(c);
    cd_cycle_t *cy = c->cycle;
    if (h == NULL || cy == NULL || c->state != CD_CONN_ACTIVE ||
        !(c->flags & CD_CONN_F_EOF) || !cy->body_complete ||
        cy->disconnected || cy->fin_told) {
        return;
    }
    uint64_t now = uv_now(c->proto_timer.loop);
    uint64_t due = h->fin_at + c->server->cfg.half_close_grace;
    uint64_t wait = cy->resp == CD_RESP_START && due > now ? due - now : 0;
    uv_timer_start(&c->proto_timer, fin_grace_on_timer, wait, 0);
}

/* ---- minimum request body rate --------------------------------------
 *
 * Kestrel's MinRequestBodyDataRate, counted only while the app waits in
 * receive() for body bytes (never while reading is paused for
 * backpressure or the app is busy elsewhere): once it has waited
 * body_rate_grace in all, the bytes that came while it waited must be at
 * least min_body_rate per second of that waiting. */

static uint64_t
body_rate_waited(cd_http1_t *h, uint64_t now)
{
    uint64_t w = h->rate_waited;
    if (h->conn->flags & CD_CONN_F_BODY_WAIT) {
        w += now - h->rate_since;
    }
    return w;
}

static void body_rate_on_timer(uv_timer_t *t);

/* Wake up when the rate would fall below the minimum if nothing more
 * came. */
static void
body_rate_arm(cd_http1_t *h, uint64_t now)
{
    cd_conn_t *c = h->conn;
    const cd_config_t *cfg = &c->server->cfg;
    uint64_t at = h->rate_bytes * 1000 / cfg->min_body_rate + 1;
    if (at < cfg->body_rate_grace) {
        at = cfg->body_rate_grace;
    }
    uint64_t waited = body_rate_waited(h, now);
    uv_timer_start(&c->proto_timer, body_rate_on_timer,
                   at > waited ? at - waited : 0, 0);
}

static void
body_rate_on_timer(uv_timer_t *t)
{
    cd_conn_t *c = cd_container_of(t, cd_conn_t, proto_timer);
    cd_gil_ensure(c->server->loop);
    cd_http1_t *h = http1_of(c);
    cd_cycle_t *cy = c->cycle;
    if (h == NULL || !(c->flags & CD_CONN_F_BODY_WAIT) ||
        c->state != CD_CONN_ACTIVE || cy == NULL) {
        return;
    }
    if (cy->recv_fut == NULL) {
        cd_http1_body_wait(c, 0); /* The receive() went away. */
        return;
    }
    const cd_config_t *cfg = &c->server->cfg;
    uint64_t now = uv_now(t->loop);
    uint64_t waited = body_rate_waited(h, now);
    if (waited < cfg->body_rate_grace ||
        h->rate_bytes * 1000 >= cfg->min_body_rate * waited) {
        body_rate_arm(h, now);
        return;
    }
    cd_http1_body_wait(c, 0);
    /* 408 if the response has not started, else a close; the app gets
     * http.disconnect. */
    cd_cycle_respond_error(cy, 408, "Request Timeout");
}

void
cd_http1_body_wait(cd_conn_t *c, int waiting)
{
    cd_http1_t *h = http1_of(c);
    if (h == NULL || c->server->cfg.min_body_rate == 0 ||
        c->state == CD_CONN_CLOSING ||
        waiting == !!(c->flags & CD_CONN_F_BODY_WAIT)) {
        return;
    }
    /* Called from Python too, after the cached loop time went stale. */
    uv_update_time(c->proto_timer.loop);
    uint64_t now = uv_now(c->proto_timer.loop);
    if (waiting) {
        c->flags |= CD_CONN_F_BODY_WAIT;
        h->rate_since = now;
        body_rate_arm(h, now);
    }
    else {
        h->rate_waited = body_rate_waited(h, now);
        c->flags &= ~CD_CONN_F_BODY_WAIT;
        uv_timer_stop(&c->proto_timer);
        fin_grace_arm(c); /* The timer is the FIN's again, if it came. */
    }
}

/* ---- the protocol table ------------------------------------------- */

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_version_complete = on_version_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
    .on_chunk_extension_name = on_chunk_extension_name,
    .on_chunk_extension_value = on_chunk_extension_value,
    .on_chunk_extension_name_complete = on_chunk_extension_complete,
    .on_chunk_extension_value_complete = on_chunk_extension_value_complete,
};

static int
http1_open(cd_conn_t *c)
{
    cd_http1_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return UV_ENOMEM;
    }
    llhttp_init(&h->parser, HTTP_REQUEST, &settings);
    h->conn = c;
    c->proto_data = h;
    return 0;
}

/* Frees the parser state (the conn is freed, or it is upgraded). */
static void
http1_free(cd_http1_t *h)
{
    Py_CLEAR(h->headers);
    Py_CLEAR(h->root_path_header);
    cd_buf_dispose(&h->url);
    cd_buf_dispose(&h->hname);
    cd_buf_dispose(&h->hvalue);
    free(h);
}

static void
http1_on_free(cd_conn_t *c)
{
    cd_cycle_conn_release(c);
    if (c->proto_data != NULL) {
        http1_free(c->proto_data);
        c->proto_data = NULL;
    }
}

static void
http1_refuse(cd_conn_t *c)
{
    cd_http1_simple_response(c, 503, "Service Unavailable");
}

static void
http1_on_read(cd_conn_t *c)
{
    http1_parse(c->proto_data);
}

static void
http1_on_timeout(cd_conn_t *c)
{
    if (c->state == CD_CONN_ACTIVE && c->cycle != NULL) {
        cd_cycle_on_timeout(c->cycle);
        return;
    }
    /* Idle keep-alive, or a head that took too long: just close. */
    cd_conn_close(c);
}

/* Busy once a head started; closed at once unless the app has it. */
static int
http1_activity(const cd_conn_t *c)
{
    int act = 0;
    if (c->state == CD_CONN_ACTIVE || c->state == CD_CONN_UPGRADED ||
        (c->flags & CD_CONN_F_GOT_BYTES)) {
        act |= CD_ACT_BUSY;
    }
    if (c->state == CD_CONN_HEAD &&
        (c->flags & (CD_CONN_F_GOT_BYTES | CD_CONN_F_SERVED))) {
        act |= CD_ACT_CLOSE_NOW;
    }
    return act;
}

/* The peer's FIN (or TLS close_notify): its input ended, which need not
 * end the exchange (a half-close: `printf ... | nc -N`, health checkers,
 * some proxies).  A request the app has whole is answered, and the ones
 * pipelined before the FIN after it; then the conn closes (http1_after_eof).
 * Meanwhile a receive() after the full body returns http.disconnect, as
 * when the client left: the wire cannot tell the two apart until a write
 * fails.  Anything else (idle, a head or body cut short) ends here. */
static void
http1_on_eof(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (c->state == CD_CONN_ACTIVE && cy != NULL && cy->body_complete &&
        !cy->disconnected) {
        if (cy->resp != CD_RESP_START) {
            cy->fin_told = 1; /* A stream: told at once. */
            cd_cycle_wake_receiver(cy);
            return;
        }
        http1_of(c)->fin_at = uv_now(c->proto_timer.loop);
        fin_grace_arm(c);
        return;
    }
    cd_conn_close(c);
}

/* After a response on a conn whose peer sent its FIN: what was pipelined
 * before it is parsed; once no request is left whole, the conn closes
 * after its writes, so nothing half-closed outlives its last answer. */
static void
http1_after_eof(cd_conn_t *c)
{
    if (!(c->flags & CD_CONN_F_EOF) || c->state == CD_CONN_CLOSING ||
        (c->flags & (CD_CONN_F_CLOSE_AFTER | CD_CONN_F_LINGER))) {
        return;
    }
    if (c->state == CD_CONN_HEAD ||
        (c->cycle != NULL && !c->cycle->body_complete)) {
        /* Nothing more, or a body that can never end: the app of the
         * latter gets http.disconnect when the conn closes. */
        cd_conn_close_after_writes(c);
    }
}

const cd_proto_t cd_http1_proto = {
    .name = "http/1.1",
    .open = http1_open,
    .on_read = http1_on_read,
    .on_eof = http1_on_eof,
    .on_timeout = http1_on_timeout,
    .on_drain = cd_cycle_conn_on_drain,
    .on_close = cd_cycle_conn_on_close,
    .shutdown = cd_conn_close,
    .activity = http1_activity,
    .free = http1_on_free,
    .refuse = http1_refuse,
};

/* The upgrade went through (cd_ws_begin): the rest of the stream is
 * WebSocket's. */
static void
http1_upgrade(cd_http1_t *h)
{
    cd_conn_t *c = h->conn;
    http1_free(h);
    cd_conn_set_proto(c, &cd_ws_proto, NULL);
}

/* The answer to a request that broke the parser: status and body. */
static const char *
parse_error_body(int status)
{
    switch (status) {
    case 426: return "WebSocket version 13 required";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    case 501: return "Not Implemented";
    case 413: return "Payload Too Large";
    case 500:
        cd_log_exception("Error while parsing a request");
        return "Internal Server Error";
    default: return "Bad Request";
    }
}

static void
parse_failed(cd_http1_t *h)
{
    cd_conn_t *c = h->conn;
    int status = h->fail_status ? h->fail_status : 400;
    c->in.len = 0;
    cd_cycle_t *cy = c->cycle;
    if (cy != NULL && (cy->resp != CD_RESP_START || cy->disconnected)) {
        cd_conn_close(c); /* Too late for an error response. */
        return;
    }
    const char *body = parse_error_body(status);
    if (cy != NULL && cd_cycle_is_http(cy)) {
        /* A body the app is reading broke: we answer for the app, which
         * gets http.disconnect now, not when the lingering close ends. */
        cd_cycle_respond_error(cy, status, body);
        return;
    }
    cd_http1_simple_response(c, status, body);
}

/* Runs llhttp over c->in, through the pauses on_chunk_header makes at
 * the end of a last chunk's size line (the framing run ends there) and
 * on_chunk_extension_value_complete makes after a token value's ';'. */
static llhttp_errno_t
http1_execute(cd_http1_t *h)
{
    cd_conn_t *c = h->conn;
    const char *at = c->in.base;
    const char *end = c->in.base + c->in.len;
    llhttp_errno_t err;
    for (;;) {
        err = llhttp_execute(&h->parser, at, (size_t)(end - at));
        if (err == HPE_PAUSED && h->ext_next) {
            h->ext_next = 0;
            at = llhttp_get_error_pos(&h->parser);
            llhttp_resume(&h->parser);
            err = llhttp_execute(&h->parser, ";", 1);
            if (err != HPE_OK) {
                return err;
            }
            continue;
        }
        if (err != HPE_PAUSED || !h->last_size) {
            return err;
        }
        h->last_size = 0;
        at = llhttp_get_error_pos(&h->parser);
        if (check_framing(h, h->base_off + (uint64_t)(at - c->in.base)) < 0) {
            return HPE_USER;
        }
        h->last_chunk = 1;
        llhttp_resume(&h->parser);
    }
}

/* Parses what c->in holds; called after reads and after a response. */
static void
http1_parse(cd_http1_t *h)
{
    cd_conn_t *c = h->conn;
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    if (c->flags & CD_CONN_F_PAUSED) {
        /* A pipelined request waits; don't buffer without bound, but
         * still see the client leave: the app may wait for that. */
        if (c->in.len > c->server->cfg.max_head) {
            cd_conn_read_pause(c);
        }
        return;
    }
    if (c->in.len == 0) {
        return;
    }
    h->fail_status = 0;
    llhttp_errno_t err = http1_execute(h);
    if (err == HPE_OK && h->in_head) {
        /* The head goes on in the next read: what this one brought
         * counts, up to its last byte. */
        h->head_bytes += c->in.len;
        if (h->head_bytes > c->server->cfg.max_head) {
            h->fail_status = 431;
            err = HPE_USER;
        }
    }
    if (err == HPE_OK && !h->in_head &&
        check_framing(h, h->base_off + c->in.len) < 0) {
        err = HPE_USER; /* A size line that goes on and on. */
    }
    if (err == HPE_OK) {
        h->base_off += c->in.len;
        c->in.len = 0;
        return;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&h->parser);
        h->base_off += (uint64_t)(pos - c->in.base);
        cd_buf_consume(&c->in, (size_t)(pos - c->in.base));
        if (c->state == CD_CONN_UPGRADED) {
            http1_upgrade(h); /* The rest is WebSocket frames. */
            return;
        }
        if (c->in.len > c->server->cfg.max_head) {
            cd_conn_read_pause(c);
        }
        return;
    }
    parse_failed(h);
}

void
cd_http1_response_done(cd_conn_t *c, int keep_alive)
{
    cd_http1_t *h = http1_of(c);
    cd_cycle_t *cy = c->cycle;
    c->cycle = NULL;
    if (cy != NULL) {
        cy->conn = NULL;
    }
    int body_read = cy == NULL || cy->body_complete;
    if (!body_read) {
        /* The conn closes with the body unread: receive() must not wait
         * for the rest of it. */
        cd_cycle_on_disconnect(cy);
    }
    Py_XDECREF(cy);
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    cd_http1_body_wait(c, 0);
    cd_conn_timer_stop(c);
    if (!body_read) {
        /* The client may still be sending the body: let it read the
         * response instead of an RST. */
        cd_conn_linger_after_writes(c);
        return;
    }
    if (!keep_alive || c->server->closing || h == NULL) {
        /* h NULL: a WebSocket handshake answered with a response. */
        cd_conn_close_after_writes(c);
        return;
    }
    c->state = CD_CONN_HEAD;
    c->flags &= ~(CD_CONN_F_GOT_BYTES | CD_CONN_F_PAUSED);
    c->flags |= CD_CONN_F_SERVED;
    h->body_bytes = 0;
    llhttp_resume(&h->parser);
    cd_conn_timer_start(c, c->server->cfg.keepalive_timeout);
    cd_conn_read_start(c);
    http1_parse(h);
    http1_after_eof(c);
}

const char *
cd_http1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

/* Writes "date: <IMF-fixdate>\r\n" into out (>= 64 bytes); returns the
 * length.  The text changes once a second, so it is cached. */
size_t
cd_http1_date(char *out)
{
    static time_t cached_at;
    static char cached[64];
    static size_t cached_len;
    time_t now = time(NULL);
    if (now != cached_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        cached_len = strftime(cached, sizeof(cached),
                              "date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        cached_at = now;
    }
    memcpy(out, cached, cached_len);
    return cached_len;
}

void
cd_http1_simple_response(cd_conn_t *c, int status, const char *body)
{
    static const char ctype[] = "content-type: text/plain; charset=utf-8\r\n";
    /* RFC 6455 4.4: a version refused is answered with the one we speak. */
    static const char ctype_ws[] =
        "content-type: text/plain; charset=utf-8\r\n"
        "sec-websocket-version: 13\r\n";
    size_t blen = strlen(body);
    cd_http1_head_t h = {
        .status = status,
        .final = 1,
        .first_len = blen,
        .server_header = c->server->server_header,
        .fixed = status == 426 ? ctype_ws : ctype,
        .fixed_len = status == 426 ? sizeof(ctype_ws) - 1 : sizeof(ctype) - 1,
        .keep_alive = 0,
    };
    cd_buf_t out = {0};
    if (cd_http1_head_write(&out, &h, NULL) < 0 ||
        cd_buf_append(&out, body, blen) < 0) {
        PyErr_Clear();
        cd_buf_dispose(&out);
        cd_conn_close(c);
        return;
    }
    uv_buf_t b = cd_uvbuf(out.base, out.len);
    cd_conn_read_stop(c);
    if (cd_conn_write(c, &b, 1, NULL, out.base) == 0) {
        cd_conn_linger_after_writes(c);
    }
}

/* ---- the response: 100-continue, head, body framing ----------------
 *
 * cycle.c takes the app's http.response.* messages apart; the bytes they
 * become on an HTTP/1 connection are written here. */

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
static const char crlf[] = "\r\n";
static const char last_chunk[] = "0\r\n\r\n";
static const char crlf_last_chunk[] = "\r\n0\r\n\r\n";

void
cd_http1_continue(cd_cycle_t *cy)
{
    if (cy->expect_continue && !cy->continue_sent &&
        cy->resp == CD_RESP_START && cy->conn != NULL && !cy->body_complete) {
        cy->continue_sent = 1;
        uv_buf_t b = cd_uvbuf_const(continue_line, sizeof(continue_line) - 1);
        cd_conn_write(cy->conn, &b, 1, NULL, NULL);
    }
}

/* The peer sent its FIN and no pipelined byte waits: this response is
 * the conn's last (it says "connection: close"). */
static int
last_before_eof(const cd_cycle_t *cy)
{
    const cd_conn_t *c = cy->conn;
    return c != NULL && (c->flags & CD_CONN_F_EOF) && c->in.len == 0;
}

/* Appends the response head to out (the head writer below).  `final`
 * says whether the first body message is also the last (then the length
 * is known). */
static int
build_head(cd_cycle_t *cy, size_t first_len, int final, cd_buf_t *out)
{
    cd_server_t *srv = cy->server;
    cd_http1_head_t h = {
        .status = cy->status,
        .http10 = cy->http10,
        .is_head = cy->is_head,
        .final = final,
        .first_len = first_len,
        .server_header = srv->server_header,
        .keep_alive = cy->keep_alive && !srv->closing && !last_before_eof(cy),
    };
    if (cd_http1_head_write(out, &h, cy->resp_headers) < 0) {
        return -1;
    }
    cy->keep_alive = h.keep_alive;
    cy->chunked = h.chunked;
    cy->content_length = h.content_length;
    return 0;
}

static int
bodyless(const cd_cycle_t *cy)
{
    return cy->is_head || cy->status == 204 || cy->status == 304;
}

/* The head (if any, in `head`, owned), the body and the chunk framing
 * around it, in one cd_conn_write.  1 if the conn is closed. */
static int
write_framed(cd_cycle_t *cy, cd_buf_t *head, PyObject *body, size_t blen,
             int more_body)
{
    uv_buf_t bufs[3];
    int nb = 0;
    if (cy->chunked && blen > 0) {
        /* The chunk-size line goes after the head, in the same block. */
        char line[24];
        int ll = snprintf(line, sizeof(line), "%zx\r\n", blen);
        if (cd_buf_append(head, line, (size_t)ll) < 0) {
            cd_buf_dispose(head);
            PyErr_NoMemory();
            return -1;
        }
    }
    if (head->len) {
        bufs[nb++] = cd_uvbuf(head->base, head->len);
    }
    if (blen > 0) {
        bufs[nb++] = cd_uvbuf(PyBytes_AS_STRING(body), blen);
    }
    if (cy->chunked && (blen > 0 || !more_body)) {
        if (blen > 0 && !more_body) {
            bufs[nb++] =
                cd_uvbuf_const(crlf_last_chunk, sizeof(crlf_last_chunk) - 1);
        }
        else if (blen > 0) {
            bufs[nb++] = cd_uvbuf_const(crlf, sizeof(crlf) - 1);
        }
        else {
            bufs[nb++] = cd_uvbuf_const(last_chunk, sizeof(last_chunk) - 1);
        }
    }
    if (nb == 0) {
        cd_buf_dispose(head);
        return 0;
    }
    return cd_conn_write(cy->conn, bufs, nb, blen > 0 ? body : NULL,
                         head->base) < 0
               ? 1
               : 0;
}

int
cd_http1_write_body(cd_cycle_t *cy, PyObject *body, int more_body)
{
    size_t blen = (size_t)PyBytes_GET_SIZE(body);
    cd_buf_t head = {0}; /* owned: the head and a chunk-size line */
    int first = cy->resp == CD_RESP_HEAD;
    if (first) {
        if (build_head(cy, blen, !more_body, &head) < 0) {
            cd_buf_dispose(&head);
            return -1;
        }
        cy->resp = CD_RESP_BODY;
    }
    if (bodyless(cy)) {
        blen = 0;
    }
    if (cy->content_length >= 0 &&
        cy->sent + blen > (uint64_t)cy->content_length) {
        cd_buf_dispose(&head);
        if (first) {
            cy->resp = CD_RESP_HEAD; /* Nothing written: a 500 still fits. */
        }
        PyErr_SetString(PyExc_RuntimeError,
                        "response body longer than its Content-Length");
        return -1;
    }
    cy->sent += blen;
    if (!more_body) {
        cy->resp = CD_RESP_DONE;
    }
    if (cy->disconnected || cy->conn == NULL) {
        cd_buf_dispose(&head); /* Daphne ignores sends after a disconnect. */
        return 1;
    }
    return write_framed(cy, &head, body, blen, more_body);
}

int
cd_http1_keep_alive(const cd_cycle_t *cy)
{
    if (cy->content_length >= 0 && cy->sent < (uint64_t)cy->content_length &&
        !bodyless(cy)) {
        return 0; /* Short body: the client can't find the end. */
    }
    return cy->keep_alive;
}

/* ---- the response head writer ------------------------------------- */

static int
head_name_is(PyObject *name, const char *lower)
{
    size_t n = strlen(lower);
    return (size_t)PyBytes_GET_SIZE(name) == n &&
           strncasecmp(PyBytes_AS_STRING(name), lower, n) == 0;
}

/* RFC 9110 token characters: what a header name may hold. */
static int
is_token(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= ' ' || ch >= 127 || strchr("\"(),/:;<=>?@[\\]{}", ch)) {
            return 0;
        }
    }
    return n > 0;
}

/* RFC 9110 5.5: a field value holds no control character but HTAB (CR,
 * LF and NUL would split or end the head; uvicorn refuses the others
 * too, and so do h11 and Go). */
int
cd_http1_head_value_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* New reference: `item` as a checked (bytes, bytes) tuple. */
static PyObject *
head_pair(PyObject *item)
{
    PyObject *pair = PySequence_Tuple(item); /* One read of the item. */
    if (pair == NULL || PyTuple_GET_SIZE(pair) != 2) {
        if (pair == NULL && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL; /* MemoryError, or the item's own error. */
        }
        Py_XDECREF(pair);
        PyErr_Clear();
        PyErr_Format(
            PyExc_ValueError,
            "Header %R expected to be a [name, value] pair of `bytes`", item);
        return NULL;
    }
    PyObject *n = PyTuple_GET_ITEM(pair, 0);
    PyObject *v = PyTuple_GET_ITEM(pair, 1);
    /* ValueError with Daphne's message (its server.check_headers_type). */
    if (!PyBytes_Check(n)) {
        PyErr_Format(PyExc_ValueError,
                     "Header name '%S' expected to be `bytes`, but got `%S`",
                     n, (PyObject *)Py_TYPE(n));
    }
    else if (!PyBytes_Check(v)) {
        PyErr_Format(PyExc_ValueError,
                     "Header value '%S' expected to be `bytes`, but got `%S`",
                     v, (PyObject *)Py_TYPE(v));
    }
    else if (!is_token(PyBytes_AS_STRING(n), (size_t)PyBytes_GET_SIZE(n))) {
        PyErr_Format(PyExc_ValueError, "invalid header name %R", n);
    }
    else if (!cd_http1_head_value_ok(PyBytes_AS_STRING(v),
                                     (size_t)PyBytes_GET_SIZE(v))) {
        PyErr_Format(PyExc_ValueError,
                     "invalid character in the value of header %R", n);
    }
    else {
        return pair;
    }
    Py_DECREF(pair);
    return NULL;
}

PyObject *
cd_http1_head_headers(PyObject *headers)
{
    if (headers == NULL || headers == Py_None) {
        return PyList_New(0);
    }
    PyObject *list = PySequence_List(headers); /* One read of the list. */
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *pair = head_pair(PyList_GET_ITEM(list, i));
        if (pair == NULL || PyList_SetItem(list, i, pair) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

static int
head_append(cd_buf_t *out, const char *p, size_t n)
{
    if (cd_buf_append(out, p, n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int
head_append_str(cd_buf_t *out, const char *s)
{
    return head_append(out, s, strlen(s));
}

/* What the app's headers said, for head_scan's mask. */
enum {
    CD_HEAD_HAS_CL = 1,
    CD_HEAD_HAS_TE = 2,
    CD_HEAD_HAS_SERVER = 4,
    CD_HEAD_HAS_DATE = 8,
    CD_HEAD_HAS_CLOSE = 16,      /* a connection field naming close */
    CD_HEAD_HAS_KEEP_ALIVE = 32, /* one naming keep-alive */
};

/* An app's content-length: 1*DIGIT with optional whitespace around it
 * (RFC 9110 8.6), or -1.  strtoll would also take "+5" and "\v5", which
 * go on the wire as the app wrote them. */
static int64_t
head_length(const char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0, digits = 0;
    int64_t v = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
        if (digits == 18) {
            return -1;
        }
        v = v * 10 + (p[i] - '0');
    }
    while (i < n && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }
    return digits > 0 && i == n ? v : -1;
}

/* An app's transfer-encoding: a coding list whose last coding is
 * chunked, applied once (RFC 9112 6.1), since the server frames the body
 * in chunks whatever the app named. */
static int
head_te_ok(const char *p, Py_ssize_t n)
{
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
        n--;
    }
    if (n < 7 || strncasecmp(p + n - 7, "chunked", 7) != 0) {
        return 0;
    }
    Py_ssize_t k = n - 7; /* Before it: nothing or a comma and OWS. */
    while (k > 0 && (p[k - 1] == ' ' || p[k - 1] == '\t')) {
        k--;
    }
    if (k > 0 && p[k - 1] != ',') {
        return 0;
    }
    for (Py_ssize_t i = 0; i + 7 <= k; i++) {
        if (strncasecmp(p + i, "chunked", 7) == 0) {
            return 0;
        }
    }
    return 1;
}

/* The next element of a comma-separated list (RFC 9110 5.6.1) in
 * p[*i..n), without the OWS around it: its offset (and *len), or -1 once
 * none is left.  Empty elements are skipped, as recipients must. */
static Py_ssize_t
head_list_next(const char *p, Py_ssize_t n, Py_ssize_t *i, Py_ssize_t *len)
{
    Py_ssize_t k = *i;
    while (k < n) {
        Py_ssize_t s = k, e = k;
        while (e < n && p[e] != ',') {
            e++;
        }
        k = e + 1;
        while (s < e && (p[s] == ' ' || p[s] == '\t')) {
            s++;
        }
        while (e > s && (p[e - 1] == ' ' || p[e - 1] == '\t')) {
            e--;
        }
        if (e > s) {
            *i = k;
            *len = e - s;
            return s;
        }
    }
    *i = n;
    return -1;
}

static int
head_token_is(const char *p, Py_ssize_t n, const char *lower)
{
    return (size_t)n == strlen(lower) && strncasecmp(p, lower, (size_t)n) == 0;
}

/* The connection options of an app's field (RFC 9110 7.6.1: a list of
 * tokens, matched case-insensitively), into h and *has. */
static void
head_scan_connection(cd_http1_head_t *h, const char *p, Py_ssize_t n, int *has)
{
    Py_ssize_t i = 0, len, t;
    while ((t = head_list_next(p, n, &i, &len)) >= 0) {
        if (head_token_is(p + t, len, "close")) {
            /* The app's close closes the conn after the response, as in
             * uvicorn and h11; its field then says it for us. */
            h->keep_alive = 0;
            *has |= CD_HEAD_HAS_CLOSE;
        }
        else if (head_token_is(p + t, len, "keep-alive")) {
            *has |= CD_HEAD_HAS_KEEP_ALIVE;
        }
    }
}

/* Reads what the app's headers say about framing into h and adds
 * CD_HEAD_HAS_* bits to *has. */
static int
head_scan(cd_http1_head_t *h, PyObject *headers, int *has)
{
    Py_ssize_t nh = headers ? PyList_GET_SIZE(headers) : 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *n = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, i), 0);
        PyObject *v = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, i), 1);
        const char *vp = PyBytes_AS_STRING(v);
        Py_ssize_t vl = PyBytes_GET_SIZE(v);
        if (head_name_is(n, "server")) {
            *has |= CD_HEAD_HAS_SERVER;
        }
        else if (head_name_is(n, "date")) {
            *has |= CD_HEAD_HAS_DATE;
        }
        else if (h->upgrade) {
            continue; /* A 101 has no body to frame. */
        }
        else if (head_name_is(n, "content-length")) {
            int64_t cl = head_length(vp, vl);
            if (cl < 0 ||
                ((*has & CD_HEAD_HAS_CL) && cl != h->content_length)) {
                goto bad_length;
            }
            h->content_length = cl;
            *has |= CD_HEAD_HAS_CL;
        }
        else if (head_name_is(n, "connection")) {
            head_scan_connection(h, vp, vl, has);
        }
        else if (head_name_is(n, "transfer-encoding")) {
            if ((*has & CD_HEAD_HAS_TE) || !head_te_ok(vp, vl)) {
                PyErr_SetString(PyExc_ValueError,
                                "invalid transfer-encoding: the server "
                                "frames the body, in chunks");
                return -1;
            }
            *has |= CD_HEAD_HAS_TE;
        }
    }
    if ((*has & CD_HEAD_HAS_CL) && (*has & CD_HEAD_HAS_TE)) {
        /* RFC 9112 6.2: a proxy would take the chunks as the framing
         * and the body as the next response (response smuggling). */
        PyErr_SetString(PyExc_ValueError,
                        "content-length and transfer-encoding both set");
        return -1;
    }
    return 0;

bad_length:
    PyErr_SetString(PyExc_ValueError, "invalid content-length");
    return -1;
}

/* Chooses the body framing: a length we add, chunked, or the close. */
static void
head_framing(cd_http1_head_t *h, int has)
{
    int code = h->status;
    int bodyless = h->is_head || code == 204 || code == 304 || code < 200;
    if (h->upgrade) {
        return;
    }
    if (!(has & (CD_HEAD_HAS_CL | CD_HEAD_HAS_TE))) {
        if (h->final && code != 204 && code != 304 && code >= 200) {
            h->content_length = (int64_t)h->first_len;
            h->add_length = 1;
        }
        else if (!bodyless) {
            if (h->http10) {
                h->keep_alive = 0; /* The close delimits the body. */
            }
            else {
                h->chunked = 1;
            }
        }
    }
    else if ((has & CD_HEAD_HAS_TE) && !bodyless) {
        if (h->http10) {
            /* RFC 9112 6.1: no transfer coding to an HTTP/1.0 client
             * (head_write_headers leaves the app's out); the close
             * delimits the body. */
            h->keep_alive = 0;
        }
        else {
            h->chunked = 2; /* The app named it; we still frame it. */
        }
    }
}

/* An app's connection field when the conn closes after all: without its
 * keep-alive, which would go out next to "close", and without the field
 * if nothing else is left (its other options go out as it wrote them). */
static int
head_write_connection(cd_buf_t *out, PyObject *name, PyObject *value)
{
    const char *p = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value), i = 0, len, t;
    int first = 1;
    while ((t = head_list_next(p, n, &i, &len)) >= 0) {
        if (head_token_is(p + t, len, "keep-alive")) {
            continue;
        }
        if (first && head_append(out, PyBytes_AS_STRING(name),
                                 (size_t)PyBytes_GET_SIZE(name)) < 0) {
            return -1;
        }
        if (head_append(out, first ? ": " : ", ", 2) < 0 ||
            head_append(out, p + t, (size_t)len) < 0) {
            return -1;
        }
        first = 0;
    }
    return first ? 0 : head_append(out, "\r\n", 2);
}

/* Writes the app's headers but a repeated content-length (head_scan
 * checked it holds the same length: one is enough, and some proxies
 * refuse two), to an HTTP/1.0 client its transfer-encoding, and a
 * keep-alive the conn will not keep (head_write_connection). */
static int
head_write_headers(cd_buf_t *out, const cd_http1_head_t *h, PyObject *headers,
                   int has)
{
    Py_ssize_t nh = headers ? PyList_GET_SIZE(headers) : 0;
    int cl_seen = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *n = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, i), 0);
        PyObject *v = PyTuple_GET_ITEM(PyList_GET_ITEM(headers, i), 1);
        if (!h->upgrade && head_name_is(n, "content-length")) {
            if (cl_seen++) {
                continue;
            }
        }
        else if (!h->upgrade && h->http10 &&
                 head_name_is(n, "transfer-encoding")) {
            continue;
        }
        else if (!h->upgrade && !h->keep_alive &&
                 (has & CD_HEAD_HAS_KEEP_ALIVE) &&
                 head_name_is(n, "connection")) {
            if (head_write_connection(out, n, v) < 0) {
                return -1;
            }
            continue;
        }
        if (head_append(out, PyBytes_AS_STRING(n),
                        (size_t)PyBytes_GET_SIZE(n)) < 0 ||
            head_append(out, ": ", 2) < 0 ||
            head_append(out, PyBytes_AS_STRING(v),
                        (size_t)PyBytes_GET_SIZE(v)) < 0 ||
            head_append(out, "\r\n", 2) < 0) {
            return -1;
        }
    }
    return 0;
}

int
cd_http1_head_write(cd_buf_t *out, cd_http1_head_t *h, PyObject *headers)
{
    int has = 0;
    char tmp[64];
    h->chunked = 0;
    h->add_length = 0;
    h->content_length = -1;
    if (h->status < 100 || h->status > 999) {
        PyErr_Format(PyExc_ValueError, "invalid status %d", h->status);
        return -1;
    }
    if (head_scan(h, headers, &has) < 0) {
        return -1;
    }
    head_framing(h, has);
    snprintf(tmp, sizeof(tmp), "HTTP/1.1 %d ", h->status);
    if (head_append_str(out, tmp) < 0 ||
        head_append_str(out, cd_http1_reason(h->status)) < 0 ||
        head_append(out, "\r\n", 2) < 0 ||
        (h->fixed && head_append(out, h->fixed, h->fixed_len) < 0) ||
        head_write_headers(out, h, headers, has) < 0) {
        return -1;
    }
    if (h->add_length) {
        snprintf(tmp, sizeof(tmp), "content-length: %llu\r\n",
                 (unsigned long long)h->first_len);
        if (head_append_str(out, tmp) < 0) {
            return -1;
        }
    }
    if (h->chunked == 1 &&
        head_append_str(out, "transfer-encoding: chunked\r\n") < 0) {
        return -1;
    }
    if (!(has & CD_HEAD_HAS_DATE) &&
        head_append(out, tmp, cd_http1_date(tmp)) < 0) {
        return -1;
    }
    if (!(has & CD_HEAD_HAS_SERVER) && h->server_header != NULL &&
        head_append_str(out, h->server_header) < 0) {
        return -1;
    }
    /* Ours, unless the app's connection field says the same (one field
     * of each, not two). */
    const char *conn = NULL;
    if (h->upgrade) {
        conn = NULL; /* The fixed lines say "connection: Upgrade". */
    }
    else if (!h->keep_alive) {
        conn = has & CD_HEAD_HAS_CLOSE ? NULL : "connection: close\r\n";
    }
    else if (h->http10 && !(has & CD_HEAD_HAS_KEEP_ALIVE)) {
        conn = "connection: keep-alive\r\n";
    }
    if ((conn != NULL && head_append_str(out, conn) < 0) ||
        head_append(out, "\r\n", 2) < 0) {
        return -1;
    }
    return 0;
}
