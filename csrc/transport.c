/* The "copy" byte transport: a test double for the seam a TLS transport
 * uses (internal.h, cd_transport_t).  It passes bytes through unchanged,
 * but the way TLS does: reads land in a buffer of its own and are copied
 * into c->in, the protocol is told it is ready only at the first byte,
 * and each flush copies c->outq into one block of its wire queue,
 * releasing the protocol's entries early; its shutdown queues an empty
 * block before our close or FIN.  CDAPHNE_TEST_TRANSPORT=copy in the
 * environment puts it on every listener, so the whole suite can run over
 * the seam; nothing else uses it. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define CD_COPY_READ_SIZE 65536

typedef struct {
    cd_outq_t wire; /* owned: copies of the protocol's output */
    int ready;      /* cd_conn_ready ran */
} cd_copy_t;

/* libuv calls read right after alloc: one buffer per thread will do. */
static _Thread_local char copy_rbuf[CD_COPY_READ_SIZE];

static int
copy_open(cd_conn_t *c, cd_listener_t *ls)
{
    cd_copy_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return UV_ENOMEM;
    }
    c->transport_data = t;
    return 0;
}

static void
copy_alloc(cd_conn_t *c, uv_buf_t *buf)
{
    *buf = cd_uvbuf(copy_rbuf, sizeof(copy_rbuf));
}

static int
copy_read(cd_conn_t *c, const uv_buf_t *buf, size_t nread)
{
    cd_copy_t *t = c->transport_data;
    if (!t->ready) {
        t->ready = 1;
        cd_conn_ready(c);
    }
    if (cd_buf_append(&c->in, buf->base, nread) < 0) {
        return UV_ENOMEM;
    }
    return 1;
}

static cd_outq_t *
copy_encode(cd_conn_t *c)
{
    cd_copy_t *t = c->transport_data;
    cd_outq_t *q = &c->outq;
    size_t len = 0;
    for (int i = 0; i < q->n; i++) {
        len += q->bufs[i].len;
    }
    if (q->n == 0) {
        return &t->wire;
    }
    char *block = malloc(len ? len : 1);
    if (block == NULL) {
        return NULL;
    }
    size_t at = 0;
    for (int i = 0; i < q->n; i++) {
        memcpy(block + at, q->bufs[i].base, q->bufs[i].len);
        at += q->bufs[i].len;
    }
    cd_conn_outq_clear(c);
    uv_buf_t b = cd_uvbuf(block, len);
    return cd_conn_wire_push(c, &t->wire, &b, 1, NULL, block) < 0 ? NULL
                                                                  : &t->wire;
}

static int
copy_shutdown(cd_conn_t *c)
{
    cd_copy_t *t = c->transport_data;
    char *block = malloc(1);
    uv_buf_t b = cd_uvbuf(block, 0);
    if (block == NULL || cd_conn_wire_push(c, &t->wire, &b, 1, NULL, block)) {
        return 0;
    }
    return 1;
}

static void
copy_free(cd_conn_t *c)
{
    cd_copy_t *t = c->transport_data;
    if (t != NULL) {
        cd_conn_wire_dispose(&t->wire);
        free(t);
        c->transport_data = NULL;
    }
}

static const cd_transport_t copy_transport = {
    .name = "copy",
    .open = copy_open,
    .alloc = copy_alloc,
    .read = copy_read,
    .encode = copy_encode,
    .shutdown = copy_shutdown,
    .free = copy_free,
};

const cd_transport_t *
cd_transport_test(void)
{
    const char *v = getenv("CDAPHNE_TEST_TRANSPORT");
    return v != NULL && strcmp(v, "copy") == 0 ? &copy_transport : NULL;
}
