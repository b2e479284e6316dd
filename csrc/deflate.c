/* permessage-deflate (RFC 7692): the offer in Sec-WebSocket-Extensions,
 * the response to it, and one connection's zlib streams.
 *
 * Knows nothing of wslay or of connections: websocket.c hands it header
 * values and message payloads.  Every bound is the caller's: the inflated
 * size of a message (a compression bomb stops one byte past the limit,
 * in bounded steps), and the LZ77 window and memLevel of both streams,
 * which are made on first use so that an idle connection holds no zlib
 * state at all. */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

/* The first output step when inflating, before doubling. */
#define CD_DEFLATE_STEP_MIN 1024
/* The tail every compressed message lost (RFC 7692 7.2.2). */
static const unsigned char deflate_tail[4] = {0x00, 0x00, 0xff, 0xff};

struct cd_deflate_s {
    cd_deflate_params_t params;
    int mem_level;
    int in_ready;  /* inflater initialised */
    int out_ready; /* deflater initialised */
    z_stream in;   /* owned (zlib's state): the peer's messages */
    z_stream out;  /* owned (zlib's state): ours */
};

/* ---- the offer ---------------------------------------------------- */

/* A cursor over one header value. */
typedef struct {
    const char *p;   /* borrowed: the header value */
    const char *end; /* borrowed */
} ext_cursor_t;

/* An offer's parameters as seen so far. */
typedef struct {
    int ok;                 /* no bad or repeated parameter yet */
    int server_no_takeover; /* -1 not seen */
    int client_no_takeover; /* -1 not seen */
    int server_bits;        /* -1 not seen */
    int client_bits;        /* -1 not seen, 0 without a value */
} ext_offer_t;

static int
ext_tchar(unsigned char ch)
{
    /* RFC 9110 tchar. */
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static void
ext_skip_ows(ext_cursor_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t')) {
        c->p++;
    }
}

static size_t
ext_token(ext_cursor_t *c)
{
    const char *start = c->p;
    while (c->p < c->end && ext_tchar((unsigned char)*c->p)) {
        c->p++;
    }
    return (size_t)(c->p - start);
}

/* A parameter value, a token or a quoted-string, unescaped into val
 * (cut at cap - 1 bytes; *len says how long it really was).  -1 on a
 * syntax error. */
static int
ext_value(ext_cursor_t *c, char *val, size_t cap, size_t *len)
{
    size_t n = 0;
    if (c->p < c->end && *c->p == '"') {
        c->p++;
        for (;;) {
            if (c->p >= c->end) {
                return -1;
            }
            char ch = *c->p++;
            if (ch == '"') {
                break;
            }
            if (ch == '\\') {
                if (c->p >= c->end) {
                    return -1;
                }
                ch = *c->p++;
            }
            if (n + 1 < cap) {
                val[n] = ch;
            }
            n++;
        }
    }
    else {
        const char *start = c->p;
        n = ext_token(c);
        if (n == 0) {
            return -1;
        }
        memcpy(val, start, n < cap ? n : cap - 1);
    }
    val[n < cap ? n : cap - 1] = '\0';
    *len = n;
    return 0;
}

/* RFC 7692 7.1.2: 1*DIGIT without a leading zero, 8 to 15. */
static int
ext_window_bits(const char *v, size_t n)
{
    if (n == 1 && (v[0] == '8' || v[0] == '9')) {
        return v[0] - '0';
    }
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5') {
        return 10 + (v[1] - '0');
    }
    return -1;
}

static int
ext_name_is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

/* Records one parameter of a permessage-deflate offer; a parameter that
 * is unknown, repeated or has a bad value declines the offer. */
static void
ext_param(ext_offer_t *o, const char *name, size_t n, const char *val,
          size_t vlen, int has_value)
{
    int *slot = NULL;
    int v = 0;
    if (ext_name_is(name, n, "server_no_context_takeover")) {
        slot = &o->server_no_takeover;
        v = has_value ? -1 : 1;
    }
    else if (ext_name_is(name, n, "client_no_context_takeover")) {
        slot = &o->client_no_takeover;
        v = has_value ? -1 : 1;
    }
    else if (ext_name_is(name, n, "server_max_window_bits")) {
        slot = &o->server_bits;
        v = has_value ? ext_window_bits(val, vlen) : -1;
    }
    else if (ext_name_is(name, n, "client_max_window_bits")) {
        slot = &o->client_bits;
        v = has_value ? ext_window_bits(val, vlen) : 0;
    }
    if (slot == NULL || *slot != -1 || v < 0) {
        o->ok = 0;
        return;
    }
    *slot = v;
}

/* Parses one extension of the list (its name and parameters) and leaves
 * the cursor at the ',' or the end.  *is_pmd: it was permessage-deflate.
 * -1 on a syntax error. */
static int
ext_parse_one(ext_cursor_t *c, ext_offer_t *o, int *is_pmd)
{
    char val[16];
    ext_skip_ows(c);
    const char *name = c->p;
    size_t n = ext_token(c);
    if (n == 0) {
        return -1;
    }
    *is_pmd = ext_name_is(name, n, "permessage-deflate");
    o->ok = 1;
    o->server_no_takeover = o->client_no_takeover = -1;
    o->server_bits = o->client_bits = -1;
    for (;;) {
        ext_skip_ows(c);
        if (c->p >= c->end || *c->p == ',') {
            return 0;
        }
        if (*c->p != ';') {
            return -1;
        }
        c->p++;
        ext_skip_ows(c);
        const char *pname = c->p;
        size_t pn = ext_token(c);
        if (pn == 0) {
            return -1;
        }
        ext_skip_ows(c);
        size_t vlen = 0;
        int has_value = c->p < c->end && *c->p == '=';
        if (has_value) {
            c->p++;
            ext_skip_ows(c);
            if (ext_value(c, val, sizeof(val), &vlen) < 0) {
                return -1;
            }
        }
        if (*is_pmd) {
            ext_param(o, pname, pn, val, vlen, has_value);
        }
    }
}

/* Turns an acceptable offer into the parameters we answer with; 0 if we
 * must decline it. */
static int
ext_settle(const ext_offer_t *o, const cd_deflate_limits_t *lim,
           cd_deflate_params_t *p)
{
    int bits = lim->window_bits;
    memset(p, 0, sizeof(*p));
    if (o->server_bits >= 0) {
        /* zlib cannot compress raw deflate with a 256-byte window. */
        if (o->server_bits < 9) {
            return 0;
        }
        p->server_bits = o->server_bits < bits ? o->server_bits : bits;
        p->say_server_bits = 1;
    }
    else {
        /* 7.1.2.1: a server may limit its own window unasked. */
        p->server_bits = bits;
        p->say_server_bits = bits < 15;
    }
    if (o->client_bits >= 0) {
        int offered = o->client_bits ? o->client_bits : 15;
        p->client_bits = offered < bits ? offered : bits;
        p->say_client_bits = 1;
    }
    else {
        p->client_bits = 15; /* Not offered: the client may use 32 KiB. */
    }
    p->server_no_takeover = o->server_no_takeover == 1;
    p->client_no_takeover = o->client_no_takeover == 1;
    return 1;
}

int
cd_deflate_negotiate(const char *value, size_t n,
                     const cd_deflate_limits_t *lim, cd_deflate_params_t *p)
{
    ext_cursor_t c = {value, value + n};
    for (;;) {
        /* 1#extension: empty elements are allowed. */
        while (c.p < c.end && (*c.p == ',' || *c.p == ' ' || *c.p == '\t')) {
            c.p++;
        }
        if (c.p >= c.end) {
            return 0;
        }
        ext_offer_t o;
        int is_pmd = 0;
        if (ext_parse_one(&c, &o, &is_pmd) < 0) {
            return 0; /* A broken list: decline the rest of it. */
        }
        if (is_pmd && o.ok && ext_settle(&o, lim, p)) {
            return 1;
        }
    }
}

int
cd_deflate_response(const cd_deflate_t *d, cd_buf_t *out)
{
    const cd_deflate_params_t *p = &d->params;
    char line[200];
    int n = snprintf(
        line, sizeof(line), "sec-websocket-extensions: permessage-deflate%s%s",
        p->server_no_takeover ? "; server_no_context_takeover" : "",
        p->client_no_takeover ? "; client_no_context_takeover" : "");
    if (p->say_server_bits) {
        n += snprintf(line + n, sizeof(line) - (size_t)n,
                      "; server_max_window_bits=%d", p->server_bits);
    }
    if (p->say_client_bits) {
        n += snprintf(line + n, sizeof(line) - (size_t)n,
                      "; client_max_window_bits=%d", p->client_bits);
    }
    n += snprintf(line + n, sizeof(line) - (size_t)n, "\r\n");
    return cd_buf_append(out, line, (size_t)n);
}

/* ---- the streams -------------------------------------------------- */

cd_deflate_t *
cd_deflate_new(const cd_deflate_params_t *p, int mem_level)
{
    cd_deflate_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return NULL;
    }
    d->params = *p;
    d->mem_level = mem_level;
    return d;
}

void
cd_deflate_free(cd_deflate_t *d)
{
    if (d == NULL) {
        return;
    }
    if (d->in_ready) {
        inflateEnd(&d->in);
    }
    if (d->out_ready) {
        deflateEnd(&d->out);
    }
    free(d);
}

/* Grows out to hold at least one more byte, doubling, never past cap
 * bytes in all. */
static int
grow_capped(cd_buf_t *out, size_t first, size_t cap)
{
    size_t want = out->cap ? out->cap * 2 : first;
    if (want > cap) {
        want = cap;
    }
    if (want <= out->cap) {
        return UV_EMSGSIZE;
    }
    char *b = realloc(out->base, want);
    if (b == NULL) {
        return UV_ENOMEM;
    }
    out->base = b;
    out->cap = want;
    return 0;
}

/* Feeds the next piece of input: the message in pieces zlib's uInt can
 * count, then the 4-byte tail.  0 when there is nothing left. */
static int
inflate_feed(z_stream *z, const unsigned char **p, size_t *left, int *tail)
{
    if (*left > 0) {
        size_t k = *left < UINT_MAX ? *left : UINT_MAX;
        z->next_in = (Bytef *)(uintptr_t)*p;
        z->avail_in = (uInt)k;
        *p += k;
        *left -= k;
        return 1;
    }
    if (!*tail) {
        *tail = 1;
        z->next_in = (Bytef *)(uintptr_t)deflate_tail;
        z->avail_in = sizeof(deflate_tail);
        return 1;
    }
    return 0;
}

static int
inflate_ready(cd_deflate_t *d)
{
    if (d->in_ready) {
        return 0;
    }
    /* A larger window than the peer's is always safe; zlib's inflate
     * takes 8, but some peers' "8" is zlib's 9 in disguise. */
    int bits = d->params.client_bits < 9 ? 9 : d->params.client_bits;
    if (inflateInit2(&d->in, -bits) != Z_OK) {
        return UV_ENOMEM;
    }
    d->in_ready = 1;
    return 0;
}

int
cd_deflate_inflate(cd_deflate_t *d, const char *data, size_t n, size_t max,
                   cd_buf_t *out)
{
    int r = inflate_ready(d);
    if (r < 0) {
        return r;
    }
    z_stream *z = &d->in;
    const unsigned char *p = (const unsigned char *)data;
    size_t left = n, cap = max < SIZE_MAX ? max + 1 : max;
    size_t first = n < (SIZE_MAX >> 3) ? n * 4 : n;
    int tail = 0;
    if (first < CD_DEFLATE_STEP_MIN) {
        first = CD_DEFLATE_STEP_MIN;
    }
    z->avail_in = 0;
    for (;;) {
        if (z->avail_in == 0) {
            inflate_feed(z, &p, &left, &tail);
        }
        if (out->len == out->cap && (r = grow_capped(out, first, cap)) < 0) {
            break;
        }
        size_t room = out->cap - out->len;
        uInt give = room < UINT_MAX ? (uInt)room : UINT_MAX;
        z->next_out = (Bytef *)out->base + out->len;
        z->avail_out = give;
        int zr = inflate(z, Z_SYNC_FLUSH);
        out->len += give - z->avail_out;
        if (out->len > max) {
            r = UV_EMSGSIZE;
            break;
        }
        if (zr == Z_STREAM_END) {
            /* BFINAL (7.2.3.3 allows it): the next message starts a new
             * stream; what follows in this one is ignored. */
            inflateReset(z);
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            r = zr == Z_MEM_ERROR ? UV_ENOMEM : UV_EINVAL;
            break;
        }
        if (tail && z->avail_in == 0 && z->avail_out > 0) {
            break; /* All input in, all output out. */
        }
    }
    if (r < 0 || d->params.client_no_takeover) {
        inflateReset(z);
    }
    return r;
}

static int
deflate_ready(cd_deflate_t *d)
{
    if (d->out_ready) {
        return 0;
    }
    if (deflateInit2(&d->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                     -d->params.server_bits, d->mem_level,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return UV_ENOMEM;
    }
    d->out_ready = 1;
    return 0;
}

int
cd_deflate_compress(cd_deflate_t *d, const char *data, size_t n,
                    size_t headroom, cd_buf_t *out)
{
    int r = deflate_ready(d);
    if (r < 0) {
        return r;
    }
    z_stream *z = &d->out;
    if (n == 0) {
        /* 7.2.3.6: an empty message is one 0x00 byte; zlib would answer a
         * second flush in a row with Z_BUF_ERROR and no output. */
        if ((r = cd_buf_reserve(out, headroom + 1)) < 0) {
            return r;
        }
        memset(out->base, 0, headroom + 1);
        out->len = headroom + 1;
        return 0;
    }
    /* The bound of one Z_FINISH call, plus the sync flush's empty block:
     * one allocation of that size (not cd_buf's doubling, which could
     * hold twice a large message) for nearly every message. */
    uLong bound = deflateBound(z, n < ULONG_MAX ? (uLong)n : ULONG_MAX);
    if (out->cap == 0) {
        out->base = malloc(headroom + bound + 16);
        if (out->base == NULL) {
            return UV_ENOMEM;
        }
        out->cap = headroom + bound + 16;
    }
    else if ((r = cd_buf_reserve(out, headroom + bound + 16)) < 0) {
        return r;
    }
    out->len = headroom;
    const unsigned char *p = (const unsigned char *)data;
    size_t left = n;
    z->avail_in = 0;
    for (;;) {
        if (z->avail_in == 0 && left > 0) {
            size_t k = left < UINT_MAX ? left : UINT_MAX;
            z->next_in = (Bytef *)(uintptr_t)p;
            z->avail_in = (uInt)k;
            p += k;
            left -= k;
        }
        if (out->len == out->cap && (r = cd_buf_reserve(out, 4096)) < 0) {
            break;
        }
        size_t room = out->cap - out->len;
        uInt give = room < UINT_MAX ? (uInt)room : UINT_MAX;
        z->next_out = (Bytef *)out->base + out->len;
        z->avail_out = give;
        int zr = deflate(z, left > 0 ? Z_NO_FLUSH : Z_SYNC_FLUSH);
        out->len += give - z->avail_out;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            r = UV_EINVAL;
            break;
        }
        if (left == 0 && z->avail_in == 0 && z->avail_out > 0) {
            break;
        }
    }
    if (r == 0) {
        if (out->len < headroom + 4 ||
            memcmp(out->base + out->len - 4, deflate_tail, 4) != 0) {
            r = UV_EINVAL;
        }
        else {
            out->len -= 4;
        }
    }
    if (r < 0 || d->params.server_no_takeover) {
        deflateReset(z);
    }
    return r;
}
