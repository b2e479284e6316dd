/* A growable byte buffer: reserve, append, consume, dispose. */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int
cd_buf_reserve(cd_buf_t *b, size_t extra)
{
    if (b->cap - b->len >= extra) {
        return 0;
    }
    if (extra > SIZE_MAX - b->len) {
        return UV_ENOMEM; /* len + extra would wrap. */
    }
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    char *p = realloc(b->base, cap);
    if (p == NULL) {
        return UV_ENOMEM;
    }
    b->base = p;
    b->cap = cap;
    return 0;
}

int
cd_buf_append(cd_buf_t *b, const char *data, size_t n)
{
    if (n == 0) {
        return 0; /* base may be NULL: no memcpy to it, even of 0 bytes. */
    }
    int r = cd_buf_reserve(b, n);
    if (r < 0) {
        return r;
    }
    memcpy(b->base + b->len, data, n);
    b->len += n;
    return 0;
}

void
cd_buf_consume(cd_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}

void
cd_buf_dispose(cd_buf_t *b)
{
    free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}
