/*
 * ws_echo_client.c: the WebSocket echo load generator, in C, so that the
 * client is not the limit of the `ws` scenario.
 *
 * Same protocol and report as the echo mode of bench/ws_client.py (picows):
 * N connections, each sends a masked binary message carrying (connection id,
 * sequence) followed by bytes(range(256)) padding, waits for the echo, checks
 * it byte for byte and sends the next one, until the deadline; then it sends a
 * close frame and waits (briefly) for the server's.  One line on stdout:
 *   WSJSON {"messages": ..., "elapsed_s": ..., "connected": ..., ...}
 * and exit status 1, with one line on stderr, if any connection failed,
 * closed early or got a wrong echo (the report is printed all the same).
 *
 * It is a real client: the opening handshake checks the status 101, the
 * Upgrade and Connection headers and Sec-WebSocket-Accept (SHA-1 of the key,
 * computed here); server frames are parsed from a byte stream (split or
 * coalesced frames, 16/64-bit lengths, fragmented messages, pings answered
 * with pongs, close frames answered); a masked server frame, a reserved bit,
 * an unknown opcode or a bad control frame is a protocol error.
 *
 * One thread, epoll, non-blocking sockets, TCP_NODELAY.  Linux only.
 *
 * Build: cc -O2 -o ws_echo_client ws_echo_client.c
 * Run:   ./ws_echo_client echo --url ws://127.0.0.1:PORT/ --connections 50
 *            --duration 3 --size 64 --first-id 0
 * --messages N instead of --duration: each connection sends exactly N
 * messages, then closes (a fixed amount of work, for instruction counts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ws_sha1.h"

#define HEAD_MAX 16384                 /* Largest handshake response. */
#define MESSAGE_MAX (64 * 1024 * 1024) /* Largest message accepted. */
#define CLOSE_GRACE 2.0  /* Seconds to wait for the server's close frame. */
#define STALL_LIMIT 10.0 /* Seconds after the deadline before giving up. */

typedef enum {
    ST_CONNECTING, /* connect() in progress. */
    ST_HANDSHAKE,  /* Request sent, reading the 101 response. */
    ST_OPEN,       /* One message in flight. */
    ST_CLOSING,    /* Our close frame sent, waiting for the server's. */
    ST_DONE        /* Socket closed. */
} state_t;

typedef struct {
    uint8_t *base; /* owned */
    size_t len;
    size_t cap;
} buf_t;

typedef struct {
    int fd;
    state_t state;
    uint32_t id;
    uint64_t seq;
    char accept[32]; /* The Sec-WebSocket-Accept we expect. */
    buf_t in;        /* Bytes read and not parsed yet. */
    buf_t out;       /* Bytes not written yet (out_off of them are). */
    size_t out_off;
    int want_out;      /* EPOLLOUT is armed. */
    buf_t msg;         /* A fragmented message being assembled. */
    int msg_op;        /* Its opcode, or -1 when none is. */
    uint8_t *expected; /* owned: the message in flight. */
} conn_t;

static struct {
    const char *host;
    const char *port;
    const char *path;
    int connections;
    double duration;
    size_t size;
    uint32_t first_id;
    uint64_t messages; /* per connection; 0: until the deadline */
} opt = {NULL, NULL, "/", 50, 5.0, 64, 0, 0};

static struct {
    uint64_t messages;
    int connected;
    int connect_failures;
    int mismatches;
    int closed_early;
    char first_error[160];
} stats;

static int epfd = -1;
static double deadline;
static int open_conns; /* Connections not yet ST_DONE. */
static int finished;   /* Connections past their last message. */
static double last_finish;
static uint32_t rng_state = 2463534242u;

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t
rng_next(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

static void
fail(const char *why)
{
    if (stats.first_error[0] == '\0') {
        snprintf(stats.first_error, sizeof(stats.first_error), "%s", why);
    }
}

/* ---- buffers ---- */

static int
buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    uint8_t *p = realloc(b->base, cap);
    if (p == NULL) {
        return -1;
    }
    b->base = p;
    b->cap = cap;
    return 0;
}

static int
buf_append(buf_t *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) < 0) {
        return -1;
    }
    memcpy(b->base + b->len, data, len);
    b->len += len;
    return 0;
}

/* ---- connection life ---- */

static void
conn_arm(conn_t *c, int want_out)
{
    if (c->want_out == want_out) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void
conn_finish_messages(void)
{
    finished++;
    last_finish = now();
}

static void
conn_close(conn_t *c)
{
    if (c->state == ST_DONE) {
        return;
    }
    if (c->state != ST_CLOSING) {
        conn_finish_messages(); /* It ends before its last message. */
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = ST_DONE;
    open_conns--;
}

/* A connection that ends before the deadline counts as closed early. */
static void
conn_lost(conn_t *c, const char *why)
{
    if (c->state == ST_OPEN || c->state == ST_HANDSHAKE ||
        c->state == ST_CONNECTING) {
        if (now() < deadline) {
            stats.closed_early++;
        }
        fail(why);
    }
    conn_close(c);
}

static void
conn_protocol_error(conn_t *c, const char *why)
{
    stats.mismatches++;
    fail(why);
    conn_close(c);
}

/* Writes what is pending; arms EPOLLOUT if the socket is full. */
static int
conn_flush(conn_t *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n =
            write(c->fd, c->out.base + c->out_off, c->out.len - c->out_off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                conn_arm(c, 1);
                return 0;
            }
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out.len = 0;
    c->out_off = 0;
    conn_arm(c, 0);
    return 0;
}

/* Queues one masked frame (FIN set) and writes it. */
static int
conn_send_frame(conn_t *c, int opcode, const uint8_t *payload, size_t len)
{
    uint8_t head[14];
    size_t h = 0;
    head[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        head[h++] = (uint8_t)(0x80 | len);
    }
    else if (len < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (uint8_t)(len >> 8);
        head[h++] = (uint8_t)len;
    }
    else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) {
            head[h++] = (uint8_t)((uint64_t)len >> (8 * i));
        }
    }
    uint32_t key = rng_next();
    uint8_t mask[4];
    memcpy(mask, &key, 4);
    memcpy(head + h, mask, 4);
    h += 4;
    if (buf_reserve(&c->out, h + len) < 0) {
        return -1;
    }
    memcpy(c->out.base + c->out.len, head, h);
    uint8_t *dst = c->out.base + c->out.len + h;
    for (size_t i = 0; i < len; i++) {
        dst[i] = payload[i] ^ mask[i & 3];
    }
    c->out.len += h + len;
    return conn_flush(c);
}

static int
conn_send_next(conn_t *c)
{
    c->seq++;
    uint8_t *e = c->expected;
    for (int i = 0; i < 4; i++) {
        e[i] = (uint8_t)(c->id >> (24 - 8 * i));
    }
    for (int i = 0; i < 8; i++) {
        e[4 + i] = (uint8_t)(c->seq >> (56 - 8 * i));
    }
    return conn_send_frame(c, 2, e, opt.size);
}

static void
conn_send_close(conn_t *c)
{
    static const uint8_t normal[2] = {0x03, 0xE8}; /* 1000 */
    conn_finish_messages();
    c->state = ST_CLOSING;
    if (conn_send_frame(c, 8, normal, 2) < 0) {
        conn_close(c);
    }
}

/* A complete data message arrived. */
static void
conn_on_message(conn_t *c, int opcode, const uint8_t *p, size_t len)
{
    if (c->state != ST_OPEN) {
        return; /* Data after our close frame is allowed and ignored. */
    }
    if (opcode != 2) {
        conn_protocol_error(c, "unexpected frame type: a text message");
        return;
    }
    if (len != opt.size || memcmp(p, c->expected, len) != 0) {
        conn_protocol_error(c, "echoed payload differs from the message sent");
        return;
    }
    stats.messages++;
    if (opt.messages ? c->seq < opt.messages : now() < deadline) {
        if (conn_send_next(c) < 0) {
            conn_lost(c, "write failed");
        }
    }
    else {
        conn_send_close(c);
    }
}

static void
conn_on_control(conn_t *c, int opcode, const uint8_t *p, size_t len)
{
    if (opcode == 9) {
        if (conn_send_frame(c, 10, p, len) < 0) {
            conn_lost(c, "write failed");
        }
    }
    else if (opcode == 8) {
        if (c->state == ST_OPEN) {
            conn_lost(c, "the server closed the connection");
        }
        else {
            conn_close(c); /* The closing handshake is complete. */
        }
    }
    /* A pong (10) is ignored. */
}

/* Parses the frames in c->in; returns when it needs more bytes. */
static void
conn_parse_frames(conn_t *c)
{
    size_t off = 0;
    while (c->state == ST_OPEN || c->state == ST_CLOSING) {
        const uint8_t *p = c->in.base + off;
        size_t avail = c->in.len - off;
        if (avail < 2) {
            break;
        }
        int fin = p[0] & 0x80, opcode = p[0] & 0x0F;
        uint64_t len = p[1] & 0x7F;
        size_t h = 2;
        if (p[0] & 0x70) {
            conn_protocol_error(c, "a reserved bit is set");
            return;
        }
        if (p[1] & 0x80) {
            conn_protocol_error(c, "a server frame is masked");
            return;
        }
        if (len == 126) {
            if (avail < 4) {
                break;
            }
            len = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        }
        else if (len == 127) {
            if (avail < 10) {
                break;
            }
            len = 0;
            for (int i = 0; i < 8; i++) {
                len = len << 8 | p[2 + i];
            }
            h = 10;
        }
        if (len > MESSAGE_MAX) {
            conn_protocol_error(c, "a frame is too long");
            return;
        }
        if (avail < h + len) {
            break;
        }
        const uint8_t *payload = p + h;
        off += h + (size_t)len;
        if (opcode >= 8) {
            if (!fin || len > 125 || opcode > 10) {
                conn_protocol_error(c, "a bad control frame");
                return;
            }
            conn_on_control(c, opcode, payload, (size_t)len);
            continue;
        }
        if (opcode == 0) {
            if (c->msg_op < 0) {
                conn_protocol_error(c, "a continuation without a message");
                return;
            }
        }
        else if (opcode > 2 || c->msg_op >= 0) {
            conn_protocol_error(c, "an unexpected data frame");
            return;
        }
        if (fin && opcode != 0) {
            conn_on_message(c, opcode, payload, (size_t)len);
            continue;
        }
        if (opcode != 0) {
            c->msg_op = opcode;
            c->msg.len = 0;
        }
        if (c->msg.len + len > MESSAGE_MAX ||
            buf_append(&c->msg, payload, (size_t)len) < 0) {
            conn_protocol_error(c, "a message is too long");
            return;
        }
        if (fin) {
            int op = c->msg_op;
            c->msg_op = -1;
            conn_on_message(c, op, c->msg.base, c->msg.len);
        }
    }
    if (c->state == ST_DONE) {
        return;
    }
    memmove(c->in.base, c->in.base + off, c->in.len - off);
    c->in.len -= off;
}

/* The value of header `name` in the head (NUL-terminated), or NULL. */
static const char *
head_value(const char *head, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line != NULL && line[2] != '\r') {
        line += 2;
        const char *end = strstr(line, "\r\n");
        if (end == NULL) {
            return NULL;
        }
        if ((size_t)(end - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (*v == ' ' || *v == '\t') {
                v++;
            }
            const char *ve = end;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
                ve--;
            }
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = end;
    }
    return NULL;
}

static int
value_has_token(const char *v, size_t vlen, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= vlen; i++) {
        if (strncasecmp(v + i, token, tlen) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Checks the 101 response; 1 when done, 0 for more bytes, -1 on error. */
static int
conn_read_handshake(conn_t *c)
{
    uint8_t *end = memmem(c->in.base, c->in.len, "\r\n\r\n", 4);
    if (end == NULL) {
        return c->in.len > HEAD_MAX ? -1 : 0;
    }
    size_t head_len = (size_t)(end - c->in.base) + 4;
    char *head = malloc(head_len + 1);
    if (head == NULL) {
        return -1;
    }
    memcpy(head, c->in.base, head_len);
    head[head_len] = '\0';
    size_t vl = 0;
    const char *v;
    int ok = strncmp(head, "HTTP/1.1 101", 12) == 0;
    ok = ok && (v = head_value(head, "upgrade", &vl)) != NULL && vl == 9 &&
         strncasecmp(v, "websocket", 9) == 0;
    ok = ok && (v = head_value(head, "connection", &vl)) != NULL &&
         value_has_token(v, vl, "upgrade");
    ok = ok && (v = head_value(head, "sec-websocket-accept", &vl)) != NULL &&
         vl == strlen(c->accept) && memcmp(v, c->accept, vl) == 0;
    free(head);
    if (!ok) {
        return -1;
    }
    memmove(c->in.base, c->in.base + head_len, c->in.len - head_len);
    c->in.len -= head_len;
    return 1;
}

static void
conn_on_readable(conn_t *c)
{
    for (;;) {
        if (buf_reserve(&c->in, 65536) < 0) {
            conn_protocol_error(c, "out of memory");
            return;
        }
        size_t room = c->in.cap - c->in.len;
        ssize_t n = read(c->fd, c->in.base + c->in.len, room);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return;
        }
        if (n <= 0) {
            conn_lost(c, n == 0 ? "the server closed the connection"
                                : "read failed");
            return;
        }
        c->in.len += (size_t)n;
        if (c->state == ST_HANDSHAKE) {
            int r = conn_read_handshake(c);
            if (r < 0) {
                stats.connect_failures++;
                fail("the handshake response is not a valid 101");
                conn_close(c);
                return;
            }
            if (r == 0) {
                continue;
            }
            c->state = ST_OPEN;
            stats.connected++;
            if (conn_send_next(c) < 0) {
                conn_lost(c, "write failed");
                return;
            }
        }
        conn_parse_frames(c);
        if (c->state == ST_DONE || (size_t)n < room) {
            return; /* A short read: the socket is drained. */
        }
    }
}

static void
conn_on_connected(conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        stats.connect_failures++;
        fail(strerror(err));
        conn_close(c);
        return;
    }
    uint8_t raw[16];
    char key[32], joined[96];
    uint8_t digest[20];
    for (int i = 0; i < 16; i += 4) {
        uint32_t r = rng_next();
        memcpy(raw + i, &r, 4);
    }
    base64(raw, 16, key);
    int jl = snprintf(joined, sizeof(joined), "%s%s", key, WS_GUID);
    sha1_short((const uint8_t *)joined, (size_t)jl, digest);
    base64(digest, 20, c->accept);
    char req[512];
    int rl = snprintf(req, sizeof(req),
                      "GET %s HTTP/1.1\r\nHost: %s:%s\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n",
                      opt.path, opt.host, opt.port, key);
    c->state = ST_HANDSHAKE;
    if (buf_append(&c->out, req, (size_t)rl) < 0 || conn_flush(c) < 0) {
        stats.connect_failures++;
        fail("writing the handshake failed");
        conn_close(c);
    }
}

static void
conn_on_event(conn_t *c, uint32_t events)
{
    if (c->state == ST_CONNECTING) {
        conn_on_connected(c);
        return;
    }
    if (events & EPOLLOUT) {
        if (conn_flush(c) < 0) {
            conn_lost(c, "write failed");
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        conn_on_readable(c);
    }
}

static int
conn_start(conn_t *c, const struct addrinfo *ai, uint32_t id)
{
    memset(c, 0, sizeof(*c));
    c->id = id;
    c->msg_op = -1;
    c->expected = malloc(opt.size);
    if (c->expected == NULL) {
        return -1;
    }
    for (size_t i = 12; i < opt.size; i++) {
        c->expected[i] = (uint8_t)(i - 12);
    }
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    c->state = ST_CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    open_conns++;
    return 0;
}

/* ---- main ---- */

static int
parse_url(char *url)
{
    if (strncmp(url, "ws://", 5) != 0) {
        return -1;
    }
    char *host = url + 5;
    char *slash = strchr(host, '/');
    char *path = "/";
    if (slash != NULL) {
        path = strdup(slash);
        *slash = '\0';
    }
    char *colon = strrchr(host, ':');
    if (colon == NULL) {
        opt.port = "80";
    }
    else {
        *colon = '\0';
        opt.port = colon + 1;
    }
    if (host[0] == '[') {
        host++;
        host[strlen(host) - 1] = '\0';
    }
    opt.host = host;
    opt.path = path;
    return 0;
}

static int
parse_args(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "echo") != 0) {
        return -1;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--url") == 0) {
            if (parse_url(argv[i + 1]) < 0) {
                return -1;
            }
        }
        else if (strcmp(k, "--connections") == 0) {
            opt.connections = atoi(v);
        }
        else if (strcmp(k, "--duration") == 0) {
            opt.duration = atof(v);
        }
        else if (strcmp(k, "--size") == 0) {
            opt.size = (size_t)atol(v);
        }
        else if (strcmp(k, "--first-id") == 0) {
            opt.first_id = (uint32_t)atol(v);
        }
        else if (strcmp(k, "--messages") == 0) {
            opt.messages = (uint64_t)atoll(v);
        }
        else {
            return -1;
        }
    }
    if (opt.size < 12) {
        opt.size = 12;
    }
    return (opt.host != NULL && opt.connections > 0) ? 0 : -1;
}

static void
json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            putchar('\\');
        }
        putchar((unsigned char)*s < 0x20 ? ' ' : *s);
    }
    putchar('"');
}

static void
run_loop(conn_t *conns)
{
    struct epoll_event events[256];
    int stalled = 0;
    while (open_conns > 0) {
        double t = now();
        double until = finished >= opt.connections ? last_finish + CLOSE_GRACE
                                                   : deadline + STALL_LIMIT;
        if (t >= until) {
            stalled = finished < opt.connections;
            break;
        }
        int ms = (int)((until - t) * 1000) + 1;
        int n = epoll_wait(epfd, events, 256, ms);
        for (int i = 0; i < n; i++) {
            conn_on_event(events[i].data.ptr, events[i].events);
        }
    }
    for (int i = 0; i < opt.connections; i++) {
        if (conns[i].state == ST_OPEN && stalled) {
            stats.closed_early++;
            fail("no echo within 10 s after the deadline");
        }
        conn_close(&conns[i]);
    }
}

int
main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0) {
        fprintf(stderr,
                "usage: %s echo --url ws://HOST:PORT/PATH [--connections N] "
                "[--duration S | --messages N] [--size BYTES] "
                "[--first-id N]\n",
                argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    uint32_t seed;
    if (getrandom(&seed, sizeof(seed), 0) == sizeof(seed) && seed != 0) {
        rng_state = seed;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "ws_echo_client: %s: %s\n", opt.host,
                gai_strerror(rc));
        return 1;
    }
    epfd = epoll_create1(0);
    conn_t *conns = calloc((size_t)opt.connections, sizeof(conn_t));
    if (epfd < 0 || conns == NULL) {
        perror("ws_echo_client");
        return 1;
    }
    double start = now();
    /* --messages: no deadline (a lost connection still counts). */
    deadline = start + (opt.messages ? 1e9 : opt.duration);
    for (int i = 0; i < opt.connections; i++) {
        if (conn_start(&conns[i], ai, opt.first_id + (uint32_t)i) < 0) {
            stats.connect_failures++;
            fail(strerror(errno));
            conns[i].state = ST_DONE;
            finished++;
        }
    }
    freeaddrinfo(ai);
    run_loop(conns);
    double elapsed = (finished > 0 ? last_finish : now()) - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("WSJSON {\"messages\": %llu, \"elapsed_s\": %.3f, "
           "\"connected\": %d, \"connect_failures\": %d, "
           "\"mismatches\": %d, \"closed_early\": %d, \"first_error\": ",
           (unsigned long long)stats.messages, elapsed, stats.connected,
           stats.connect_failures, stats.mismatches, stats.closed_early);
    json_string(stats.first_error);
    printf(", \"client_cpu_s\": %.3f, \"client\": \"c\"}\n", cpu);
    fflush(stdout);
    if (stats.connect_failures || stats.closed_early || stats.mismatches) {
        fprintf(stderr,
                "ws_echo_client: %d of %d connections failed, %d closed "
                "early, %d wrong echoes: %s\n",
                stats.connect_failures, opt.connections, stats.closed_early,
                stats.mismatches, stats.first_error);
        return 1;
    }
    return 0;
}
