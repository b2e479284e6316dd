/*
 * ceiling.c: the physical limit for the hello-world benchmarks.
 *
 * A bare libuv HTTP/1.1 server with no Python and no HTTP parser: every
 * request that ends in "\r\n\r\n" (a GET without a body, which is all the
 * benchmark sends) is answered with the same constant response bytes that
 * the ASGI hello-world app produces.  Connections stay open (keep-alive), and
 * pipelined requests are answered in one write per read, in order.
 *
 * Build: cc -O2 -o ceiling ceiling.c $(pkg-config --cflags --libs libuv)
 * Run:   ./ceiling PORT   (listens on 127.0.0.1 only)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

/* The same status, headers and body as bench/apps/hello.py. */
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\n"
                               "server: ceiling\r\n"
                               "content-type: text/plain\r\n"
                               "content-length: 13\r\n"
                               "\r\n"
                               "Hello, world!";
#define RESPONSE_LEN (sizeof(RESPONSE) - 1)

/* The end-of-headers marker that counts one request. */
static const char MARKER[] = "\r\n\r\n";

/* One read buffer is enough: the loop is single-threaded and each read is
 * consumed before the next one starts. */
static char read_buf[65536];

typedef struct {
    uv_tcp_t tcp;  /* First member: the handle pointer is the conn pointer. */
    int matched;   /* Bytes of MARKER matched at the end of the last read. */
} conn_t;

typedef struct {
    uv_write_t req;
    char data[];   /* The responses, owned until write_on_done runs. */
} write_t;

static void
conn_on_close(uv_handle_t *handle)
{
    free(handle);
}

static void
conn_close(conn_t *conn)
{
    if (!uv_is_closing((uv_handle_t *)&conn->tcp)) {
        uv_close((uv_handle_t *)&conn->tcp, conn_on_close);
    }
}

static void
write_on_done(uv_write_t *req, int status)
{
    if (status < 0) {
        conn_close((conn_t *)req->handle);
    }
    free(req);
}

static void
conn_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}

/* Counts the requests completed by these bytes, carrying a partial marker
 * over to the next read. */
static size_t
count_requests(conn_t *conn, const char *p, size_t n)
{
    size_t count = 0;
    int m = conn->matched;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == MARKER[m]) {
            m++;
            if (m == 4) {
                count++;
                m = 0;
            }
        }
        else {
            m = (p[i] == '\r') ? 1 : 0;
        }
    }
    conn->matched = m;
    return count;
}

static void
conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *conn = (conn_t *)stream;
    if (nread < 0) {
        conn_close(conn);  /* EOF or error. */
        return;
    }
    size_t count = count_requests(conn, buf->base, (size_t)nread);
    if (count == 0) {
        return;
    }
    /* All the responses of this read go out in one contiguous write. */
    size_t len = count * RESPONSE_LEN;
    uv_buf_t out = uv_buf_init(NULL, (unsigned int)len);
    write_t *w = malloc(sizeof(*w) + len);
    if (w == NULL) {
        conn_close(conn);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        memcpy(w->data + i * RESPONSE_LEN, RESPONSE, RESPONSE_LEN);
    }
    out.base = w->data;
    if (uv_write(&w->req, stream, &out, 1, write_on_done) < 0) {
        free(w);  /* The callback never runs when uv_write fails. */
        conn_close(conn);
    }
}

static void
server_on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        return;
    }
    conn_t *conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        return;
    }
    uv_tcp_init(server->loop, &conn->tcp);
    if (uv_accept(server, (uv_stream_t *)&conn->tcp) < 0) {
        conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    uv_read_start((uv_stream_t *)&conn->tcp, conn_on_alloc, conn_on_read);
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_tcp_init(loop, &server);
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&server, 1024, server_on_connection);
    }
    if (rc < 0) {
        fprintf(stderr, "ceiling: %s\n", uv_strerror(rc));
        return 1;
    }
    fprintf(stderr, "ceiling: listening on 127.0.0.1:%s\n", argv[1]);
    return uv_run(loop, UV_RUN_DEFAULT);
}
