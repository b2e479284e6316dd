/* HTTP/1.1 on llhttp: request heads into scopes, keep-alive, pipelining,
 * limits and the simple error responses.
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

static int
fail(llhttp_t *p, int status)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    c->fail_status = status;
    return -1;
}

static int
count_head(cd_conn_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->server->cfg.max_head) {
        return fail(&c->parser, 431);
    }
    return 0;
}

static int
on_message_begin(llhttp_t *p)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    c->url.len = 0;
    c->hname.len = 0;
    c->hvalue.len = 0;
    c->in_value = 0;
    c->head_bytes = 0;
    c->expect_continue = 0;
    c->ws_upgrade = 0;
    Py_XSETREF(c->headers, PyList_New(0));
    if (c->headers == NULL) {
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
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    if (count_head(c, n) < 0) {
        return -1;
    }
    return cd_buf_append(&c->url, at, n) < 0 ? fail(p, 500) : 0;
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

/* Append the header gathered in hname/hvalue to c->headers. */
static int
flush_header(cd_conn_t *c)
{
    if (c->hname.len == 0) {
        return 0;
    }
    if (c->headers == NULL) {
        /* A trailer of a chunked body (the scope is gone): dropped. */
        c->hname.len = 0;
        c->hvalue.len = 0;
        c->in_value = 0;
        return 0;
    }
    PyObject *name = PyBytes_FromStringAndSize(NULL, c->hname.len);
    if (name == NULL) {
        return -1;
    }
    char *dst = PyBytes_AS_STRING(name);
    for (size_t i = 0; i < c->hname.len; i++) {
        char ch = c->hname.base[i];
        dst[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    /* llhttp leaves optional whitespace at the end of a value. */
    while (c->hvalue.len > 0 && (c->hvalue.base[c->hvalue.len - 1] == ' ' ||
                                 c->hvalue.base[c->hvalue.len - 1] == '\t')) {
        c->hvalue.len--;
    }
    PyObject *value = PyBytes_FromStringAndSize(
        c->hvalue.base ? c->hvalue.base : "", c->hvalue.len);
    if (value == NULL) {
        Py_DECREF(name);
        return -1;
    }
    if (header_is(&c->hname, "expect") &&
        value_has_token(&c->hvalue, "100-continue")) {
        c->expect_continue = 1;
    }
    else if (header_is(&c->hname, "upgrade") &&
             value_has_token(&c->hvalue, "websocket")) {
        c->ws_upgrade = 1;
    }
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(name);
    Py_DECREF(value);
    if (pair == NULL) {
        return -1;
    }
    int r = PyList_Append(c->headers, pair);
    Py_DECREF(pair);
    c->hname.len = 0;
    c->hvalue.len = 0;
    c->in_value = 0;
    return r;
}

static int
on_header_field(llhttp_t *p, const char *at, size_t n)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    if (count_head(c, n) < 0) {
        return -1;
    }
    if (c->in_value && flush_header(c) < 0) {
        return fail(p, 500);
    }
    return cd_buf_append(&c->hname, at, n) < 0 ? fail(p, 500) : 0;
}

static int
on_header_value(llhttp_t *p, const char *at, size_t n)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    if (count_head(c, n) < 0) {
        return -1;
    }
    /* llhttp splits a value only at the end of the buffer it parses and
     * at an obs-fold, which RFC 9112 lets a server reject: do that.
     * in_value 2: the last piece ended where the buffer did. */
    if (c->in_value && !(c->in_value == 2 && at == c->in.base)) {
        return fail(p, 400);
    }
    c->in_value = at + n == c->in.base + c->in.len ? 2 : 1;
    return cd_buf_append(&c->hvalue, at, n) < 0 ? fail(p, 500) : 0;
}

static int
on_headers_complete(llhttp_t *p)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    cd_server_t *srv = c->server;
    if (flush_header(c) < 0) {
        return fail(p, 500);
    }
    cd_conn_timer_stop(c);
    if (srv->cfg.max_body && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > srv->cfg.max_body) {
        return fail(p, 413);
    }
    int websocket = c->ws_upgrade && p->upgrade;
    if (!websocket) {
        /* Upgrades other than WebSocket (h2c...) are plain requests. */
        p->upgrade = 0;
    }
    PyObject *scope = cd_scope_http(c, websocket ? "websocket" : "http");
    Py_CLEAR(c->headers); /* The scope has them now. */
    if (scope == NULL) {
        return fail(p, 500);
    }
    cd_cycle_t *cy = cd_cycle_new(c, scope);
    Py_DECREF(scope);
    if (cy == NULL) {
        return fail(p, 500);
    }
    if (websocket) {
        int status = cd_ws_begin(c, cy);
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
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    cd_cycle_t *cy = c->cycle;
    if (cy == NULL || cy->disconnected) {
        return 0; /* The response is done: drop the rest. */
    }
    c->body_bytes += n;
    if (c->server->cfg.max_body && c->body_bytes > c->server->cfg.max_body) {
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

static int
on_message_complete(llhttp_t *p)
{
    cd_conn_t *c = cd_container_of(p, cd_conn_t, parser);
    if (c->cycle != NULL) {
        c->cycle->body_complete = 1;
        cd_cycle_on_body(c->cycle);
    }
    c->flags |= CD_CONN_F_PAUSED;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void
cd_http1_init(cd_conn_t *c)
{
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
}

/* Drop what the current request had gathered (conn closing). */
void
cd_http1_release_request(cd_conn_t *c)
{
    Py_CLEAR(c->headers);
    if (c->cycle != NULL) {
        cd_cycle_t *cy = c->cycle;
        c->cycle = NULL;
        cy->conn = NULL;
        Py_DECREF(cy);
    }
}

void
cd_http1_parse(cd_conn_t *c)
{
    if (c->state == CD_CONN_CLOSING) {
        return;
    }
    if (c->flags & CD_CONN_F_PAUSED) {
        /* A pipelined request waits; don't buffer without bound. */
        if (c->in.len > c->server->cfg.max_head) {
            cd_conn_read_stop(c);
        }
        return;
    }
    if (c->in.len == 0) {
        return;
    }
    c->fail_status = 0;
    llhttp_errno_t err = llhttp_execute(&c->parser, c->in.base, c->in.len);
    if (err == HPE_OK) {
        c->in.len = 0;
        return;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        cd_buf_consume(&c->in, (size_t)(pos - c->in.base));
        if (c->state == CD_CONN_UPGRADED) {
            return; /* The rest is WebSocket frames. */
        }
        if (c->in.len > c->server->cfg.max_head) {
            cd_conn_read_stop(c);
        }
        return;
    }
    int status = c->fail_status ? c->fail_status : 400;
    c->in.len = 0;
    if (c->cycle != NULL && c->cycle->resp != CD_RESP_START) {
        cd_conn_close(c); /* Too late for an error response. */
        return;
    }
    const char *body = "Bad Request";
    if (status == 426) {
        body = "WebSocket version 13 required";
    }
    else if (status == 431) {
        body = "Request Header Fields Too Large";
    }
    else if (status == 413) {
        body = "Payload Too Large";
    }
    else if (status == 500) {
        cd_log_exception("Error while parsing a request");
        body = "Internal Server Error";
    }
    cd_http1_simple_response(c, status, body);
}

void
cd_http1_on_eof(cd_conn_t *c)
{
    cd_conn_close(c);
}

void
cd_http1_on_timeout(cd_conn_t *c)
{
    if (c->state == CD_CONN_UPGRADED) {
        cd_ws_on_timeout(c);
        return;
    }
    if (c->state == CD_CONN_ACTIVE && c->cycle != NULL) {
        cd_cycle_on_timeout(c->cycle);
        return;
    }
    /* Idle keep-alive, or a head that took too long: just close. */
    cd_conn_close(c);
}

void
cd_http1_response_done(cd_conn_t *c, int keep_alive)
{
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
    cd_conn_timer_stop(c);
    if (!keep_alive || !body_read || c->server->closing) {
        cd_conn_close_after_writes(c);
        return;
    }
    c->state = CD_CONN_HEAD;
    c->flags &= ~(CD_CONN_F_GOT_BYTES | CD_CONN_F_PAUSED);
    c->body_bytes = 0;
    llhttp_resume(&c->parser);
    cd_conn_timer_start(c, c->server->cfg.keepalive_timeout);
    cd_conn_read_start(c);
    cd_http1_parse(c);
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
    const char *server = c->server->server_header;
    size_t cap = 512 + (server ? strlen(server) : 0);
    char *buf = malloc(cap);
    if (buf == NULL) {
        cd_conn_close(c);
        return;
    }
    size_t blen = strlen(body);
    int n =
        snprintf(buf, cap,
                 "HTTP/1.1 %d %s\r\n"
                 "content-type: text/plain; charset=utf-8\r\n"
                 "content-length: %zu\r\n"
                 "connection: close\r\n%s",
                 status, cd_http1_reason(status), blen, server ? server : "");
    n += (int)cd_http1_date(buf + n);
    n += snprintf(buf + n, cap - n, "\r\n%s", body);
    uv_buf_t b = uv_buf_init(buf, (unsigned)n);
    cd_conn_read_stop(c);
    if (cd_conn_write(c, &b, 1, NULL, buf) == 0) {
        cd_conn_close_after_writes(c);
    }
}
