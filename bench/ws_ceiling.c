/*
 * ws_ceiling.c: the floor of a libuv WebSocket echo server's cost.
 *
 * A bare libuv server with no Python: it answers the opening handshake
 * (101 with Sec-WebSocket-Accept), echoes each message frame unmasked
 * (text as text, binary as binary), answers a ping with a pong and a close
 * with a close.  It reads and writes the way cdaphne does (libuv's read
 * with a 64 KiB buffer, one uv_try_write per frame, uv_write for what the
 * socket did not take), so its system calls per message are cdaphne's:
 * what it costs per message is the kernel's share that any server of this
 * design pays (bench/ws_split.sh compares them).
 *
 * Whole frames are echoed straight from the read buffer; a frame cut by a
 * read is kept in the connection's buffer (8 KiB: the bench's messages are
 * small; a larger frame closes the connection).  No extensions, no
 * fragmented messages, no UTF-8 check: a measuring tool, not a server.
 *
 * Build: cc -O2 -o ws_ceiling ws_ceiling.c $(pkg-config --cflags --libs libuv)
 * Run:   ./ws_ceiling PORT   (listens on 127.0.0.1 only)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "ws_sha1.h"

#define CONN_BUF 8192 /* Handshake or cut frame bytes kept per connection. */

typedef struct {
    uv_tcp_t tcp; /* First member: the handle pointer is the conn pointer. */
    int open;     /* The handshake was answered. */
    size_t n;     /* Bytes kept in in[]. */
    char in[CONN_BUF + 1];
} conn_t;

static uv_loop_t *loop;
static char read_buf[65536];
static uint8_t frame_out[CONN_BUF + 4];

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void
on_close(uv_handle_t *h)
{
    free(h);
}

static void
conn_close(conn_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

static void
on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

/* Writes p: what the socket takes now, a copy of the rest in a uv_write. */
static void
conn_send(conn_t *c, const void *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned int)n);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r == (int)n) {
        return;
    }
    if (r < 0 && r != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    size_t done = r > 0 ? (size_t)r : 0;
    uv_write_t *req = malloc(sizeof(*req) + n - done);
    if (req == NULL) {
        conn_close(c);
        return;
    }
    memcpy(req + 1, (const char *)p + done, n - done);
    b = uv_buf_init((char *)(req + 1), (unsigned int)(n - done));
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(req);
        conn_close(c);
    }
}

/* Answers the request head kept in c->in; its length, or 0 if the head
 * has not all come yet. */
static size_t
conn_handshake(conn_t *c)
{
    c->in[c->n] = '\0';
    char *end = strstr(c->in, "\r\n\r\n");
    if (end == NULL) {
        return 0;
    }
    char key[64] = {0};
    char *k = strcasestr(c->in, "\r\nsec-websocket-key:");
    if (k != NULL) {
        k += 20;
        while (*k == ' ') {
            k++;
        }
        for (int i = 0; i < 63 && k[i] != '\r' && k[i] != ' '; i++) {
            key[i] = k[i];
        }
    }
    char joined[128], accept[32], resp[256];
    uint8_t digest[20];
    int jl = snprintf(joined, sizeof(joined), "%s%s", key, WS_GUID);
    sha1_short((const uint8_t *)joined, (size_t)jl, digest);
    base64(digest, 20, accept);
    int rl = snprintf(resp, sizeof(resp),
                      "HTTP/1.1 101 Switching Protocols\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n",
                      accept);
    conn_send(c, resp, (size_t)rl);
    c->open = 1;
    return (size_t)(end + 4 - c->in);
}

/* Echoes the client frame at p; its length, or 0 if it is cut. */
static size_t
conn_frame(conn_t *c, const uint8_t *p, size_t n)
{
    if (n < 2) {
        return 0;
    }
    size_t len = p[1] & 127, head = 2;
    if (len == 126) {
        if (n < 4) {
            return 0;
        }
        len = (size_t)p[2] << 8 | p[3];
        head = 4;
    }
    else if (len == 127) {
        conn_close(c); /* Larger than the bench sends. */
        return n;
    }
    if (len > CONN_BUF) {
        conn_close(c);
        return n;
    }
    if (n < head + 4 + len) {
        return 0;
    }
    const uint8_t *mask = p + head, *payload = p + head + 4;
    int op = p[0] & 15;
    size_t out = 2;
    frame_out[0] = (uint8_t)(0x80 | (op == 9 ? 10 : op));
    if (len < 126) {
        frame_out[1] = (uint8_t)len;
    }
    else {
        frame_out[1] = 126;
        frame_out[2] = (uint8_t)(len >> 8);
        frame_out[3] = (uint8_t)len;
        out = 4;
    }
    for (size_t i = 0; i < len; i++) {
        frame_out[out + i] = payload[i] ^ mask[i & 3];
    }
    if (op != 10) { /* A pong is not answered. */
        conn_send(c, frame_out, out + len);
    }
    if (op == 8) {
        conn_close(c);
    }
    return head + 4 + len;
}

/* Takes what c->in holds: the head, then whole frames; keeps the rest. */
static void
conn_take_kept(conn_t *c)
{
    size_t used = 0, u;
    if (!c->open && (used = conn_handshake(c)) == 0) {
        return;
    }
    while (used < c->n && !uv_is_closing((uv_handle_t *)&c->tcp) &&
           (u = conn_frame(c, (uint8_t *)c->in + used, c->n - used)) > 0) {
        used += u;
    }
    memmove(c->in, c->in + used, c->n - used);
    c->n -= used;
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = (conn_t *)s;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t n = (size_t)nread, u;
    if (c->open && c->n == 0) {
        while (n > 0 && !uv_is_closing((uv_handle_t *)s) &&
               (u = conn_frame(c, p, n)) > 0) {
            p += u;
            n -= u;
        }
        if (n == 0 || uv_is_closing((uv_handle_t *)s)) {
            return;
        }
    }
    if (c->n + n > CONN_BUF) {
        conn_close(c);
        return;
    }
    memcpy(c->in + c->n, p, n);
    c->n += n;
    conn_take_kept(c);
}

static void
on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return;
    }
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (r == 0) {
        r = uv_listen((uv_stream_t *)&server, 1024, on_connection);
    }
    if (r != 0) {
        fprintf(stderr, "listen: %s\n", uv_strerror(r));
        return 1;
    }
    fprintf(stderr, "Listening on 127.0.0.1:%s\n", argv[1]);
    return uv_run(loop, UV_RUN_DEFAULT);
}
