/* The ASGI scope of an HTTP request or a WebSocket handshake. */
#include "internal.h"

#include <string.h>

static int
hexval(char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* New reference: the percent-decoded, UTF-8-decoded path. */
static PyObject *
decode_path(const char *p, size_t n)
{
    if (memchr(p, '%', n) == NULL) {
        return PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "replace");
    }
    PyObject *tmp = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (tmp == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(tmp);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = hexval(p[i + 1])) >= 0 &&
            (lo = hexval(p[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        }
        else {
            out[o++] = p[i];
        }
    }
    PyObject *s = PyUnicode_DecodeUTF8(out, (Py_ssize_t)o, "replace");
    Py_DECREF(tmp);
    return s;
}

static PyObject *
method_str(cd_state *st, int method)
{
    switch (method) {
    case HTTP_GET: return Py_NewRef(st->s_GET);
    case HTTP_POST: return Py_NewRef(st->s_POST);
    case HTTP_HEAD: return Py_NewRef(st->s_HEAD);
    case HTTP_PUT: return Py_NewRef(st->s_PUT);
    case HTTP_DELETE: return Py_NewRef(st->s_DELETE);
    case HTTP_OPTIONS: return Py_NewRef(st->s_OPTIONS);
    case HTTP_PATCH: return Py_NewRef(st->s_PATCH);
    default:
        return PyUnicode_FromString(
            llhttp_method_name((llhttp_method_t)method));
    }
}

static int
set_new(PyObject *d, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int r = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return r;
}

/* New reference: a dict with the keys of every scope of this type, in
 * the order cd_scope_http sets them, all None. */
static PyObject *
scope_template(cd_state *st, int is_ws)
{
    PyObject *keys[] = {st->s_type,
                        st->s_asgi,
                        st->s_http_version,
                        st->s_scheme,
                        st->s_path,
                        st->s_raw_path,
                        st->s_query_string,
                        st->s_root_path,
                        st->s_headers,
                        st->s_client,
                        st->s_server,
                        st->s_extensions,
                        is_ws ? st->s_subprotocols : st->s_method};
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (PyDict_SetItem(d, keys[i], Py_None) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

int
cd_scope_init(cd_state *st)
{
    st->http_scope_template = scope_template(st, 0);
    st->ws_scope_template = scope_template(st, 1);
    return st->http_scope_template && st->ws_scope_template ? 0 : -1;
}

/* New reference: the server's root_path, or the request's
 * Daphne-Root-Path header URL-unquoted (as Daphne does). */
static PyObject *
root_path(cd_conn_t *c, PyObject *h)
{
    if (h == NULL) {
        return Py_NewRef(c->server->root_path);
    }
    return decode_path(PyBytes_AS_STRING(h), (size_t)PyBytes_GET_SIZE(h));
}

/* Borrowed: http or https (ws or wss), from the server's scheme or the
 * conn's TLS. */
static PyObject *
scope_scheme(cd_conn_t *c, int is_ws)
{
    cd_state *st = c->server->st;
    int secure = cd_tls_conn_is_tls(c) || c->server->scheme == st->s_https;
    if (is_ws) {
        return secure ? st->s_wss : st->s_ws;
    }
    return secure ? st->s_https : st->s_http;
}

/* The request target, split.  Borrowed pointers into the request's URL
 * (or a literal "/"). */
typedef struct {
    const char *path; /* up to '?' or '#' */
    size_t path_len;
    const char *query; /* after '?', up to '#' (used if query_len > 0) */
    size_t query_len;
} scope_target_t;

static void
scope_split_target(const cd_scope_req_t *req, scope_target_t *t)
{
    const char *url = req->url ? req->url : "/";
    size_t ulen = req->url ? req->url_len : 1;

    /* absolute-form (GET http://host/path): keep from the path on. */
    if (ulen > 7 && (strncmp(url, "http://", 7) == 0 ||
                     strncmp(url, "https://", 8) == 0)) {
        const char *slash = memchr(url + 8, '/', ulen - 8);
        if (slash == NULL) {
            url = "/";
            ulen = 1;
        }
        else {
            ulen -= (size_t)(slash - url);
            url = slash;
        }
    }
    const char *q = memchr(url, '?', ulen);
    size_t plen = q ? (size_t)(q - url) : ulen;
    const char *hash = memchr(url, '#', ulen);
    size_t qlen = 0;
    if (q) {
        qlen = (hash && hash > q ? (size_t)(hash - q) : ulen - plen) - 1;
    }
    else if (hash) {
        plen = (size_t)(hash - url);
    }
    t->path = url;
    t->path_len = plen;
    t->query = q ? q + 1 : NULL;
    t->query_len = qlen;
}

/* The values of the keys every scope of this type has: 0, or -1 with an
 * exception set. */
static int
scope_set_request(PyObject *scope, cd_conn_t *c, const cd_scope_req_t *req,
                  const scope_target_t *t)
{
    cd_state *st = c->server->st;
    int is_ws = req->websocket;
    int v10 = req->http10;
    if (set_new(scope, st->s_type,
                Py_NewRef(is_ws ? st->s_websocket : st->s_http)) < 0 ||
        set_new(scope, st->s_asgi, PyDict_Copy(st->asgi_dict)) < 0 ||
        set_new(scope, st->s_http_version,
                Py_NewRef(v10 ? st->s_v1_0 : st->s_v1_1)) < 0 ||
        set_new(scope, st->s_scheme, Py_NewRef(scope_scheme(c, is_ws))) < 0 ||
        set_new(scope, st->s_path, decode_path(t->path, t->path_len)) < 0 ||
        set_new(scope, st->s_raw_path,
                PyBytes_FromStringAndSize(t->path, (Py_ssize_t)t->path_len)) <
            0 ||
        set_new(scope, st->s_query_string,
                t->query_len ? PyBytes_FromStringAndSize(
                                   t->query, (Py_ssize_t)t->query_len)
                             : Py_NewRef(st->empty_bytes)) < 0 ||
        set_new(scope, st->s_root_path, root_path(c, req->root_path_header)) <
            0 ||
        set_new(scope, st->s_headers, Py_NewRef(req->headers)) < 0 ||
        set_new(scope, st->s_client, Py_NewRef(c->client)) < 0 ||
        set_new(scope, st->s_server, Py_NewRef(c->sockname)) < 0) {
        return -1;
    }
    if (!is_ws &&
        set_new(scope, st->s_method, method_str(st, req->method)) < 0) {
        return -1;
    }
    return 0;
}

/* New reference: the scope's extensions (websocket.http.response on a
 * WebSocket, tls on a TLS conn, cdaphne.pubsub always). */
static PyObject *
scope_extensions(cd_conn_t *c, int is_ws)
{
    cd_state *st = c->server->st;
    PyObject *ext = PyDict_New();
    if (ext == NULL) {
        return NULL;
    }
    if (is_ws && set_new(ext, st->s_ws_http_response, PyDict_New()) < 0) {
        goto error;
    }
    if (cd_tls_conn_is_tls(c)) {
        PyObject *tls = cd_tls_conn_info(c);
        int r = tls == NULL ? -1 : PyDict_SetItemString(ext, "tls", tls);
        Py_XDECREF(tls);
        if (r < 0) {
            goto error;
        }
    }
    if (set_new(ext, st->s_pubsub, PyDict_New()) < 0) {
        goto error;
    }
    return ext;

error:
    Py_DECREF(ext);
    return NULL;
}

PyObject *
cd_scope_http(cd_conn_t *c, const cd_scope_req_t *req)
{
    cd_server_t *srv = c->server;
    cd_state *st = srv->st;
    scope_target_t t;
    scope_split_target(req, &t);
    /* A copy of a dict that already has every key: setting the values
     * then never grows the table. */
    PyObject *scope = PyDict_Copy(req->websocket ? st->ws_scope_template
                                                 : st->http_scope_template);
    if (scope == NULL) {
        return NULL;
    }
    if (scope_set_request(scope, c, req, &t) < 0 ||
        (srv->lifespan_state != NULL &&
         set_new(scope, st->s_state, PyDict_Copy(srv->lifespan_state)) < 0) ||
        set_new(scope, st->s_extensions, scope_extensions(c, req->websocket)) <
            0) {
        Py_DECREF(scope);
        return NULL;
    }
    return scope;
}
