/* TLS: an OpenSSL engine over memory BIOs.  No socket and no blocking
 * call: ciphertext read from the socket goes in (cd_tls_feed), plaintext
 * comes out into a cd_buf_t (cd_tls_read, bounded per call), plaintext
 * goes in (cd_tls_write) and ciphertext comes out (cd_tls_take_out), the
 * handshake, alerts, session tickets and close_notify included.  Every
 * OpenSSL failure maps to one answer: fatal, close (after sending what
 * OpenSSL queued, such as an alert).
 *
 * The Python type TLSContext wraps the server's SSL_CTX, built once per
 * endpoint from the config: certificate chain, key (and its password), CA
 * certificates, client verification mode, ciphers, TLS 1.2 at least, ALPN
 * (http/1.1), no renegotiation.  A bad file or key raises ValueError with
 * one line naming the file and OpenSSL's reason. */
#include "internal.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

/* Plaintext bytes asked of SSL_read_ex at a time (one TLS record). */
#define CD_TLS_CHUNK 16384

/* ALPN protocols we serve, in preference order, in the wire format
 * (length-prefixed).  "\x02h2" goes first once HTTP/2 exists. */
static const unsigned char cd_tls_alpn[] = "\x08http/1.1";

typedef enum {
    CD_TLS_HANDSHAKE, /* before the handshake completed */
    CD_TLS_OPEN,      /* application data flows */
    CD_TLS_PEER_DONE, /* the peer's close_notify came: we may still send
                         (TLS 1.3 half-close), as after a plain FIN */
    CD_TLS_SHUTDOWN,  /* our close_notify is queued */
    CD_TLS_DEAD,      /* a fatal error or the peer's close_notify */
} cd_tls_state_t;

struct cd_tls_s {
    SSL *ssl;          /* owned */
    BIO *rbio;         /* borrowed: ssl owns it (ciphertext in) */
    BIO *wbio;         /* borrowed: ssl owns it (ciphertext out) */
    PyObject *context; /* strong: the TLSContext (server_cert) */
    PyObject *info;    /* strong: the ASGI "tls" extension, or NULL */
    cd_tls_state_t state;
};

/* ---- TLSContext ------------------------------------------------- */

/* The OpenSSL error queue's last reason, as a ValueError naming what
 * failed; clears the queue. */
static void
tls_set_error(const char *what, const char *path)
{
    /* The first error is the cause ("No such file or directory", "no
     * start line"); the later ones say which SSL call gave up. */
    unsigned long e = ERR_peek_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    char buf[256];
    if (reason == NULL) {
        if (e != 0) {
            ERR_error_string_n(e, buf, sizeof(buf));
            reason = buf;
        }
        else {
            reason = "unknown error";
        }
    }
    if (path != NULL) {
        PyErr_Format(PyExc_ValueError, "%s %s: %s", what, path, reason);
    }
    else {
        PyErr_Format(PyExc_ValueError, "%s: %s", what, reason);
    }
    ERR_clear_error();
}

/* The key password from the config, never a prompt on the terminal: an
 * encrypted key without a password fails to load. */
static int
tls_on_password(char *buf, int size, int rwflag, void *userdata)
{
    const char *pw = userdata;
    if (pw == NULL) {
        return 0;
    }
    size_t n = strlen(pw);
    if (n > (size_t)size) {
        return 0;
    }
    memcpy(buf, pw, n);
    return (int)n;
}

/* Picks http/1.1 when the client offers it; a client that offers only
 * other protocols (or none) goes on without ALPN, as nginx does. */
static int
tls_on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
            const unsigned char *in, unsigned inlen, void *arg)
{
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, cd_tls_alpn,
                              sizeof(cd_tls_alpn) - 1, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int
tls_load_extra_chain(SSL_CTX *ctx, const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    if (b == NULL) {
        return -1;
    }
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (!SSL_CTX_add_extra_chain_cert(ctx, x)) {
            X509_free(x);
            BIO_free(b);
            return -1;
        }
        n++;
    }
    BIO_free(b);
    if (n == 0) {
        return -1;
    }
    ERR_clear_error(); /* The PEM reader's end-of-file "error". */
    return 0;
}

static int
tls_load_dh(SSL_CTX *ctx, const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    if (b == NULL) {
        return -1;
    }
    EVP_PKEY *dh = PEM_read_bio_Parameters(b, NULL);
    BIO_free(b);
    if (dh == NULL) {
        return -1;
    }
    if (!SSL_CTX_set0_tmp_dh_pkey(ctx, dh)) {
        EVP_PKEY_free(dh);
        return -1;
    }
    return 0;
}

typedef struct {
    const char *certfile;
    const char *keyfile;
    const char *password;
    const char *ca_certs;
    int cert_reqs;
    const char *ciphers;
    const char *extra_chain;
    const char *dh_params;
} cd_tls_options_t;

static int
tls_ctx_load_files(SSL_CTX *ctx, const cd_tls_options_t *o)
{
    SSL_CTX_set_default_passwd_cb(ctx, tls_on_password);
    SSL_CTX_set_default_passwd_cb_userdata(ctx,
                                           (void *)(uintptr_t)o->password);
    if (!SSL_CTX_use_certificate_chain_file(ctx, o->certfile)) {
        tls_set_error("cannot load the certificate chain", o->certfile);
        return -1;
    }
    if (!SSL_CTX_use_PrivateKey_file(ctx, o->keyfile, SSL_FILETYPE_PEM)) {
        tls_set_error("cannot load the private key", o->keyfile);
        return -1;
    }
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    if (!SSL_CTX_check_private_key(ctx)) {
        tls_set_error("the private key does not match the certificate",
                      o->keyfile);
        return -1;
    }
    if (o->extra_chain && tls_load_extra_chain(ctx, o->extra_chain) < 0) {
        tls_set_error("cannot load the extra certificate chain",
                      o->extra_chain);
        return -1;
    }
    if (o->dh_params && tls_load_dh(ctx, o->dh_params) < 0) {
        tls_set_error("cannot load the DH parameters", o->dh_params);
        return -1;
    }
    if (o->ca_certs) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_certs);
        if (names == NULL ||
            !SSL_CTX_load_verify_locations(ctx, o->ca_certs, NULL)) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            tls_set_error("cannot load the CA certificates", o->ca_certs);
            return -1;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    return 0;
}

/* A server SSL_CTX from the options, or NULL with ValueError. */
static SSL_CTX *
tls_ctx_build(const cd_tls_options_t *o)
{
    static const unsigned char sid_ctx[] = "cdaphne";
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_set_error("cannot create a TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* Idle connections give back their 34 KiB of record buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_alpn_select_cb(ctx, tls_on_alpn, NULL);
    if (o->ciphers && !SSL_CTX_set_cipher_list(ctx, o->ciphers)) {
        tls_set_error("no usable cipher in", o->ciphers);
        goto error;
    }
    if (tls_ctx_load_files(ctx, o) < 0) {
        goto error;
    }
    int mode = SSL_VERIFY_NONE;
    if (o->cert_reqs == 1) {
        mode = SSL_VERIFY_PEER;
    }
    else if (o->cert_reqs == 2) {
        mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(ctx, mode, NULL);
    return ctx;

error:
    SSL_CTX_free(ctx);
    return NULL;
}

typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;          /* owned */
    PyObject *server_cert; /* strong: the leaf certificate, PEM str */
} cd_tls_context_t;

/* New reference: the certificate as a PEM str. */
static PyObject *
tls_cert_pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || !PEM_write_bio_X509(b, x)) {
        BIO_free(b);
        ERR_clear_error();
        return PyErr_NoMemory();
    }
    char *p;
    long n = BIO_get_mem_data(b, &p);
    PyObject *s = PyUnicode_DecodeASCII(p, n, "strict");
    BIO_free(b);
    return s;
}

/* TLSContext(certfile, keyfile=None, password=None, ca_certs=None,
 *            cert_reqs=0, ciphers=None, extra_chain=None, dh_params=None) */
static PyObject *
tls_context_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"certfile",    "keyfile",   "password",
                             "ca_certs",    "cert_reqs", "ciphers",
                             "extra_chain", "dh_params", NULL};
    cd_tls_options_t o = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|zzzizzz", kwlist,
                                     &o.certfile, &o.keyfile, &o.password,
                                     &o.ca_certs, &o.cert_reqs, &o.ciphers,
                                     &o.extra_chain, &o.dh_params)) {
        return NULL;
    }
    if (o.cert_reqs < 0 || o.cert_reqs > 2) {
        PyErr_SetString(PyExc_ValueError,
                        "cert_reqs must be 0 (none), 1 (optional) or 2 "
                        "(required)");
        return NULL;
    }
    if (o.keyfile == NULL) {
        o.keyfile = o.certfile; /* One PEM with both, as Twisted allows. */
    }
    SSL_CTX *ctx = tls_ctx_build(&o);
    if (ctx == NULL) {
        return NULL;
    }
    cd_tls_context_t *self = (cd_tls_context_t *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    self->ctx = ctx;
    self->server_cert = tls_cert_pem(SSL_CTX_get0_certificate(ctx));
    if (self->server_cert == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
tls_context_dealloc(cd_tls_context_t *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    SSL_CTX_free(self->ctx);
    Py_CLEAR(self->server_cert);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot tls_context_slots[] = {
    {Py_tp_new, tls_context_new},
    {Py_tp_dealloc, tls_context_dealloc},
    {Py_tp_doc, "A server TLS context: certificate, key, verification."},
    {0, NULL},
};

static PyType_Spec tls_context_spec = {
    .name = "cdaphne._cdaphne.TLSContext",
    .basicsize = sizeof(cd_tls_context_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tls_context_slots,
};

int
cd_tls_type_init(PyObject *module, cd_state *st)
{
    st->TLSContext_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &tls_context_spec, NULL);
    if (st->TLSContext_type == NULL ||
        PyModule_AddType(module, st->TLSContext_type) < 0) {
        return -1;
    }
    return 0;
}

/* ---- the per-connection engine ----------------------------------- */

cd_tls_t *
cd_tls_new(PyObject *context)
{
    cd_tls_context_t *tc = (cd_tls_context_t *)context;
    cd_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->ssl = SSL_new(tc->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO says "retry", not "EOF". */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    t->context = Py_NewRef(context);
    t->state = CD_TLS_HANDSHAKE;
    return t;
}

void
cd_tls_free(cd_tls_t *t)
{
    if (t == NULL) {
        return;
    }
    SSL_free(t->ssl); /* Frees both BIOs. */
    Py_XDECREF(t->info);
    Py_DECREF(t->context);
    free(t);
}

int
cd_tls_feed(cd_tls_t *t, const char *data, size_t n)
{
    if (n == 0 || t->state == CD_TLS_DEAD || t->state == CD_TLS_PEER_DONE) {
        return 0;
    }
    size_t written;
    if (!BIO_write_ex(t->rbio, data, n, &written) || written != n) {
        ERR_clear_error();
        return UV_ENOMEM;
    }
    return 0;
}

size_t
cd_tls_in_pending(const cd_tls_t *t)
{
    return BIO_ctrl_pending(t->rbio);
}

/* An SSL_* call returned r <= 0: 0 when it waits for more input, else a
 * fatal error (the alert, if any, stays queued in the write BIO). */
static int
tls_check(cd_tls_t *t, int r)
{
    int e = SSL_get_error(t->ssl, r);
    ERR_clear_error();
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: /* A memory BIO never pushes back. */ return 0;
    case SSL_ERROR_ZERO_RETURN: t->state = CD_TLS_PEER_DONE; return CD_TLS_EOF;
    default: t->state = CD_TLS_DEAD; return UV_EPROTO;
    }
}

int
cd_tls_read(cd_tls_t *t, cd_buf_t *out, size_t room)
{
    if (t->state == CD_TLS_DEAD) {
        return UV_EPROTO;
    }
    if (t->state == CD_TLS_PEER_DONE) {
        return CD_TLS_EOF;
    }
    if (t->state == CD_TLS_HANDSHAKE) {
        ERR_clear_error();
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            return tls_check(t, r);
        }
        t->state = CD_TLS_OPEN;
    }
    while (room > 0) {
        size_t want = room < CD_TLS_CHUNK ? room : CD_TLS_CHUNK;
        if (cd_buf_reserve(out, want) < 0) {
            return UV_ENOMEM;
        }
        size_t got = 0;
        ERR_clear_error();
        int r = SSL_read_ex(t->ssl, out->base + out->len, want, &got);
        if (r != 1) {
            return tls_check(t, r);
        }
        out->len += got;
        room -= got;
    }
    return 0;
}

/* A memory BIO keeps the largest size it ever held (a 64 KiB socket
 * read left 87 KiB on the idle conn): an empty one that grew past this
 * is swapped for a new one. */
#define CD_TLS_BIO_KEEP 8192

static BIO *
tls_bio_if_grown(BIO *b)
{
    BUF_MEM *m = NULL;
    if (BIO_ctrl_pending(b) > 0 || BIO_get_mem_ptr(b, &m) <= 0 || m == NULL ||
        m->max <= CD_TLS_BIO_KEEP) {
        return NULL;
    }
    BIO *fresh = BIO_new(BIO_s_mem());
    if (fresh == NULL) {
        ERR_clear_error();
        return NULL;
    }
    BIO_set_mem_eof_return(fresh, -1);
    return fresh;
}

void
cd_tls_trim(cd_tls_t *t)
{
    if (t->state != CD_TLS_OPEN) {
        return; /* The handshake's buffering BIO sits on the wbio. */
    }
    BIO *b = tls_bio_if_grown(t->rbio);
    if (b != NULL) {
        SSL_set0_rbio(t->ssl, b); /* Frees the old one. */
        t->rbio = b;
    }
    b = tls_bio_if_grown(t->wbio);
    if (b != NULL) {
        SSL_set0_wbio(t->ssl, b);
        t->wbio = b;
    }
}

int
cd_tls_has_plaintext(const cd_tls_t *t)
{
    return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0;
}

int
cd_tls_is_open(const cd_tls_t *t)
{
    return t->state == CD_TLS_OPEN || t->state == CD_TLS_PEER_DONE;
}

int
cd_tls_handshake_done(const cd_tls_t *t)
{
    return SSL_is_init_finished(t->ssl);
}

int
cd_tls_write(cd_tls_t *t, const char *data, size_t n)
{
    if (!cd_tls_is_open(t)) {
        return t->state == CD_TLS_HANDSHAKE ? UV_EAGAIN : UV_EPIPE;
    }
    while (n > 0) {
        size_t done = 0;
        ERR_clear_error();
        int r = SSL_write_ex(t->ssl, data, n, &done);
        if (r != 1) {
            int e = tls_check(t, r);
            return e < 0 ? e : UV_EPROTO;
        }
        data += done;
        n -= done;
    }
    return 0;
}

size_t
cd_tls_out_pending(const cd_tls_t *t)
{
    return BIO_ctrl_pending(t->wbio);
}

char *
cd_tls_take_out(cd_tls_t *t, size_t *n)
{
    size_t len = BIO_ctrl_pending(t->wbio);
    *n = 0;
    if (len == 0) {
        return NULL;
    }
    char *p = malloc(len);
    if (p == NULL) {
        return NULL;
    }
    size_t got = 0;
    if (!BIO_read_ex(t->wbio, p, len, &got) || got != len) {
        ERR_clear_error();
        free(p);
        return NULL;
    }
    *n = len;
    return p;
}

void
cd_tls_shutdown(cd_tls_t *t)
{
    if (!cd_tls_is_open(t)) {
        return;
    }
    t->state = CD_TLS_SHUTDOWN;
    ERR_clear_error();
    /* Queues our close_notify; we do not wait for the peer's. */
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

/* ---- the ASGI "tls" extension ------------------------------------ */

static int
tls_dict_set(PyObject *d, const char *key, PyObject *v)
{
    if (v == NULL) {
        return -1;
    }
    int r = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return r;
}

/* New reference: the client's chain (leaf first), PEM strs. */
static PyObject *
tls_client_chain(SSL *ssl, X509 *leaf)
{
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    int n = chain ? sk_X509_num(chain) : 0;
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    if (leaf != NULL && (n == 0 || X509_cmp(sk_X509_value(chain, 0), leaf))) {
        PyObject *pem = tls_cert_pem(leaf);
        if (pem == NULL || PyList_Append(list, pem) < 0) {
            Py_XDECREF(pem);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(pem);
    }
    for (int i = 0; i < n; i++) {
        PyObject *pem = tls_cert_pem(sk_X509_value(chain, i));
        if (pem == NULL || PyList_Append(list, pem) < 0) {
            Py_XDECREF(pem);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(pem);
    }
    return list;
}

/* New reference: the subject as an RFC 4514 string. */
static PyObject *
tls_name_str(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL || X509_NAME_print_ex(b, X509_get_subject_name(x), 0,
                                        XN_FLAG_RFC2253) < 0) {
        BIO_free(b);
        ERR_clear_error();
        return PyErr_NoMemory();
    }
    char *p;
    long n = BIO_get_mem_data(b, &p);
    PyObject *s = PyUnicode_DecodeUTF8(p, n, "replace");
    BIO_free(b);
    return s;
}

static PyObject *
tls_info_build(cd_tls_t *t)
{
    cd_tls_context_t *tc = (cd_tls_context_t *)t->context;
    X509 *leaf = SSL_get0_peer_certificate(t->ssl);
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    const char *sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    long verify = SSL_get_verify_result(t->ssl);
    PyObject *d = PyDict_New();
    if (d == NULL ||
        tls_dict_set(d, "server_cert", Py_NewRef(tc->server_cert)) < 0 ||
        tls_dict_set(d, "client_cert_chain", tls_client_chain(t->ssl, leaf)) <
            0 ||
        tls_dict_set(d, "client_cert_name",
                     leaf ? tls_name_str(leaf) : Py_NewRef(Py_None)) < 0 ||
        tls_dict_set(
            d, "client_cert_error",
            leaf && verify != X509_V_OK
                ? PyUnicode_FromString(X509_verify_cert_error_string(verify))
                : Py_NewRef(Py_None)) < 0 ||
        tls_dict_set(d, "tls_version", PyLong_FromLong(SSL_version(t->ssl))) <
            0 ||
        tls_dict_set(d, "cipher_suite",
                     c ? PyLong_FromLong(SSL_CIPHER_get_protocol_id(c))
                       : Py_NewRef(Py_None)) < 0 ||
        tls_dict_set(d, "server_name",
                     sni ? PyUnicode_DecodeASCII(sni, strlen(sni), "replace")
                         : Py_NewRef(Py_None)) < 0) {
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

PyObject *
cd_tls_info(cd_tls_t *t)
{
    if (t->info == NULL) {
        t->info = tls_info_build(t);
        if (t->info == NULL) {
            return NULL;
        }
    }
    return PyDict_Copy(t->info);
}

/* ---- the byte transport (conn.c's cd_transport_t) ---------------- */

/* Plaintext entries of c->outq up to this size are gathered into one
 * TLS record (a response head and a small body: one record, one AEAD). */
#define CD_TLS_GATHER 16384

typedef struct {
    cd_tls_t *tls;  /* owned */
    cd_outq_t wire; /* owned: ciphertext for the socket */
    int got_bytes;  /* the first ciphertext arrived */
    int ready;      /* cd_conn_ready ran: the protocol is set up */
} cd_tls_conn_t;

static int
tls_tp_open(cd_conn_t *c, cd_listener_t *ls)
{
    cd_tls_conn_t *tc = calloc(1, sizeof(*tc));
    if (tc == NULL) {
        return UV_ENOMEM;
    }
    tc->tls = cd_tls_new(ls->tls);
    if (tc->tls == NULL) {
        free(tc);
        return UV_ENOMEM;
    }
    c->transport_data = tc;
    return 0;
}

/* Socket reads land in the server's one buffer (--tls-read-size): libuv
 * calls read right after alloc, all of it is decrypted before the read
 * callback returns, and a server's conns run on its loop's thread.  No
 * memory: an empty buffer, and libuv reports UV_ENOBUFS (a close). */
static void
tls_tp_alloc(cd_conn_t *c, uv_buf_t *buf)
{
    cd_server_t *srv = c->server;
    if (srv->tls_rbuf == NULL) {
        srv->tls_rbuf = malloc(srv->cfg.tls_read_size);
    }
    *buf = cd_uvbuf(srv->tls_rbuf,
                    srv->tls_rbuf != NULL ? srv->cfg.tls_read_size : 0);
}

/* A fatal error: try to send the alert OpenSSL queued, right now (the
 * conn closes without flushing). */
static void
tls_send_alert(cd_conn_t *c, cd_tls_conn_t *tc)
{
    size_t n;
    char *p = cd_tls_take_out(tc->tls, &n);
    if (p != NULL) {
        uv_buf_t b = cd_uvbuf(p, n);
        (void)uv_try_write(&c->io.stream, &b, 1);
        free(p);
    }
}

/* The records a read brought made OpenSSL queue `own` bytes of its
 * own, with no bound: a no_renegotiation alert per TLS 1.2 ClientHello
 * (31 bytes for a 33-byte record), a KeyUpdate per TLS 1.3 KeyUpdate
 * that asks for one (27 for 27; tests/test_tls_hostile.py forges both).
 * A peer that never reads keeps them in our write queue: stop reading
 * above --write-buffer-size, as a WebSocket's pongs do (websocket.c
 * write_check_high); the drain reads again, the header and idle timers
 * still drop the peer. */
static void
tls_check_flood(cd_conn_t *c, size_t own)
{
    if (c->write_queued + own > c->server->cfg.write_high_water) {
        cd_conn_read_hold(c);
    }
}

static int
tls_tp_read(cd_conn_t *c, const uv_buf_t *buf, size_t nread)
{
    cd_tls_conn_t *tc = c->transport_data;
    if (!tc->got_bytes) {
        /* The handshake must finish within the header timeout. */
        tc->got_bytes = 1;
        cd_conn_timer_start(c, c->server->cfg.header_timeout);
    }
    if (cd_tls_feed(tc->tls, buf->base, nread) < 0) {
        return UV_ENOMEM;
    }
    /* All of it is decrypted now: nothing waits in OpenSSL while the
     * protocol has reading paused, and c->in grows by at most nread plus
     * the rest of a record begun earlier. */
    size_t before = c->in.len;
    int r = cd_tls_read(tc->tls, &c->in, SIZE_MAX);
    if (r < 0) {
        tls_send_alert(c, tc);
        return r;
    }
    /* The peer's close_notify (CD_TLS_EOF) is its FIN: ours follows the
     * last response (conn.c conn_transport_shutdown), or goes at once if
     * the conn closes now (conn_say_goodbye). */
    size_t own = cd_tls_out_pending(tc->tls);
    if (own > 0) {
        cd_conn_want_flush(c); /* Handshake records, tickets, KeyUpdate. */
        tls_check_flood(c, own);
    }
    else if (r == 0 && nread > CD_TLS_BIO_KEEP / 2) {
        cd_tls_trim(tc->tls); /* Only a large read grows the BIO. */
    }
    /* Ready once the handshake is done, even if the peer's close_notify
     * came in the same read: its requests are parsed, then it ends. */
    if (!tc->ready && cd_tls_handshake_done(tc->tls)) {
        tc->ready = 1;
        /* Idle until the first request, as a plain conn at accept. */
        cd_conn_timer_start(c, c->server->cfg.keepalive_timeout);
        cd_conn_ready(c);
    }
    if (c->in.len > before && tc->ready) {
        return r == CD_TLS_EOF ? 2 : 1;
    }
    return r == CD_TLS_EOF ? UV_EOF : 0;
}

/* Ciphertext bytes a record may add to its plaintext, at most (TLS 1.2
 * CBC with SHA-384: header, IV, MAC, padding). */
#define CD_TLS_RECORD_OVERHEAD 96

/* Appends the ciphertext OpenSSL made to out.  A memory BIO keeps the
 * largest size it ever held (a flush that encrypted a 4 MiB response at
 * once left 4 MiB on the idle conn): it is emptied after each record. */
static int
tls_drain(cd_tls_t *t, cd_buf_t *out)
{
    size_t len = BIO_ctrl_pending(t->wbio);
    size_t got = 0;
    if (len == 0) {
        return 0;
    }
    if (cd_buf_reserve(out, len) < 0) {
        return UV_ENOMEM;
    }
    if (!BIO_read_ex(t->wbio, out->base + out->len, len, &got) || got != len) {
        ERR_clear_error();
        return UV_EPROTO;
    }
    out->len += len;
    return 0;
}

/* Encrypts n plaintext bytes into out, one record at a time. */
static int
tls_encrypt(cd_tls_t *t, const char *p, size_t n, cd_buf_t *out)
{
    while (n > 0) {
        size_t step = n < CD_TLS_CHUNK ? n : CD_TLS_CHUNK;
        if (cd_tls_write(t, p, step) < 0 || tls_drain(t, out) < 0) {
            return -1;
        }
        p += step;
        n -= step;
    }
    return 0;
}

/* Encrypts c->outq into out: small entries gathered into one record. */
static int
tls_encrypt_outq(cd_conn_t *c, cd_tls_t *tls, cd_buf_t *out)
{
    char gather[CD_TLS_GATHER];
    size_t g = 0;
    cd_outq_t *q = &c->outq;
    for (int i = 0; i < q->n; i++) {
        const char *p = q->bufs[i].base;
        size_t n = q->bufs[i].len;
        if (g + n <= sizeof(gather)) {
            memcpy(gather + g, p, n);
            g += n;
            continue;
        }
        if (g > 0 && tls_encrypt(tls, gather, g, out) < 0) {
            return -1;
        }
        g = 0;
        if (n <= sizeof(gather)) {
            memcpy(gather, p, n);
            g = n;
        }
        else if (tls_encrypt(tls, p, n, out) < 0) {
            return -1;
        }
    }
    if (g > 0 && tls_encrypt(tls, gather, g, out) < 0) {
        return -1;
    }
    cd_conn_outq_clear(c);
    return 0;
}

/* Room for the ciphertext of c->outq and what OpenSSL holds already. */
static size_t
tls_out_estimate(cd_conn_t *c, cd_tls_t *tls)
{
    size_t n = cd_tls_out_pending(tls);
    for (int i = 0; i < c->outq.n; i++) {
        n += c->outq.bufs[i].len +
             (c->outq.bufs[i].len / CD_TLS_CHUNK + 1) * CD_TLS_RECORD_OVERHEAD;
    }
    return n;
}

/* Encrypts c->outq (if it can go) and queues the ciphertext, handshake
 * records and alerts included, as one block of the wire queue. */
static int
tls_flush_to_wire(cd_conn_t *c, cd_tls_conn_t *tc)
{
    cd_buf_t out = {NULL, 0, 0};
    int encrypt = c->outq.n > 0 && cd_tls_is_open(tc->tls);
    if ((encrypt && (cd_buf_reserve(&out, tls_out_estimate(c, tc->tls)) < 0 ||
                     tls_encrypt_outq(c, tc->tls, &out) < 0)) ||
        tls_drain(tc->tls, &out) < 0) {
        cd_buf_dispose(&out);
        return -1;
    }
    if (out.len > CD_TLS_BIO_KEEP / 2) {
        cd_tls_trim(tc->tls); /* Only a large drain grew the BIO. */
    }
    if (out.len == 0) {
        cd_buf_dispose(&out);
        return 0;
    }
    uv_buf_t b = cd_uvbuf(out.base, out.len);
    return cd_conn_wire_push(c, &tc->wire, &b, 1, NULL, out.base) < 0 ? -1 : 0;
}

static cd_outq_t *
tls_tp_encode(cd_conn_t *c)
{
    cd_tls_conn_t *tc = c->transport_data;
    if (c->outq.n > 0 && !cd_tls_is_open(tc->tls) &&
        (cd_tls_handshake_done(tc->tls) ||
         (c->flags & CD_CONN_F_CLOSE_AFTER))) {
        /* After an error nothing more can be sent; nor can a response
         * before the handshake (the 503 of --limit-concurrency): drop
         * it. */
        cd_conn_outq_clear(c);
    }
    /* Else, before the handshake, it waits for it. */
    return tls_flush_to_wire(c, tc) < 0 ? NULL : &tc->wire;
}

static int
tls_tp_shutdown(cd_conn_t *c)
{
    cd_tls_conn_t *tc = c->transport_data;
    if (!cd_tls_is_open(tc->tls)) {
        return 0;
    }
    cd_tls_shutdown(tc->tls);
    return cd_tls_out_pending(tc->tls) > 0;
}

static void
tls_tp_free(cd_conn_t *c)
{
    cd_tls_conn_t *tc = c->transport_data;
    if (tc == NULL) {
        return;
    }
    cd_tls_free(tc->tls);
    cd_conn_wire_dispose(&tc->wire);
    free(tc);
    c->transport_data = NULL;
}

const cd_transport_t cd_tls_transport = {
    .name = "tls",
    .open = tls_tp_open,
    .alloc = tls_tp_alloc,
    .read = tls_tp_read,
    .encode = tls_tp_encode,
    .shutdown = tls_tp_shutdown,
    .free = tls_tp_free,
};

PyObject *
cd_tls_conn_info(cd_conn_t *c)
{
    if (c->transport != &cd_tls_transport || c->transport_data == NULL) {
        return NULL;
    }
    cd_tls_conn_t *tc = c->transport_data;
    return cd_tls_info(tc->tls);
}
