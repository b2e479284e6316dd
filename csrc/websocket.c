/* WebSocket: the opening handshake, wslay for incoming frames, and the
 * ASGI websocket.* events.  Two tables: cd_ws_proto, the protocol HTTP/1
 * hands an upgraded conn over to (bytes, timer, EOF, shutdown), and
 * ws_cycle_ops, which cd_ws_begin puts on the handshake's cycle
 * (receive, send, disconnect, the app's end).
 *
 * Incoming bytes go through wslay (unmasking, fragments, control frames,
 * limits).  Outgoing data frames are written directly, header plus the
 * app's bytes without a copy; wslay's own frames (pong, close) are
 * flushed before each of them so that order is kept. */
#include "internal.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#define CD_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* Stop reading a socket while this many messages wait for the app, or
 * while their payloads reach the byte bound (ws_queue_bound()); read
 * again below the low marks. */
#define CD_WS_QUEUE_HIGH 64
#define CD_WS_QUEUE_LOW 16
/* The byte bound when messages are unlimited, and its floor otherwise. */
#define CD_WS_QUEUE_BYTES_UNLIMITED (1 << 20)
#define CD_WS_QUEUE_BYTES_MIN (64 << 10)
/* wslay's own message limit when ours is 0 (unlimited). */
#define CD_WS_WSLAY_MAX_MSG ((1u << 31) - 1)
/* What each frame of a fragmented message counts toward the message
 * limit besides its payload: wslay keeps every frame's payload in a
 * chunk of its own (~95 bytes of heap for a 1-byte frame), so 1-byte
 * fragments made a 1 MiB message cost 100 MB. */
#define CD_WS_FRAME_COST 64
/* Outgoing data messages up to this size are copied behind their frame
 * header (a 4-byte header at most): one buffer per frame. */
#define CD_WS_COPY_MAX 1024
/* How long the peer has to answer our close frame. */
#define CD_WS_CLOSE_WAIT_MS 5000
/* permessage-deflate: messages shorter than this go out uncompressed
 * (RFC 7692 lets each message choose).  1: all but empty ones, as
 * websockets (uvicorn) does; kosoku's 12.x/13.x cases fail on a text
 * message that comes back uncompressed. */
#define CD_WS_DEFLATE_MIN 1
/* A read that comes this long after the one before it parks the wslay
 * context when it is done (ws_park): a peer that speaks this seldom
 * costs a context init per message, one that speaks more often keeps it. */
#define CD_WS_PARK_AFTER_MS 1000

/* A WebSocket cycle's operations (defined at the end). */
static const cd_cycle_ops_t ws_cycle_ops;

typedef enum {
    CD_WS_CONNECTING, /* handshake request in, connect not yet received */
    CD_WS_HANDSHAKE,  /* websocket.connect delivered, no answer yet */
    CD_WS_DENYING,    /* websocket.http.response started */
    CD_WS_OPEN,
    CD_WS_CLOSING, /* our close frame is out, waiting for the peer */
    CD_WS_CLOSED,  /* the connection is gone */
} cd_ws_state_t;

/* A message waiting for receive(), with its payload size. */
typedef struct {
    PyObject *msg; /* strong */
    size_t bytes;
} cd_ws_item_t;

/* Owned by its cycle (cy->ws); freed with it. */
struct cd_ws_s {
    cd_ws_state_t state;
    wslay_event_context_ptr ctx; /* owned: NULL until accepted, and
                                    while parked (ws_park) */
    cd_cycle_t *cy;              /* borrowed: the cycle owns us */
    char key[64];                /* Sec-WebSocket-Key */
    size_t in_pos;               /* bytes of conn->in wslay took */
    cd_buf_t out;                /* owned: wslay's frames to write */
    cd_deflate_t *pmd;   /* owned: permessage-deflate, NULL unless agreed */
    cd_ws_item_t *queue; /* owned ring */
    int qhead, qlen, qcap;
    size_t qbytes;        /* payload bytes in the queue */
    size_t qbound;        /* ws_queue_bound() of the server's config */
    int queue_full;       /* reading stopped until the app catches up */
    uint64_t frag_bytes;  /* data frames of the message being received */
    uint64_t frag_frames; /* how many frames it came in so far */
    int connect_delivered;
    int disconnect_delivered; /* later receive()s wait (Daphne: once) */
    int close_code;           /* for websocket.disconnect */
    PyObject *close_reason;   /* strong: str */
    int pong_pending;
    uint64_t ping_sent_at;
    uint64_t opened_at;
    /* Whether ctx is at rest (ws_park): bytes handed to wslay, and the
     * bytes of the frames it finished, since ctx was made. */
    uint64_t in_handed;
    uint64_t in_framed;
    uint64_t frame_bytes;   /* header and payload of the frame being read */
    uint64_t in_frame_left; /* of the frame being handed to wslay */
    int in_fragments;       /* a fragmented message is being received */
    uint64_t last_read_at;  /* loop ms of the last read */
};

static int ws_unpark(cd_cycle_t *cy);
static void ws_stop(cd_conn_t *c);

static const char *
ws_state_name(cd_ws_state_t s)
{
    static const char *names[] = {"CONNECTING", "HANDSHAKE", "DENYING",
                                  "OPEN",       "CLOSING",   "CLOSED"};
    return names[s];
}

static void
ws_log(cd_cycle_t *cy, const char *action)
{
    cd_server_t *srv = cy->server;
    if (srv->action_logger == NULL) {
        return;
    }
    PyObject *path = PyDict_GetItemWithError(cy->scope, cy->st->s_path);
    PyObject *c = PyDict_GetItemWithError(cy->scope, cy->st->s_client);
    PyObject *client = NULL;
    if (c != NULL && PyTuple_Check(c) && PyTuple_GET_SIZE(c) == 2) {
        client = PyUnicode_FromFormat("%S:%S", PyTuple_GET_ITEM(c, 0),
                                      PyTuple_GET_ITEM(c, 1));
    }
    PyObject *details = Py_BuildValue("{sOsO}", "path", path ? path : Py_None,
                                      "client", client ? client : Py_None);
    Py_XDECREF(client);
    if (details == NULL) {
        PyErr_Clear();
        return;
    }
    cd_server_log_action(srv, "websocket", action, details);
    Py_DECREF(details);
}

/* ---- the message queue -------------------------------------------- */

static int
queue_push(cd_ws_t *ws, PyObject *msg, size_t bytes) /* steals msg */
{
    if (ws->qlen == ws->qcap) {
        int cap = ws->qcap ? ws->qcap * 2 : 16;
        cd_ws_item_t *q = malloc(cap * sizeof(*q));
        if (q == NULL) {
            Py_DECREF(msg);
            return -1;
        }
        for (int i = 0; i < ws->qlen; i++) {
            q[i] = ws->queue[(ws->qhead + i) % ws->qcap];
        }
        free(ws->queue);
        ws->queue = q;
        ws->qcap = cap;
        ws->qhead = 0;
    }
    cd_ws_item_t *it = &ws->queue[(ws->qhead + ws->qlen) % ws->qcap];
    it->msg = msg;
    it->bytes = bytes;
    ws->qlen++;
    ws->qbytes += bytes;
    return 0;
}

static PyObject *
queue_pop(cd_ws_t *ws) /* new reference or NULL when empty */
{
    if (ws->qlen == 0) {
        return NULL;
    }
    cd_ws_item_t *it = &ws->queue[ws->qhead];
    ws->qhead = (ws->qhead + 1) % ws->qcap;
    ws->qlen--;
    ws->qbytes -= it->bytes;
    return it->msg;
}

/* Queued payload bytes at which reading stops: about one message of the
 * largest size allowed. */
static size_t
ws_queue_bound(const cd_config_t *cfg)
{
    if (cfg->ws_max_message == 0) {
        return CD_WS_QUEUE_BYTES_UNLIMITED;
    }
    if (cfg->ws_max_message < CD_WS_QUEUE_BYTES_MIN) {
        return CD_WS_QUEUE_BYTES_MIN;
    }
    return (size_t)cfg->ws_max_message;
}

/* Whether the queue is at its bound.  Checked before each frame is
 * parsed (ws_fast_read, wslay_on_recv): at the bound the frames wait
 * unparsed in conn->in, so the queue never holds more than
 * CD_WS_QUEUE_HIGH messages, and its payload bytes pass ws_queue_bound()
 * by less than the one message that crossed it. */
static int
queue_at_bound(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    return ws->state == CD_WS_OPEN &&
           (ws->qlen >= CD_WS_QUEUE_HIGH || ws->qbytes >= ws->qbound);
}

/* After a read: stop reading while the app is behind, still watching
 * for the peer's FIN or RST (the app gets websocket.disconnect). */
static void
queue_check_high(cd_cycle_t *cy)
{
    if (queue_at_bound(cy)) {
        cy->ws->queue_full = 1;
        cd_conn_read_pause(cy->conn);
    }
}

static void ws_on_read(cd_conn_t *c);

/* Parse the frames left while reading was stopped, then read again
 * unless something stops it still. */
static void
ws_read_resume(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    cd_conn_t *c = cy->conn;
    if (c == NULL || ws->state != CD_WS_OPEN) {
        return;
    }
    if (c->in.len > 0) {
        ws_on_read(c);
    }
    if (!ws->queue_full && ws->state == CD_WS_OPEN) {
        cd_conn_read_start(c); /* Once our frames drain, if held. */
    }
}

/* After receive() took a message: once the app caught up, parse the
 * frames left at the bound, then read again. */
static void
queue_check_low(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    if (!ws->queue_full || ws->qlen > CD_WS_QUEUE_LOW ||
        ws->qbytes >= ws->qbound / 2) {
        return;
    }
    ws->queue_full = 0;
    ws_read_resume(cy);
}

/* After a read: the frames it brought may have queued answers of ours
 * (a pong per ping; `before`: the bytes queued until then) that a peer
 * which does not read leaves in our write queue.  Above
 * --write-buffer-size, as send() waits there, the conn holds reading
 * (cd_conn_read_hold: the peer leaving is still seen) until our frames
 * drain, as it does for TLS's own records. */
static void
write_check_high(cd_cycle_t *cy, size_t before)
{
    cd_conn_t *c = cy->conn;
    if (c != NULL && cy->ws->state == CD_WS_OPEN &&
        c->state != CD_CONN_CLOSING && c->write_queued > before &&
        c->write_queued > cy->server->cfg.write_high_water) {
        cd_conn_read_hold(c);
    }
}

static PyObject *
disconnect_msg(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    return Py_BuildValue("{OOOiOO}", cy->st->s_type, cy->st->s_ws_disconnect,
                         cy->st->s_code, ws->close_code, cy->st->s_reason,
                         ws->close_reason ? ws->close_reason
                                          : cy->st->s_empty);
}

/* New reference: the next message for receive(), or NULL (no error) if
 * the app must wait. */
static PyObject *
ws_next_message(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    if (!ws->connect_delivered) {
        ws->connect_delivered = 1;
        if (ws->state == CD_WS_CONNECTING) {
            ws->state = CD_WS_HANDSHAKE;
        }
        return Py_BuildValue("{OO}", cy->st->s_type, cy->st->s_ws_connect);
    }
    PyObject *msg = queue_pop(ws);
    if (msg != NULL) {
        queue_check_low(cy);
        return msg;
    }
    if (ws->state == CD_WS_CLOSED && !ws->disconnect_delivered) {
        ws->disconnect_delivered = 1;
        /* Later receive()s wait: the close timeout bounds the app. */
        cd_cycle_arm_close_timeout(cy);
        return disconnect_msg(cy);
    }
    return NULL;
}

/* Whether ws_next_message() would return a message. */
static int
ws_has_message(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    return !ws->connect_delivered || ws->qlen > 0 ||
           (ws->state == CD_WS_CLOSED && !ws->disconnect_delivered);
}

/* ---- wslay glue --------------------------------------------------- */

/* Header and payload bytes of the frame that starts at p, or 0 if its
 * length is not all in the avail bytes. */
static uint64_t
ws_frame_size(const uint8_t *p, size_t avail)
{
    if (avail < 2) {
        return 0;
    }
    uint64_t n = p[1] & 0x7F;
    size_t h = 2 + (n == 126 ? 2 : n == 127 ? 8 : 0);
    if (avail < h) {
        return 0;
    }
    if (n >= 126) {
        n = 0;
        for (size_t i = 2; i < h; i++) {
            n = n << 8 | p[i];
        }
    }
    h += (p[1] & 0x80) ? 4 : 0;
    return n > UINT64_MAX - h ? UINT64_MAX : h + n;
}

/* wslay reads conn->in through here, one frame at a time (it buffers
 * what it is given): none while the queue is at its bound, and none of
 * a frame whose length is not all in yet. */
static ssize_t
wslay_on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
              void *user)
{
    cd_cycle_t *cy = user;
    cd_ws_t *ws = cy->ws;
    cd_conn_t *c = cy->conn;
    size_t avail = c ? c->in.len - ws->in_pos : 0;
    if (avail > 0 && ws->in_frame_left == 0) {
        if (!queue_at_bound(cy)) {
            ws->in_frame_left =
                ws_frame_size((const uint8_t *)c->in.base + ws->in_pos, avail);
        }
        if (ws->in_frame_left == 0) {
            avail = 0;
        }
    }
    if (avail == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < avail ? len : avail;
    if (n > ws->in_frame_left) {
        n = (size_t)ws->in_frame_left;
    }
    memcpy(buf, c->in.base + ws->in_pos, n);
    ws->in_pos += n;
    ws->in_handed += n;
    ws->in_frame_left -= n;
    return (ssize_t)n;
}

static ssize_t
wslay_on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
              int flags, void *user)
{
    cd_cycle_t *cy = user;
    if (cd_buf_append(&cy->ws->out, (const char *)data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int
valid_close_code(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

/* RFC 6455 7.4: the codes an endpoint may send; 1012-1014 are IANA's. */
static int
app_close_code_ok(long code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The reason must be valid UTF-8 and fit a control frame: cut it at 123
 * bytes, before any character that would not fit whole. */
static void
queue_close(cd_ws_t *ws, int code, const char *reason, size_t n)
{
    if (ws_unpark(ws->cy) < 0) {
        if (ws->cy->conn != NULL) {
            cd_conn_close(ws->cy->conn); /* No memory for the close frame. */
        }
        return;
    }
    if (n > 123) {
        n = 123;
        while (n > 0 && ((unsigned char)reason[n] & 0xC0) == 0x80) {
            n--;
        }
    }
    wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason,
                            n);
}

/* The bytes of a data message: inflated if it has RSV1 (wslay lets RSV1
 * through only when permessage-deflate was agreed, and only on a first
 * frame).  The message size limit applies to the inflated size; a
 * message over it closes 1009 before more than one byte past the limit
 * is inflated.  -1 after queueing the close. */
static int
ws_message_plain(cd_cycle_t *cy, const struct wslay_event_on_msg_recv_arg *arg,
                 cd_buf_t *plain, const char **data, size_t *len)
{
    cd_ws_t *ws = cy->ws;
    uint64_t max = cy->server->cfg.ws_max_message;
    if (max == 0 || max > CD_WS_WSLAY_MAX_MSG) {
        max = CD_WS_WSLAY_MAX_MSG;
    }
    if (!(arg->rsv & WSLAY_RSV1_BIT) || ws->pmd == NULL) {
        if (arg->msg_length > max) {
            /* wslay's limit has slack for compressed messages. */
            queue_close(ws, 1009, "", 0);
            return -1;
        }
        return 0;
    }
    int r = cd_deflate_inflate(ws->pmd, *data, *len, (size_t)max, plain);
    if (r == UV_EMSGSIZE) {
        queue_close(ws, 1009, "", 0);
        return -1;
    }
    if (r < 0) {
        queue_close(ws, r == UV_ENOMEM ? 1011 : 1002, "", 0);
        return -1;
    }
    *data = plain->base;
    *len = plain->len;
    return 0;
}

/* Queues a websocket.receive for the app and wakes its receive().
 * Steals payload (NULL: the exception is logged). */
static void
ws_deliver(cd_cycle_t *cy, int text, PyObject *payload, size_t len)
{
    cd_state *st = cy->st;
    PyObject *msg =
        text ? cd_cycle_message(cy, st->ws_text_template, st->s_ws_receive,
                                st->s_text, payload, len)
             : cd_cycle_message(cy, st->ws_bytes_template, st->s_ws_receive,
                                st->s_bytes, payload, len);
    if (msg == NULL || queue_push(cy->ws, msg, len) < 0) {
        cd_log_exception("Error queueing a WebSocket message");
        return;
    }
    cd_cycle_wake_receiver(cy);
}

static void
wslay_on_msg(wslay_event_context_ptr ctx,
             const struct wslay_event_on_msg_recv_arg *arg, void *user)
{
    cd_cycle_t *cy = user;
    cd_ws_t *ws = cy->ws;
    ws->pong_pending = 0; /* Any frame shows the peer is alive. */
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
        if (ws->state != CD_WS_OPEN) {
            return;
        }
        const char *data = (const char *)arg->msg;
        size_t len = arg->msg_length;
        cd_buf_t plain = {0}; /* owned: the inflated message */
        if (ws_message_plain(cy, arg, &plain, &data, &len) < 0) {
            cd_buf_dispose(&plain);
            wslay_event_shutdown_read(ctx);
            return;
        }
        PyObject *payload;
        if (arg->opcode == WSLAY_TEXT_FRAME) {
            payload = PyUnicode_DecodeUTF8(data, (Py_ssize_t)len, NULL);
            if (payload == NULL) {
                PyErr_Clear();
                cd_buf_dispose(&plain);
                queue_close(ws, 1007, "invalid UTF-8", 13);
                wslay_event_shutdown_read(ctx);
                return;
            }
        }
        else {
            payload = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
        }
        cd_buf_dispose(&plain);
        ws_deliver(cy, arg->opcode == WSLAY_TEXT_FRAME, payload, len);
        return;
    }
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        int code = arg->status_code;
        if (ws->state != CD_WS_CLOSED) { /* Else the app was told. */
            ws->close_code = code ? code : 1005;
        }
        if (arg->msg_length > 2 && ws->state != CD_WS_CLOSED) {
            PyObject *reason =
                PyUnicode_DecodeUTF8((const char *)arg->msg + 2,
                                     (Py_ssize_t)arg->msg_length - 2, NULL);
            if (reason == NULL) {
                PyErr_Clear();
                queue_close(ws, 1007, "invalid UTF-8", 13);
                return;
            }
            Py_XSETREF(ws->close_reason, reason);
        }
        if (arg->msg_length == 1 || (code && !valid_close_code(code))) {
            queue_close(ws, 1002, "", 0);
        }
        else if (!wslay_event_get_close_sent(ctx)) {
            queue_close(ws, code ? code : 0, "", 0);
        }
    }
}

/* wslay 1.1.1 has a message limit only, checked against each frame's
 * header before it allocates the payload: "message so far + this frame >
 * limit" closes with 1009.  Setting that limit before every frame to
 * min(max message, message so far + max frame) makes the same check
 * enforce --websocket-max-frame-size too. */
static void
set_recv_limit(cd_ws_t *ws, const cd_config_t *cfg)
{
    uint64_t limit =
        cfg->ws_max_message ? cfg->ws_max_message : CD_WS_WSLAY_MAX_MSG;
    uint64_t cost = ws->frag_frames * CD_WS_FRAME_COST;
    limit = limit > cost ? limit - cost : 0;
    if (cfg->ws_max_frame && ws->frag_bytes + cfg->ws_max_frame < limit) {
        limit = ws->frag_bytes + cfg->ws_max_frame;
    }
    if (ws->pmd != NULL && limit < CD_WS_WSLAY_MAX_MSG) {
        /* A message at the limit grows when compressed if it does not
         * compress: zlib's stored blocks add 5 bytes per 128 to 16K (by
         * memLevel).  The inflated size is checked exactly, and so is an
         * uncompressed message's size (ws_message_plain). */
        limit += (limit >> 4) + 64;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, limit);
}

static void
wslay_on_frame_start(wslay_event_context_ptr ctx,
                     const struct wslay_event_on_frame_recv_start_arg *arg,
                     void *user)
{
    cd_cycle_t *cy = user;
    cd_ws_t *ws = cy->ws;
    /* A client's frame: 2 bytes, the extended length, the 4-byte mask
     * (wslay refuses an unmasked one). */
    uint64_t n = arg->payload_length;
    ws->frame_bytes = 2 + (n < 126 ? 0 : n < 65536 ? 2 : 8) + 4 + n;
    if (arg->opcode & 0x8) {
        return; /* A control frame: a message of its own. */
    }
    ws->in_fragments = !arg->fin;
    if (arg->fin) {
        /* The next frame starts a new message. */
        ws->frag_bytes = ws->frag_frames = 0;
    }
    else if (arg->opcode == WSLAY_CONTINUATION_FRAME) {
        ws->frag_bytes += arg->payload_length;
        ws->frag_frames++;
    }
    else {
        ws->frag_bytes = arg->payload_length;
        ws->frag_frames = 1;
    }
    set_recv_limit(ws, &cy->server->cfg);
}

static void
wslay_on_frame_end(wslay_event_context_ptr ctx, void *user)
{
    cd_cycle_t *cy = user;
    cy->ws->in_framed += cy->ws->frame_bytes;
    cy->ws->frame_bytes = 0;
}

static const struct wslay_event_callbacks wslay_callbacks = {
    .recv_callback = wslay_on_recv,
    .send_callback = wslay_on_send,
    .on_frame_recv_start_callback = wslay_on_frame_start,
    .on_frame_recv_end_callback = wslay_on_frame_end,
    .on_msg_recv_callback = wslay_on_msg,
};

/* ---- parking: no wslay context while nothing is in flight ----------
 * wslay 1.1.1 allocates 9.4 KiB per context (a 4 KiB input and a 4 KiB
 * output buffer among them), most of an idle WebSocket's C memory.  An
 * open WebSocket whose context holds nothing (every byte handed to it
 * was a whole frame, no fragmented message under way, nothing queued to
 * send, no close either way) is in the state a new context starts in,
 * so it goes, and a new one is made when it is needed again: bytes to
 * read, a close or a ping to send.  A context starts parked at accept;
 * it parks again after a read that followed a quiet spell
 * (CD_WS_PARK_AFTER_MS) and after each ping. */

/* 0, or -1 if wslay could not allocate its context. */
static int
ws_unpark(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    if (ws->ctx != NULL) {
        return 0;
    }
    if (wslay_event_context_server_init(&ws->ctx, &wslay_callbacks, cy) != 0) {
        ws->ctx = NULL;
        return -1;
    }
    ws->in_handed = ws->in_framed = ws->frame_bytes = ws->in_frame_left = 0;
    if (ws->pmd != NULL) {
        wslay_event_config_set_allowed_rsv_bits(ws->ctx, WSLAY_RSV1_BIT);
    }
    set_recv_limit(ws, &cy->server->cfg);
    return 0;
}

static void
ws_park(cd_ws_t *ws)
{
    wslay_event_context_ptr ctx = ws->ctx;
    if (ctx == NULL || ws->state != CD_WS_OPEN || ws->in_fragments ||
        ws->in_handed != ws->in_framed || ws->out.len > 0 ||
        !wslay_event_get_read_enabled(ctx) ||
        !wslay_event_get_write_enabled(ctx) || wslay_event_want_write(ctx) ||
        wslay_event_get_close_sent(ctx) ||
        wslay_event_get_close_received(ctx)) {
        return;
    }
    wslay_event_context_free(ctx);
    ws->ctx = NULL;
}

/* Our close frame is out (or on its way): no data frame may follow it
 * (RFC 6455 5.5.1).  code: what the app's websocket.disconnect says
 * unless the peer's close frame comes (0: keep it as it is). */
static void
ws_set_closing(cd_ws_t *ws, int code)
{
    if (ws->state != CD_WS_OPEN) {
        return;
    }
    ws->state = CD_WS_CLOSING;
    if (code != 0) {
        ws->close_code = code;
    }
}

/* We failed the connection (RFC 6455 7.1.7) on the peer's protocol error:
 * our close frame with the code is queued.  Nothing more is read; the
 * TCP connection closes once it is out, after a lingering close (so the
 * peer's unread bytes cannot turn our close into a reset that loses
 * it).  The WebSocket is over for the app now, not when the linger ends:
 * it gets the messages before the bad frame, then websocket.disconnect
 * with that code. */
static void
ws_failed(cd_cycle_t *cy, int code)
{
    ws_set_closing(cy->ws, code);
    cd_conn_linger_after_writes(cy->conn);
    cd_cycle_on_disconnect(cy);
}

/* flush_wslay while wslay's context exists. */
static void
flush_wslay_ctx(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    cd_conn_t *c = cy->conn;
    if (c == NULL || c->state == CD_CONN_CLOSING) {
        return;
    }
    if (wslay_event_want_write(ws->ctx)) {
        wslay_event_send(ws->ctx);
    }
    if (ws->out.len > 0) {
        uv_buf_t b = cd_uvbuf(ws->out.base, ws->out.len);
        char *owned = ws->out.base;
        ws->out.base = NULL;
        ws->out.len = ws->out.cap = 0;
        cd_conn_write(c, &b, 1, NULL, owned);
    }
    if (c->state != CD_CONN_CLOSING && wslay_event_get_close_sent(ws->ctx)) {
        if (wslay_event_get_close_received(ws->ctx)) {
            ws_set_closing(ws, 0);
            cd_conn_close_after_writes(c);
        }
        else if (!wslay_event_get_read_enabled(ws->ctx)) {
            ws_failed(cy, wslay_event_get_status_code_sent(ws->ctx));
        }
        else if (ws->state == CD_WS_OPEN) {
            ws_set_closing(ws, 0);
            cd_conn_timer_start(c, CD_WS_CLOSE_WAIT_MS);
        }
    }
}

/* Write whatever wslay has queued (pongs, close frames): nothing while
 * it is parked, as it is between the messages of an echo (checked here,
 * in line: two calls a message). */
static inline void
flush_wslay(cd_cycle_t *cy)
{
    if (cy->ws->ctx != NULL) {
        flush_wslay_ctx(cy);
    }
}

/* wslay met a frame it cannot parse (a control frame over 125 bytes or
 * fragmented, a length not in its shortest form) or ran out of memory:
 * it stopped reading and queued a close frame without a code.  That
 * frame goes with the context; ours carries the code, unless our close
 * frame is out already (the app closed first). */
static void
ws_fail(cd_cycle_t *cy, int code)
{
    cd_ws_t *ws = cy->ws;
    int close_sent = wslay_event_get_close_sent(ws->ctx);
    wslay_event_context_free(ws->ctx);
    ws->ctx = NULL;
    char *f = close_sent ? NULL : malloc(4); /* owned until written */
    if (f != NULL) {
        f[0] = (char)0x88;
        f[1] = 2;
        f[2] = (char)(code >> 8);
        f[3] = (char)code;
        uv_buf_t b = cd_uvbuf(f, 4);
        cd_conn_write(cy->conn, &b, 1, NULL, f);
    }
    ws_failed(cy, code);
}

/* ---- the fast path: whole data frames without wslay -----------------
 * An echo-style peer sends one small frame at a time.  While wslay holds
 * nothing (parked, or every byte handed to it was a whole frame, no
 * fragmented message, no close either way), a frame at the start of the
 * input that is a whole unfragmented text or binary message, masked, with
 * no reserved bit, a minimal 7- or 16-bit length and within both size
 * limits, means exactly what wslay would make of it: it is unmasked
 * straight into the message's bytes object here.  Anything else (control
 * frames, fragments, compressed or oversized messages, invalid UTF-8, a
 * partial frame) goes to wslay with every byte after it, as before. */

static int
ws_wslay_at_rest(cd_ws_t *ws)
{
    wslay_event_context_ptr ctx = ws->ctx;
    if (ctx == NULL) {
        return 1;
    }
    return !ws->in_fragments && ws->in_handed == ws->in_framed &&
           wslay_event_get_read_enabled(ctx) &&
           !wslay_event_get_close_sent(ctx) &&
           !wslay_event_get_close_received(ctx);
}

/* 16 bytes at a time (a vector register where the target has one; GCC
 * and Clang split it into words elsewhere), then 8, then one by one. */
typedef uint8_t cd_ws_v16 __attribute__((vector_size(16)));

static void
ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4])
{
    uint8_t key16[16];
    uint64_t k, v;
    cd_ws_v16 k16, v16;
    for (int j = 0; j < 16; j += 4) {
        memcpy(key16 + j, key, 4);
    }
    memcpy(&k16, key16, 16);
    memcpy(&k, key16, 8);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(&v16, src + i, 16);
        v16 ^= k16;
        memcpy(dst + i, &v16, 16);
    }
    for (; i + 8 <= n; i += 8) {
        memcpy(&v, src + i, 8);
        v ^= k;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

/* The payload length of a frame that qualifies, with its header size in
 * *head; -1 if the frame must go to wslay or is not all in yet. */
static int64_t
ws_fast_frame(cd_cycle_t *cy, const uint8_t *p, size_t avail, size_t *head)
{
    const cd_config_t *cfg = &cy->server->cfg;
    if (avail < 6 || (p[0] != 0x81 && p[0] != 0x82) || !(p[1] & 0x80)) {
        return -1; /* Not FIN + text/binary without RSV, or not masked. */
    }
    size_t n = p[1] & 0x7F;
    size_t h = 6;
    if (n == 127) {
        return -1;
    }
    if (n == 126) {
        if (avail < 8) {
            return -1;
        }
        n = (size_t)p[2] << 8 | p[3];
        if (n < 126) {
            return -1; /* Not minimal: wslay's protocol error. */
        }
        h = 8;
    }
    if ((cfg->ws_max_message && n > cfg->ws_max_message) ||
        (cfg->ws_max_frame && n > cfg->ws_max_frame) || avail - h < n) {
        return -1;
    }
    *head = h;
    return (int64_t)n;
}

/* Text: decoded from the unmasked bytes (NULL if not UTF-8, nothing set).
 * Binary: a bytes object the payload is unmasked into.  New reference. */
static PyObject *
ws_fast_payload(uint8_t *frame, size_t h, size_t n)
{
    uint8_t *data = frame + h;
    const uint8_t *key = frame + h - 4;
    if (frame[0] == 0x82) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (b != NULL) {
            ws_unmask((uint8_t *)PyBytes_AS_STRING(b), data, n, key);
        }
        return b;
    }
    ws_unmask(data, data, n, key); /* In place: our input buffer. */
    PyObject *text =
        PyUnicode_DecodeUTF8((const char *)data, (Py_ssize_t)n, NULL);
    if (text == NULL) {
        PyErr_Clear();
        ws_unmask(data, data, n, key); /* Back as it came, for wslay. */
    }
    return text;
}

/* Delivers the qualifying frames at the start of conn->in; returns the
 * bytes they took. */
static size_t
ws_fast_read(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    cd_conn_t *c = cy->conn;
    size_t off = 0;
    while (ws->state == CD_WS_OPEN && c->state != CD_CONN_CLOSING &&
           ws_wslay_at_rest(ws) && !queue_at_bound(cy)) {
        uint8_t *p = (uint8_t *)c->in.base + off;
        size_t h = 0;
        int64_t n = ws_fast_frame(cy, p, c->in.len - off, &h);
        if (n < 0) {
            break;
        }
        PyObject *payload = ws_fast_payload(p, h, (size_t)n);
        if (payload == NULL && p[0] == 0x81) {
            break;
        }
        off += h + (size_t)n;
        ws->pong_pending = 0; /* Any frame shows the peer is alive. */
        ws_deliver(cy, p[0] == 0x81, payload, (size_t)n);
    }
    return off;
}

static void
ws_on_read(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (cy == NULL || cy->ws == NULL) {
        cd_conn_close(c);
        return;
    }
    cd_ws_t *ws = cy->ws;
    if (ws->ctx == NULL && ws->state != CD_WS_OPEN) {
        /* Not accepted yet (a client should wait for the 101: RFC 6455
         * 4.1): hold this read's bytes for ws_accept, and read no more
         * until then, still watching for the peer leaving. */
        cd_conn_read_pause(c);
        return;
    }
    uint64_t now = uv_now(&c->server->loop->uv);
    int quiet = now - ws->last_read_at >= CD_WS_PARK_AFTER_MS;
    size_t queued = c->write_queued;
    ws->last_read_at = now;
    cd_buf_consume(&c->in, ws_fast_read(cy));
    if (c->in.len > 0 && c->state != CD_CONN_CLOSING) {
        if (ws_unpark(cy) < 0) {
            cd_conn_close(c);
            return;
        }
        ws->in_pos = 0;
        int r = wslay_event_recv(ws->ctx);
        cd_buf_consume(&c->in, ws->in_pos);
        ws->in_pos = 0;
        if (r != 0) {
            ws_fail(cy, r == WSLAY_ERR_NOMEM ? 1011 : 1002);
            return;
        }
    }
    flush_wslay(cy);
    queue_check_high(cy);
    write_check_high(cy, queued);
    if (quiet && c->in.len == 0) {
        ws_park(ws);
    }
}

/* ---- handshake ---------------------------------------------------- */

static int
header_eq(PyObject *name, const char *lower)
{
    size_t n = strlen(lower);
    return (size_t)PyBytes_GET_SIZE(name) == n &&
           memcmp(PyBytes_AS_STRING(name), lower, n) == 0;
}

/* New reference: the list of offered subprotocols. */
static PyObject *
subprotocols(PyObject *headers)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!header_eq(PyTuple_GET_ITEM(pair, 0), "sec-websocket-protocol")) {
            continue;
        }
        PyObject *v = PyTuple_GET_ITEM(pair, 1);
        const char *p = PyBytes_AS_STRING(v);
        const char *end = p + PyBytes_GET_SIZE(v);
        while (p < end) {
            const char *comma = memchr(p, ',', end - p);
            const char *stop = comma ? comma : end;
            const char *a = p, *b = stop;
            while (a < b && (*a == ' ' || *a == '\t')) {
                a++;
            }
            while (b > a && (b[-1] == ' ' || b[-1] == '\t')) {
                b--;
            }
            if (b > a) {
                PyObject *s = PyUnicode_DecodeLatin1(a, b - a, NULL);
                if (s == NULL || PyList_Append(out, s) < 0) {
                    Py_XDECREF(s);
                    Py_DECREF(out);
                    return NULL;
                }
                Py_DECREF(s);
            }
            p = stop + 1;
        }
    }
    return out;
}

/* permessage-deflate for the first acceptable offer in the request's
 * Sec-WebSocket-Extensions fields, or NULL (off, no offer we can take,
 * or out of memory: the handshake goes on without it). */
static cd_deflate_t *
ws_deflate_offer(const cd_config_t *cfg, PyObject *headers)
{
    cd_deflate_limits_t lim = {cfg->ws_deflate_window_bits,
                               cfg->ws_deflate_mem_level};
    cd_deflate_params_t p;
    for (Py_ssize_t i = 0; cfg->ws_deflate && i < PyList_GET_SIZE(headers);
         i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        PyObject *v = PyTuple_GET_ITEM(pair, 1);
        if (header_eq(PyTuple_GET_ITEM(pair, 0), "sec-websocket-extensions") &&
            cd_deflate_negotiate(PyBytes_AS_STRING(v),
                                 (size_t)PyBytes_GET_SIZE(v), &lim, &p)) {
            return cd_deflate_new(&p, lim.mem_level);
        }
    }
    return NULL;
}

/* RFC 6455 4.2.1 (5): the key is the base64 of 16 bytes, 24 characters
 * ending in "==" (autobahn's check, Daphne's; websockets' decodes it). */
static int
ws_key_valid(const char *key, Py_ssize_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "abcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n != 24 || key[22] != '=' || key[23] != '=') {
        return 0;
    }
    for (int i = 0; i < 22; i++) {
        if (key[i] == '\0' || strchr(b64, key[i]) == NULL) {
            return 0;
        }
    }
    return 1;
}

int
cd_ws_begin(cd_conn_t *c, cd_cycle_t *cy)
{
    PyObject *headers = PyDict_GetItemWithError(cy->scope, cy->st->s_headers);
    if (headers == NULL) {
        return 400;
    }
    const char *key = NULL;
    Py_ssize_t keylen = 0;
    int version_ok = 0;
    int nkey = 0, nversion = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        PyObject *n = PyTuple_GET_ITEM(pair, 0);
        PyObject *v = PyTuple_GET_ITEM(pair, 1);
        if (header_eq(n, "sec-websocket-key")) {
            key = PyBytes_AS_STRING(v);
            keylen = PyBytes_GET_SIZE(v);
            nkey++;
        }
        else if (header_eq(n, "sec-websocket-version")) {
            version_ok = PyBytes_GET_SIZE(v) == 2 &&
                         memcmp(PyBytes_AS_STRING(v), "13", 2) == 0;
            nversion++;
        }
    }
    /* RFC 6455 11.3.1, 11.3.5: neither field appears more than once in
     * a request; two are as bad as none. */
    if (nkey > 1 || nversion > 1) {
        return 400;
    }
    if (!version_ok) {
        return 426;
    }
    if (key == NULL || !ws_key_valid(key, keylen)) {
        return 400;
    }
    PyObject *protos = subprotocols(headers);
    if (protos == NULL) {
        return 500;
    }
    int r = PyDict_SetItem(cy->scope, cy->st->s_subprotocols, protos);
    Py_DECREF(protos);
    if (r < 0) {
        return 500;
    }
    cd_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        return 500;
    }
    memcpy(ws->key, key, keylen);
    cy->st->live.ws++;
    ws->cy = cy;
    ws->qbound = ws_queue_bound(&c->server->cfg);
    ws->pmd = ws_deflate_offer(&c->server->cfg, headers);
    ws->state = CD_WS_CONNECTING;
    ws->close_code = 1006;
    cy->ops = &ws_cycle_ops;
    cy->ws = ws;
    c->state = CD_CONN_UPGRADED;
    uint64_t t = c->server->cfg.ws_connect_timeout;
    if (t) {
        cd_conn_timer_start(c, t);
    }
    ws_log(cy, "connecting");
    return 0;
}

/* The subprotocol the app chose, as "sec-websocket-protocol: x\r\n"
 * appended to out: 1; 0 and nothing if it chose none. */
static int
accept_subprotocol(cd_cycle_t *cy, PyObject *msg, cd_buf_t *out)
{
    PyObject *sub = PyDict_GetItemWithError(msg, cy->st->s_subprotocol);
    if (sub == NULL || sub == Py_None) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyUnicode_Check(sub)) {
        PyErr_Format(PyExc_TypeError,
                     "the subprotocol must be str or None, not %.100s",
                     Py_TYPE(sub)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(sub, &n);
    if (p == NULL) {
        return -1;
    }
    if (!cd_http1_head_value_ok(p, (size_t)n)) {
        PyErr_Format(PyExc_ValueError, "invalid character in subprotocol %R",
                     sub);
        return -1;
    }
    static const char name[] = "sec-websocket-protocol: ";
    if (cd_buf_append(out, name, sizeof(name) - 1) < 0 ||
        cd_buf_append(out, p, (size_t)n) < 0 ||
        cd_buf_append(out, "\r\n", 2) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 1;
}

/* The index of field name n (bytes) among the 101's server-owned fields,
 * any case; -1 if it is not one.  Index 0 is sec-websocket-protocol. */
static int
owned_field(PyObject *n)
{
    static const char *const names[] = {
        "sec-websocket-protocol", "sec-websocket-extensions",
        "sec-websocket-accept", "connection", "upgrade"};
    size_t len = (size_t)PyBytes_GET_SIZE(n);
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (len == strlen(names[k]) &&
            strncasecmp(PyBytes_AS_STRING(n), names[k], len) == 0) {
            return (int)k;
        }
    }
    return -1;
}

/* The server frames the messages, so it alone answers the client's
 * extension offer (above, from cd_deflate_response): an app's own
 * Sec-WebSocket-Extensions field in websocket.accept would claim an
 * extension we do not run, or name ours twice (clients then fail the
 * handshake), so it is dropped.  So are its connection, upgrade and
 * sec-websocket-accept fields: the fixed lines say "upgrade: websocket",
 * "connection: Upgrade" and the accept key, and a second field
 * ("connection: close", "upgrade: h2c", another key) contradicts the
 * switch (the websockets client refuses it).  Daphne sends none of the
 * app's accept headers; uvicorn (websockets) adds them all next to its
 * own.  The 101 names one subprotocol: with the subprotocol key (written
 * by accept_subprotocol) the app's sec-websocket-protocol fields are
 * dropped, as Daphne sends only the key; without it the app's first one
 * stays (uvicorn sends it) and later ones are dropped.  keep_proto: the
 * message has no subprotocol key.  list: ours to edit. */
static int
drop_app_fields(PyObject *list, int keep_proto)
{
    Py_ssize_t i = 0;
    while (i < PyList_GET_SIZE(list)) {
        int k = owned_field(PyTuple_GET_ITEM(PyList_GET_ITEM(list, i), 0));
        if (k < 0 || (k == 0 && keep_proto)) {
            keep_proto = keep_proto && k != 0;
            i++;
        }
        else if (PyList_SetSlice(list, i, i + 1, NULL) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Appends "HTTP/1.1 101 ..." with Sec-WebSocket-Accept to out; the head
 * writer in http1.c writes it and checks what the app gave. */
static int
build_accept(cd_cycle_t *cy, PyObject *msg, cd_buf_t *out)
{
    unsigned char digest[SHA_DIGEST_LENGTH];
    char joined[128];
    int jl = snprintf(joined, sizeof(joined), "%s%s", cy->ws->key, CD_WS_GUID);
    SHA1((const unsigned char *)joined, (size_t)jl, digest);
    char accept[64];
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);

    cd_buf_t fixed = {0}; /* owned */
    PyObject *list = NULL;
    int r = -1;
    static const char lines[] = "upgrade: websocket\r\n"
                                "connection: Upgrade\r\n"
                                "sec-websocket-accept: ";
    if (cd_buf_append(&fixed, lines, sizeof(lines) - 1) < 0 ||
        cd_buf_append(&fixed, accept, strlen(accept)) < 0 ||
        cd_buf_append(&fixed, "\r\n", 2) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    int sub = accept_subprotocol(cy, msg, &fixed);
    if (sub < 0) {
        goto done;
    }
    if (cy->ws->pmd != NULL && cd_deflate_response(cy->ws->pmd, &fixed) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *hs = PyDict_GetItemWithError(msg, cy->st->s_headers);
    if (hs == NULL && PyErr_Occurred()) {
        goto done;
    }
    list = cd_http1_head_headers(hs);
    if (list == NULL || drop_app_fields(list, !sub) < 0) {
        goto done;
    }
    cd_http1_head_t h = {
        .status = 101,
        .upgrade = 1,
        .server_header = cy->server->server_header,
        .fixed = fixed.base,
        .fixed_len = fixed.len,
        .keep_alive = 1,
    };
    r = cd_http1_head_write(out, &h, list);

done:
    Py_XDECREF(list);
    cd_buf_dispose(&fixed);
    return r;
}

static int
ws_accept(cd_cycle_t *cy, PyObject *msg)
{
    cd_ws_t *ws = cy->ws;
    cd_conn_t *c = cy->conn;
    cd_config_t *cfg = &cy->server->cfg;
    cd_buf_t head = {0}; /* owned until handed to the conn */
    if (build_accept(cy, msg, &head) < 0) {
        cd_buf_dispose(&head);
        return -1;
    }
    ws->state = CD_WS_OPEN; /* With a parked wslay context (ws_park). */
    ws->opened_at = uv_now(&cy->server->loop->uv);
    uv_buf_t b = cd_uvbuf(head.base, head.len);
    if (cd_conn_write(c, &b, 1, NULL, head.base) < 0) {
        return 0; /* Closed: the app gets websocket.disconnect. */
    }
    cd_conn_timer_stop(c);
    if (cfg->ping_interval) {
        cd_conn_timer_start(c, cfg->ping_interval);
    }
    ws_log(cy, "connected");
    ws_read_resume(cy);
    if (cy->server->closing) {
        ws_stop(c); /* Accepted while the server stops. */
    }
    return 0;
}

/* Before accept: answer the handshake with a plain HTTP response. */
static void
ws_reject(cd_cycle_t *cy, int status, const char *body)
{
    cd_ws_t *ws = cy->ws;
    ws->state = CD_WS_CLOSED;
    ws_log(cy, "rejected");
    if (cy->conn != NULL && cy->conn->state != CD_CONN_CLOSING) {
        cd_http1_simple_response(cy->conn, status, body);
    }
}

static int
ws_close(cd_cycle_t *cy, PyObject *msg)
{
    cd_ws_t *ws = cy->ws;
    cd_state *st = cy->st;
    long code = 1000;
    PyObject *v = PyDict_GetItemWithError(msg, st->s_code);
    if (v == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (v != NULL && v != Py_None) {
        int overflow;
        code = PyLong_AsLongAndOverflow(v, &overflow);
        if (code == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || !app_close_code_ok(code)) {
            PyErr_Format(PyExc_ValueError, "invalid WebSocket close code %R",
                         v);
            return -1;
        }
    }
    if (ws->state == CD_WS_CONNECTING || ws->state == CD_WS_HANDSHAKE) {
        ws_reject(cy, 403, "Forbidden");
        return 0;
    }
    if (ws->state != CD_WS_OPEN) {
        return 0; /* Already closing or closed: nothing to do. */
    }
    const char *reason = "";
    Py_ssize_t rlen = 0;
    v = PyDict_GetItemWithError(msg, st->s_reason);
    if (v == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (v != NULL && v != Py_None) {
        if (!PyUnicode_Check(v)) {
            PyErr_Format(PyExc_TypeError,
                         "the close reason must be str or None, not %.100s",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
        reason = PyUnicode_AsUTF8AndSize(v, &rlen);
        if (reason == NULL) {
            return -1;
        }
    }
    queue_close(ws, (int)code, reason, (size_t)rlen);
    flush_wslay(cy);
    return 0;
}

/* Writes an unmasked frame header for a final frame of n bytes into
 * head (10 bytes); returns its length.  b0: FIN, RSV and opcode bits. */
static size_t
frame_head(char *head, int b0, size_t n)
{
    head[0] = (char)b0;
    if (n < 126) {
        head[1] = (char)n;
        return 2;
    }
    if (n < 65536) {
        head[1] = 126;
        head[2] = (char)(n >> 8);
        head[3] = (char)n;
        return 4;
    }
    head[1] = 127;
    for (int i = 0; i < 8; i++) {
        head[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
    }
    return 10;
}

_Static_assert(4 + CD_WS_COPY_MAX <= CD_BLOCK_SIZE,
               "a copied frame fits a write block");

/* Frame and write one data message: a small one copied behind its
 * header into one of the loop's write blocks (one buffer to write, no
 * reference to hold, no malloc once the loop has spares), a larger one
 * as header plus its bytes, keeping a reference to them. */
static int
ws_write_frame(cd_cycle_t *cy, int opcode, const char *data, size_t n,
               PyObject *keep)
{
    cd_conn_t *c = cy->conn;
    flush_wslay(cy);
    int copy = n <= CD_WS_COPY_MAX;
    /* owned until written */
    char *head = copy ? cd_conn_block(c) : malloc(10);
    if (head == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t hl = frame_head(head, 0x80 | opcode, n);
    if (copy) {
        memcpy(head + hl, data, n);
        cd_conn_write_block(c, head, hl + n);
        return 0;
    }
    uv_buf_t bufs[2] = {cd_uvbuf(head, hl), cd_uvbuf_const(data, n)};
    cd_conn_write(c, bufs, 2, keep, head);
    return 0;
}

/* Compress one data message into a block that has room for its frame
 * header in front, and write that block (RSV1 set): one buffer, no copy
 * of the compressed bytes. */
static int
ws_write_deflated(cd_cycle_t *cy, int opcode, const char *data, size_t n)
{
    cd_buf_t out = {0}; /* owned until handed to the conn */
    int r = cd_deflate_compress(cy->ws->pmd, data, n, 10, &out);
    if (r < 0) {
        cd_buf_dispose(&out);
        PyErr_SetString(r == UV_ENOMEM ? PyExc_MemoryError
                                       : PyExc_RuntimeError,
                        "permessage-deflate failed");
        return -1;
    }
    flush_wslay(cy);
    char head[10];
    size_t hl = frame_head(head, 0x80 | 0x40 | opcode, out.len - 10);
    memcpy(out.base + 10 - hl, head, hl);
    uv_buf_t b = cd_uvbuf(out.base + 10 - hl, out.len - 10 + hl);
    cd_conn_write(cy->conn, &b, 1, NULL, out.base);
    return 0;
}

/* A data message: compressed when permessage-deflate is on and it is
 * worth it, else written as it is. */
static int
ws_write_message(cd_cycle_t *cy, int opcode, const char *data, size_t n,
                 PyObject *keep)
{
    if (cy->ws->pmd != NULL && n >= CD_WS_DEFLATE_MIN) {
        return ws_write_deflated(cy, opcode, data, n);
    }
    return ws_write_frame(cy, opcode, data, n, keep);
}

static int
ws_send_data(cd_cycle_t *cy, PyObject *msg)
{
    cd_ws_t *ws = cy->ws;
    cd_state *st = cy->st;
    if (ws->state == CD_WS_CONNECTING || ws->state == CD_WS_HANDSHAKE ||
        ws->state == CD_WS_DENYING) {
        PyErr_Format(PyExc_RuntimeError,
                     "websocket.send before websocket.accept (state %s)",
                     ws_state_name(ws->state));
        return -1;
    }
    PyObject *b = PyDict_GetItemWithError(msg, st->s_bytes);
    if (b == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *t = NULL;
    if (b == NULL || b == Py_None) {
        t = PyDict_GetItemWithError(msg, st->s_text);
        if (t == NULL && PyErr_Occurred()) {
            return -1;
        }
        if (t == NULL || t == Py_None) {
            PyErr_SetString(PyExc_ValueError,
                            "websocket.send needs 'bytes' or 'text'");
            return -1;
        }
        if (!PyUnicode_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "'text' must be a str");
            return -1;
        }
    }
    else if (!PyBytes_Check(b)) {
        PyErr_SetString(PyExc_TypeError, "'bytes' must be bytes");
        return -1;
    }
    if (ws->state != CD_WS_OPEN || cy->conn == NULL) {
        return 0; /* Daphne drops sends after the close. */
    }
    if (t != NULL) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(t, &n);
        if (p == NULL) {
            return -1;
        }
        return ws_write_message(cy, WSLAY_TEXT_FRAME, p, (size_t)n, t);
    }
    return ws_write_message(cy, WSLAY_BINARY_FRAME, PyBytes_AS_STRING(b),
                            (size_t)PyBytes_GET_SIZE(b), b);
}

static PyObject *
ws_send(cd_cycle_t *cy, PyObject *msg)
{
    cd_ws_t *ws = cy->ws;
    cd_state *st = cy->st;
    PyObject *type = cd_cycle_message_type(st, msg);
    if (type == NULL) {
        return NULL;
    }
    int r;
    if (cd_cycle_type_is_seen(type, st->s_ws_send, &st->ws_send_seen)) {
        r = ws_send_data(cy, msg);
    }
    else if (cd_cycle_type_is(type, st->s_ws_accept)) {
        if (ws->state == CD_WS_CLOSED) {
            r = 0;
        }
        else if (ws->state != CD_WS_CONNECTING &&
                 ws->state != CD_WS_HANDSHAKE) {
            PyErr_Format(PyExc_RuntimeError, "websocket.accept in state %s",
                         ws_state_name(ws->state));
            r = -1;
        }
        else {
            r = ws_accept(cy, msg);
        }
    }
    else if (cd_cycle_type_is(type, st->s_ws_close)) {
        r = ws_close(cy, msg);
    }
    else if (cd_cycle_type_is(type, st->s_ws_http_response_start)) {
        if (ws->state != CD_WS_CONNECTING && ws->state != CD_WS_HANDSHAKE) {
            PyErr_Format(PyExc_RuntimeError,
                         "websocket.http.response.start in state %s",
                         ws_state_name(ws->state));
            return NULL;
        }
        r = cd_cycle_response_start(cy, msg);
        if (r == 0) {
            /* Only once it is valid: a refused start leaves the
             * handshake to answer (500 if the app then fails). */
            ws->state = CD_WS_DENYING;
        }
    }
    else if (cd_cycle_type_is(type, st->s_ws_http_response_body)) {
        if (ws->state != CD_WS_DENYING) {
            PyErr_SetString(PyExc_RuntimeError,
                            "websocket.http.response.body without start");
            return NULL;
        }
        cy->keep_alive = 0;
        r = cd_cycle_response_body(cy, msg);
        if (r == 0 && cy->resp == CD_RESP_DONE) {
            ws->state = CD_WS_CLOSED;
            ws_log(cy, "rejected");
        }
    }
    else if ((r = cd_pubsub_on_send(cy, type, msg)) == 0) {
        PyErr_Format(PyExc_ValueError,
                     "unexpected ASGI message type %R for a WebSocket", type);
        return NULL;
    }
    if (r < 0) {
        return NULL;
    }
    return cd_cycle_send_done(cy, ws->state == CD_WS_OPEN);
}

/* ---- lifecycle ---------------------------------------------------- */

/* The conn is gone: tell the app (websocket.disconnect). */
static void
ws_on_disconnect(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    if (ws->state == CD_WS_CLOSED) {
        cd_cycle_wake_receiver(cy);
        return;
    }
    int was_open = ws->state == CD_WS_OPEN || ws->state == CD_WS_CLOSING;
    ws->state = CD_WS_CLOSED;
    cd_pubsub_drop(cy);
    cd_cycle_wake_receiver(cy);
    cd_cycle_wake_sender(cy);
    if (was_open) {
        ws_log(cy, "disconnected");
    }
    cd_cycle_arm_close_timeout(cy);
}

static void
ws_on_timeout(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (cy == NULL || cy->ws == NULL) {
        cd_conn_close(c);
        return;
    }
    cd_ws_t *ws = cy->ws;
    cd_config_t *cfg = &c->server->cfg;
    uint64_t now = uv_now(&c->server->loop->uv);
    switch (ws->state) {
    case CD_WS_CONNECTING:
    case CD_WS_HANDSHAKE:
        /* --websocket_connect_timeout: the app never answered. */
        ws_reject(cy, 403, "Forbidden");
        return;
    case CD_WS_OPEN:
        /* Every ping interval: a quiet WebSocket keeps no spare futures
         * (cycle.c), a busy one makes one again. */
        cd_cycle_drop_spares(cy);
        if (cfg->ws_timeout && now - ws->opened_at >= cfg->ws_timeout) {
            queue_close(ws, 1000, "", 0);
            flush_wslay(cy);
            return;
        }
        if (ws->queue_full) {
            /* We stopped reading (the app is behind), so the peer's pong
             * may be unread: it is not silent.  Not so when the conn
             * holds reading because the peer does not read (write_check_
             * high): that peer the ping timeout is for. */
            ws->pong_pending = 0;
            cd_conn_timer_start(c, cfg->ping_interval);
            return;
        }
        if (ws->pong_pending && now - ws->ping_sent_at >= cfg->ping_timeout) {
            cd_conn_close(c);
            return;
        }
        if (!ws->pong_pending) {
            if (ws_unpark(cy) < 0) {
                cd_conn_close(c);
                return;
            }
            struct wslay_event_msg ping = {WSLAY_PING, NULL, 0};
            wslay_event_queue_msg(ws->ctx, &ping);
            ws->pong_pending = 1;
            ws->ping_sent_at = now;
            flush_wslay(cy);
            ws_park(ws);
        }
        cd_conn_timer_start(c, cfg->ping_interval);
        return;
    case CD_WS_DENYING:
    case CD_WS_CLOSING:
    case CD_WS_CLOSED: cd_conn_close(c);
    }
}

/* Server shutdown: close with 1012. */
static void
ws_shutdown(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (cy != NULL && cy->ws != NULL && cy->ws->state == CD_WS_OPEN) {
        queue_close(cy->ws, 1012, "", 0);
        flush_wslay(cy);
        cd_conn_close_after_writes(c);
        return;
    }
    if (cy != NULL && cy->ws != NULL && cy->ws->state == CD_WS_CLOSING) {
        cd_conn_close_after_writes(c); /* Our close frame goes out. */
        return;
    }
    cd_conn_close(c);
}

/* Server stopping: close with 1012 now and tell the app at once (uvicorn
 * does both at its shutdown's start), so a quiet WebSocket does not hold
 * the stop for the graceful timeout.  The peer's close frame then ends
 * the conn (or CD_WS_CLOSE_WAIT_MS, or close_all); the app's message says
 * 1012 whatever the peer's frame says.  A handshake the app has not
 * answered is refused with a 500 (uvicorn's answer; Daphne drops the
 * conn) and the app hears websocket.disconnect 1006 at once; its accept
 * then does nothing, as after the client went away. */
static void
ws_stop(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (cy == NULL || cy->ws == NULL) {
        return;
    }
    if (cy->ws->state == CD_WS_CONNECTING ||
        cy->ws->state == CD_WS_HANDSHAKE) {
        ws_reject(cy, 500, "Internal Server Error");
        cd_cycle_wake_receiver(cy);
        return;
    }
    if (cy->ws->state != CD_WS_OPEN) {
        return;
    }
    queue_close(cy->ws, 1012, "", 0);
    flush_wslay(cy);
    if (cy->ws->state == CD_WS_CLOSING) {
        cy->ws->close_code = 1012;
        cd_cycle_on_disconnect(cy);
    }
}

/* Open until the close handshake: shutdown waits, then sends 1012. */
static int
ws_activity(const cd_conn_t *c)
{
    return CD_ACT_BUSY;
}

const cd_proto_t cd_ws_proto = {
    .name = "websocket",
    .on_read = ws_on_read,
    .on_eof = cd_conn_close,
    .on_timeout = ws_on_timeout,
    .on_drain = cd_cycle_conn_on_drain, /* after the hold's release */
    .on_close = cd_cycle_conn_on_close,
    .shutdown = ws_shutdown,
    .stop = ws_stop,
    .activity = ws_activity,
    .free = cd_cycle_conn_release,
};

/* The app finished: close as it deserves (1011 or 500 if it raised). */
static void
ws_on_task_done(cd_cycle_t *cy, cd_task_end_t end)
{
    int raised = end == CD_TASK_RAISED;
    cd_ws_t *ws = cy->ws;
    switch (ws->state) {
    case CD_WS_CONNECTING:
    case CD_WS_HANDSHAKE:
        if (raised) {
            ws_reject(cy, 500, "Internal Server Error");
        }
        else {
            ws_reject(cy, 403, "Forbidden");
        }
        break;
    case CD_WS_DENYING:
        /* The denial never finished: a 500 while its head is unwritten,
         * else what was written goes out before the close (as for an
         * HTTP response). */
        ws->state = CD_WS_CLOSED;
        cd_cycle_respond_error(cy, 500, "Internal Server Error");
        cy->resp = CD_RESP_DONE;
        break;
    case CD_WS_OPEN:
        queue_close(ws, raised ? 1011 : 1000, "", 0);
        flush_wslay(cy);
        break;
    case CD_WS_CLOSING:
    case CD_WS_CLOSED: break;
    }
}

/* ---- for pubsub.c ------------------------------------------------- */

int
cd_ws_phase(cd_cycle_t *cy)
{
    switch (cy->ws->state) {
    case CD_WS_CONNECTING:
    case CD_WS_HANDSHAKE:
    case CD_WS_DENYING: return -1;
    case CD_WS_OPEN: return 0;
    case CD_WS_CLOSING:
    case CD_WS_CLOSED: return 1;
    }
    return 1;
}

const char *
cd_ws_state_of(cd_cycle_t *cy)
{
    return ws_state_name(cy->ws->state);
}

void
cd_ws_write_prepared(cd_cycle_t *cy, PyObject *frame)
{
    if (cy->ws->state != CD_WS_OPEN || cy->conn == NULL) {
        return;
    }
    flush_wslay(cy);
    uv_buf_t b =
        cd_uvbuf(PyBytes_AS_STRING(frame), (size_t)PyBytes_GET_SIZE(frame));
    cd_conn_write(cy->conn, &b, 1, frame, NULL);
}

void
cd_ws_close_with(cd_cycle_t *cy, int code, const char *reason)
{
    if (cy->ws->state == CD_WS_OPEN && cy->conn != NULL) {
        queue_close(cy->ws, code, reason, strlen(reason));
        flush_wslay(cy);
    }
}

static void
ws_free(cd_cycle_t *cy)
{
    cd_ws_t *ws = cy->ws;
    if (ws == NULL) {
        return;
    }
    cd_pubsub_drop(cy);
    if (ws->ctx != NULL) {
        wslay_event_context_free(ws->ctx);
    }
    while (ws->qlen > 0) {
        Py_DECREF(queue_pop(ws));
    }
    free(ws->queue);
    cd_buf_dispose(&ws->out);
    cd_deflate_free(ws->pmd);
    Py_XDECREF(ws->close_reason);
    cy->st->live.ws--;
    free(ws);
    cy->ws = NULL;
}

static const cd_cycle_ops_t ws_cycle_ops = {
    .name = "websocket",
    .send = ws_send,
    .next_message = ws_next_message,
    .has_message = ws_has_message,
    .on_disconnect = ws_on_disconnect,
    .on_task_done = ws_on_task_done,
    .free = ws_free,
};
