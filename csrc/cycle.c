/* Cycle: one HTTP request/response or WebSocket between a connection
 * and the app, as ASGI sees it: receive() and send() go through the
 * cycle's operations (cd_cycle_ops_t), HTTP's here and WebSocket's in
 * websocket.c, and both receive()s return the same awaitable (waiter.c).
 *
 * HTTP: receive() hands out the request body and then http.disconnect;
 * send() validates the response messages, and http1.c writes them (head,
 * framing, 100-continue).
 *
 * The conn holds the cycle (strong) while the request is on it; the
 * cycle points back (borrowed) until the response is done or the conn
 * closes, after which sends are ignored as Daphne does. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* New reference: a future of the server's loop, as its create_future()
 * makes it (asyncio.Future(loop=loop) made directly while the loop's
 * class keeps asyncio's method: loopmeth.c). */
PyObject *
cd_future_new(cd_server_t *srv)
{
    PyObject *loop = srv->loop->aio_loop;
    if (loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no asyncio loop attached");
        return NULL;
    }
    return cd_loopmeth_future_new(srv->st, loop);
}

int
cd_future_done(cd_state *st, PyObject *fut)
{
    PyObject *done = PyObject_CallMethodNoArgs(fut, st->s_done);
    if (done == NULL) {
        return -1;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    return is_done;
}

/* fut.set_result(result) on a future known not to be done; an exact
 * asyncio.Future's method is called without looking it up. */
static int
future_set_result(cd_state *st, PyObject *fut, PyObject *result)
{
    st->scheduled = 1;
    PyObject *r;
    if (Py_IS_TYPE(fut, (PyTypeObject *)st->asyncio_Future)) {
        PyObject *args[2] = {fut, result};
        r = PyObject_Vectorcall(st->fut_set_result, args, 2, NULL);
    }
    else {
        r = PyObject_CallMethodOneArg(fut, st->s_set_result, result);
    }
    Py_XDECREF(r);
    return r ? 0 : -1;
}

int
cd_future_resolve(cd_state *st, PyObject *fut, PyObject *result)
{
    int is_done = cd_future_done(st, fut);
    if (is_done != 0) {
        return is_done < 0 ? -1 : 0;
    }
    return future_set_result(st, fut, result);
}

static PyObject *
msg_disconnect(cd_state *st)
{
    return Py_BuildValue("{OO}", st->s_type, st->s_http_disconnect);
}

/* The peer sent its FIN after the whole request and http1.c says so now
 * (fin_grace_arm): a receive() after the body says http.disconnect, as
 * when it left, yet a response the app sends still goes out. */
static inline int
peer_ended(const cd_cycle_t *cy)
{
    return cy->fin_told && cy->conn != NULL &&
           (cy->conn->flags & CD_CONN_F_EOF);
}

/* New reference to the next message for receive(), or NULL without an
 * exception when the app has to wait. */
static PyObject *
take_message(cd_cycle_t *cy)
{
    cd_state *st = cy->st;
    if (!cy->body_delivered && !cy->disconnected) {
        if (cy->body.len == 0 && !cy->body_complete) {
            if (cy->conn != NULL) {
                cd_http1_body_wait(cy->conn, 1); /* The app waits. */
            }
            return NULL;
        }
        if (cy->conn != NULL) {
            cd_http1_body_wait(cy->conn, 0);
        }
        PyObject *body =
            cy->body.len
                ? PyBytes_FromStringAndSize(cy->body.base, cy->body.len)
                : Py_NewRef(st->empty_bytes);
        if (body == NULL) {
            return NULL;
        }
        cy->body.len = 0;
        if (cy->body_complete) {
            cy->body_delivered = 1;
            cd_buf_dispose(&cy->body);
        }
        else if (cy->conn != NULL) {
            cd_conn_read_start(cy->conn);
        }
        PyObject *msg =
            cd_message_new(st->http_request_template, st->s_body, body);
        if (msg != NULL &&
            PyDict_SetItem(msg, st->s_more_body,
                           cy->body_complete ? Py_False : Py_True) < 0) {
            Py_CLEAR(msg);
        }
        return msg;
    }
    if (cy->disconnect_delivered) {
        return NULL; /* Delivered once; the close timeout bounds the app. */
    }
    if (cy->disconnected || cy->resp == CD_RESP_DONE || peer_ended(cy)) {
        cy->disconnect_delivered = 1;
        cd_cycle_arm_close_timeout(cy);
        return msg_disconnect(st);
    }
    return NULL;
}

/* Whether take_message() would return a message. */
static int
has_message(cd_cycle_t *cy)
{
    if (!cy->body_delivered && !cy->disconnected) {
        return cy->body.len > 0 || cy->body_complete;
    }
    return !cy->disconnect_delivered &&
           (cy->disconnected || cy->resp == CD_RESP_DONE || peer_ended(cy));
}

PyObject *
cd_cycle_take_message(cd_cycle_t *cy)
{
    return cy->ops->next_message(cy);
}

/* Drop *futp if it is done (a cancelled receive() or send() leaves its
 * future behind); returns -1 with an exception if done() failed. */
static int
drop_done_future(cd_state *st, PyObject **futp)
{
    if (*futp == NULL) {
        return 0;
    }
    int done = cd_future_done(st, *futp);
    if (done > 0) {
        Py_CLEAR(*futp);
    }
    return done < 0 ? -1 : 0;
}

#if PY_VERSION_HEX >= 0x030D0000
static int
visit_found(PyObject *o, void *found)
{
    *(int *)found = 1;
    return 0;
}
#endif

/* Whether o has no weak reference and no __dict__ made (where CPython
 * keeps them: tp_weaklistoffset may be negative, before the object). */
static int
no_weakref_no_dict(PyObject *o)
{
    PyTypeObject *tp = Py_TYPE(o);
    if (tp->tp_weaklistoffset == 0 ||
        *(PyObject **)((char *)o + tp->tp_weaklistoffset) != NULL) {
        return 0;
    }
    if (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT) {
#if PY_VERSION_HEX >= 0x030D0000
        int found = 0;
        PyObject_VisitManagedDict(o, visit_found, &found);
        return !found;
#else
        return 0;
#endif
    }
    return tp->tp_dictoffset > 0 &&
           *(PyObject **)((char *)o + tp->tp_dictoffset) == NULL;
}

/* Whether fut, done, may be made a new future again: an exact
 * asyncio.Future that nothing but the cycle holds or watches (no weak
 * reference, no attribute set on it). */
static int
future_unheld(cd_state *st, PyObject *fut)
{
    return Py_IS_TYPE(fut, (PyTypeObject *)st->asyncio_Future) &&
           Py_REFCNT(fut) == 1 && no_weakref_no_dict(fut);
}

/* Drops the cycle's reference to a receive() future of either kind. */
static void
future_release(cd_state *st, PyObject *fut)
{
    if (fut != NULL && cd_rfut_check(st, fut)) {
        cd_rfut_release(fut);
    }
    else {
        Py_XDECREF(fut);
    }
}

/* Whether the loop makes its futures as Future() does
 * (cd_loopmeth_future_new): its class keeps our create_future, no
 * instance attribute hides it (cd_loopmeth_direct), and it is the
 * running loop.  0 or 1, -1 with an exception. */
static int
loop_makes_plain_futures(cd_state *st, PyObject *loop)
{
    if (loop == NULL ||
        Py_TYPE(loop)->tp_getattro != PyObject_GenericGetAttr) {
        return 0;
    }
    if (cd_loopmeth_direct(st, loop, CD_LM_CREATE_FUTURE) == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running == NULL) {
        return -1;
    }
    Py_DECREF(running); /* Compared, not used. */
    return running == loop;
}

/* Keeps a woken receive() future (steals fut) for a later receive().  Two
 * are kept: when the task asks for the next one, the handle that woke it
 * still holds the newest. */
static void
keep_spare_future(cd_cycle_t *cy, PyObject *fut)
{
    PyObject *oldest = cy->spare_fut[1];
    cy->spare_fut[1] = cy->spare_fut[0];
    cy->spare_fut[0] = fut;
    future_release(cy->st, oldest);
}

/* Whether a receive() of loop may wait on a RecvFuture (waiter.c): the
 * loop would make a plain Future (its class keeps our create_future, no
 * instance attribute hides it) and is not in debug mode (where a Future
 * notes where it was made).  Its wake-up goes through the loop's
 * call_soon as a Future's would (waiter.c rfut_call_soon).  Whether it is
 * the running loop is the Task's to check, as for any future.  0 or 1, -1
 * with an exception. */
static int
loop_takes_rfut(cd_state *st, PyObject *loop)
{
    if (loop == NULL ||
        Py_TYPE(loop)->tp_getattro != PyObject_GenericGetAttr) {
        return 0;
    }
    cd_loop_t *core = cd_loopmeth_direct(st, loop, CD_LM_CREATE_FUTURE);
    if (core == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int debug = cd_sched_debug(core);
    return debug < 0 ? -1 : !debug;
}

/* New reference: a RecvFuture for receive(), a kept one that nothing else
 * holds made pending again when there is one. */
static PyObject *
recv_rfut_new(cd_cycle_t *cy, PyObject *loop)
{
    for (int i = 1; i >= 0; i--) {
        PyObject *f = cy->spare_fut[i];
        if (f != NULL && cd_rfut_check(cy->st, f) && cd_rfut_unheld(f)) {
            cy->spare_fut[i] = NULL;
            cd_rfut_reset(f, loop);
            return f;
        }
    }
    return cd_rfut_new(cy->st, loop);
}

/* New reference: a pending future for receive(): a RecvFuture where the
 * loop allows (loop_takes_rfut).  Else an asyncio.Future: a kept one that
 * nothing else holds is made new by asyncio.Future.__init__ (which resets
 * every field but __dict__, as Future() would set them) when the loop
 * would make a plain Future: one future allocated and freed per message
 * otherwise. */
static PyObject *
recv_future_new(cd_cycle_t *cy)
{
    cd_state *st = cy->st;
    PyObject *loop = cy->server->loop->aio_loop;
    int light = loop_takes_rfut(st, loop);
    if (light != 0) {
        return light < 0 ? NULL : recv_rfut_new(cy, loop);
    }
    int i = 1;
    while (i >= 0 && (cy->spare_fut[i] == NULL ||
                      !future_unheld(st, cy->spare_fut[i]))) {
        i--;
    }
    if (i >= 0) {
        int plain = loop_makes_plain_futures(st, loop);
        if (plain < 0) {
            return NULL;
        }
        if (plain) {
            PyObject *fut = cy->spare_fut[i];
            cy->spare_fut[i] = NULL;
            if (Py_TYPE(fut)->tp_init(fut, st->empty_tuple, NULL) < 0) {
                Py_DECREF(fut);
                return NULL;
            }
            return fut;
        }
    }
    return cd_future_new(cy->server);
}

/* Lets the kept futures and messages go (a WebSocket that went quiet). */
void
cd_cycle_drop_spares(cd_cycle_t *cy)
{
    PyObject *a = cy->spare_fut[0], *b = cy->spare_fut[1];
    cy->spare_fut[0] = cy->spare_fut[1] = NULL;
    future_release(cy->st, a);
    future_release(cy->st, b);
    Py_CLEAR(cy->sent_msg[0]);
    Py_CLEAR(cy->sent_msg[1]);
    Py_CLEAR(cy->sent_val[0]);
    Py_CLEAR(cy->sent_val[1]);
    Py_CLEAR(cy->free_msg);
}

/* ---- receive()'s messages, made again in place ---------------------
 * A message dict that the app let go of is made into the next one
 * (cd_cycle_message) instead of a new dict allocated and the old freed.
 * The cycle keeps the last two it made (sent_msg): an app that awaits
 * receive() in a loop still holds the last one while the next is made.
 * Once only the cycle holds one, it is let go of at the app's next send()
 * or the next message, whichever comes first (as the spare StopIteration
 * is, waiter.c): if the app changed it (a key added or taken out, a
 * value of its own) it is freed then, with whatever the app put in it;
 * if it is as it was made, it waits in free_msg with only its payload. */

/* Whether msg, which only the cycle holds, is as cd_cycle_message made
 * it: an exact dict of two keys, "type" with type, then key with val (the
 * same objects).  The two then are what a new copy of the template would
 * be, down to their order, and nothing in it is the app's (a value of its
 * own in the payload's place would live on in free_msg). */
static int
message_as_made(cd_state *st, PyObject *msg, PyObject *type, PyObject *key,
                PyObject *val)
{
    if (!PyDict_CheckExact(msg) || PyDict_GET_SIZE(msg) != 2) {
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    return PyDict_Next(msg, &pos, &k, &v) && k == st->s_type && v == type &&
           PyDict_Next(msg, &pos, &k, &v) && k == key && v == val;
}

static void
messages_let_go_slow(cd_cycle_t *cy)
{
    for (int i = 0; i < 2; i++) {
        PyObject *msg = cy->sent_msg[i], *val = cy->sent_val[i];
        if (msg == NULL || Py_REFCNT(msg) != 1) {
            continue;
        }
        cy->sent_msg[i] = cy->sent_val[i] = NULL;
        if (cy->free_msg == NULL &&
            message_as_made(cy->st, msg, cy->sent_type[i], cy->sent_key[i],
                            val)) {
            cy->free_msg = msg;
            cy->free_type = cy->sent_type[i];
            cy->free_key = cy->sent_key[i];
        }
        else {
            Py_DECREF(msg); /* May run code (what the app put in it). */
        }
        Py_XDECREF(val);
    }
}

static inline void
messages_let_go(cd_cycle_t *cy)
{
    PyObject *a = cy->sent_msg[0], *b = cy->sent_msg[1];
    if ((a != NULL && Py_REFCNT(a) == 1) || (b != NULL && Py_REFCNT(b) == 1)) {
        messages_let_go_slow(cy);
    }
}

/* New reference: a message for receive(), {"type": type, key: value}
 * (template: that dict with None for value; type and key: module state
 * strings); steals value.  Made in free_msg when that has the same type
 * and key.  len: the payload's size; a message with a payload over 4 KiB
 * is not kept (its dict is a small part of its cost). */
PyObject *
cd_cycle_message(cd_cycle_t *cy, PyObject *template, PyObject *type,
                 PyObject *key, PyObject *value, size_t len)
{
    if (value == NULL) {
        return NULL;
    }
    messages_let_go(cy);
    PyObject *msg = NULL;
    if (cy->free_msg != NULL && Py_REFCNT(cy->free_msg) == 1 &&
        cy->free_type == type && cy->free_key == key) {
        msg = cy->free_msg;
        cy->free_msg = NULL;
        if (PyDict_SetItem(msg, key, value) < 0 || PyDict_GET_SIZE(msg) != 2) {
            /* Its other key was not key (an error: none set). */
            Py_CLEAR(msg);
        }
    }
    if (msg == NULL) {
        msg = PyErr_Occurred()
                  ? NULL
                  : cd_message_new(template, key, Py_NewRef(value));
    }
    if (msg == NULL || len > 4096) {
        Py_DECREF(value);
        return msg;
    }
    /* The oldest goes (held by the app too, unless code that ran since
     * messages_let_go let it go): released once the two are in place. */
    PyObject *old = cy->sent_msg[1], *old_val = cy->sent_val[1];
    cy->sent_msg[1] = cy->sent_msg[0];
    cy->sent_val[1] = cy->sent_val[0];
    cy->sent_type[1] = cy->sent_type[0];
    cy->sent_key[1] = cy->sent_key[0];
    cy->sent_msg[0] = Py_NewRef(msg);
    cy->sent_val[0] = value; /* The reference stolen. */
    cy->sent_type[0] = type;
    cy->sent_key[0] = key;
    Py_XDECREF(old);
    Py_XDECREF(old_val);
    return msg;
}

PyObject *
cd_cycle_recv_future(cd_cycle_t *cy)
{
    if (cy->recv_fut != NULL) {
        /* A cancelled receive() leaves its future behind. */
        int done = cd_rfut_check(cy->st, cy->recv_fut)
                       ? cd_rfut_done(cy->recv_fut)
                       : cd_future_done(cy->st, cy->recv_fut);
        if (done < 0) {
            return NULL;
        }
        if (done) {
            keep_spare_future(cy, cy->recv_fut);
            cy->recv_fut = NULL;
        }
    }
    if (cy->recv_fut == NULL) {
        cy->recv_fut = recv_future_new(cy);
        if (cy->recv_fut == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(cy->recv_fut);
}

/* The waiter takes its message when it is first awaited, not here: a
 * receive() that is never awaited (asyncio.wait_for(receive(), 0) wraps
 * it in a task cancelled before its first step) takes nothing. */
PyObject *
cd_cycle_receive_waiter(cd_cycle_t *cy)
{
    return cd_waiter_receive(cy->st, cy);
}

/* A receive() may be waiting and something changed: wake it if there is
 * a message.  The message stays queued until the waiter's task runs and
 * takes it, so a receive() cancelled meanwhile loses nothing. */
void
cd_cycle_wake_receiver(cd_cycle_t *cy)
{
    if (cy->recv_fut == NULL || !cy->ops->has_message(cy)) {
        return;
    }
    PyObject *fut = cy->recv_fut;
    cy->recv_fut = NULL;
    if (cd_rfut_check(cy->st, fut)) {
        /* Done already only if its receive() was cancelled: nothing to
         * wake then. */
        if (cd_rfut_set_result(fut) < 0) {
            cd_log_exception("Error resolving receive()");
        }
        keep_spare_future(cy, fut);
        return;
    }
    /* Done already only if its receive() was cancelled: set_result then
     * raises (InvalidStateError) and there is nothing to wake.  Asked
     * after the fact, not with done() before every message. */
    if (future_set_result(cy->st, fut, Py_None) < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        int done = cd_future_done(cy->st, fut);
        if (done > 0) {
            Py_DECREF(exc);
        }
        else {
            if (done < 0) {
                PyErr_Clear();
            }
            PyErr_SetRaisedException(exc);
            cd_log_exception("Error resolving receive()");
        }
    }
    keep_spare_future(cy, fut);
}

void
cd_cycle_wake_sender(cd_cycle_t *cy)
{
    if (cy->send_fut == NULL) {
        return;
    }
    PyObject *fut = cy->send_fut;
    cy->send_fut = NULL;
    if (cd_future_resolve(cy->st, fut, Py_None) < 0) {
        cd_log_exception("Error resolving send()");
    }
    Py_DECREF(fut);
}

void
cd_cycle_on_body(cd_cycle_t *cy)
{
    cd_cycle_wake_receiver(cy);
}

void
cd_cycle_conn_on_drain(cd_conn_t *c)
{
    if (c->cycle != NULL) {
        cd_cycle_wake_sender(c->cycle);
    }
}

void
cd_cycle_conn_on_close(cd_conn_t *c)
{
    if (c->cycle != NULL) {
        cd_cycle_on_disconnect(c->cycle);
    }
}

void
cd_cycle_conn_release(cd_conn_t *c)
{
    cd_cycle_t *cy = c->cycle;
    if (cy != NULL) {
        c->cycle = NULL;
        cy->conn = NULL;
        Py_DECREF(cy);
    }
}

static PyObject *
cycle_cancel_task(cd_cycle_t *cy, PyObject *unused)
{
    if (cy->task == NULL) {
        Py_RETURN_NONE;
    }
    /* Not twice: an app the shutdown already cancelled may be running its
     * cleanup, and a second CancelledError would cut it short.  Yet a
     * cancel pending now may be the app's own (asyncio.timeout, wait_for),
     * which it takes back: look again a timeout later.  (A cold path.) */
    PyObject *n = PyObject_CallMethod(cy->task, "cancelling", NULL);
    int already = n != NULL ? PyObject_IsTrue(n) : -1;
    Py_XDECREF(n);
    if (already < 0 && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear(); /* a task factory's own kind of task */
        already = 0;
    }
    if (already != 0) {
        if (already > 0) {
            PyObject *running = cy->close_handle; /* the loop holds it too */
            cy->close_handle = NULL;
            cd_cycle_arm_close_timeout(cy);
            Py_XDECREF(running);
        }
        return already < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *r = PyObject_CallMethodNoArgs(cy->task, cy->st->s_cancel);
    Py_XDECREF(r);
    return r == NULL ? NULL : Py_NewRef(Py_None);
}

static PyMethodDef cancel_def = {
    "_cancel_task", (PyCFunction)cycle_cancel_task, METH_NOARGS, NULL};

/* The app may outlive its connection by application_close_timeout. */
void
cd_cycle_arm_close_timeout(cd_cycle_t *cy)
{
    if (cy->task == NULL) {
        /* The app's first step runs eagerly inside Task(): it can see its
         * disconnect before the task exists.  cd_cycle_start arms it. */
        cy->close_timeout_due = 1;
        return;
    }
    if (cy->close_handle != NULL) {
        return;
    }
    PyObject *cb = PyCFunction_New(&cancel_def, (PyObject *)cy);
    if (cb == NULL) {
        cd_log_exception("application_close_timeout");
        return;
    }
    double secs = (double)cy->server->cfg.app_close_timeout / 1000.0;
    cy->st->scheduled = 1;
    cy->close_handle = PyObject_CallMethod(cy->server->loop->aio_loop,
                                           "call_later", "dO", secs, cb);
    Py_DECREF(cb);
    if (cy->close_handle == NULL) {
        cd_log_exception("application_close_timeout");
    }
}

void
cd_cycle_on_disconnect(cd_cycle_t *cy)
{
    if (cy->disconnected) {
        return;
    }
    cy->disconnected = 1;
    cy->ops->on_disconnect(cy);
}

static void
http_on_disconnect(cd_cycle_t *cy)
{
    cd_cycle_wake_receiver(cy);
    cd_cycle_wake_sender(cy);
    if (cy->resp != CD_RESP_DONE) {
        cd_cycle_arm_close_timeout(cy);
    }
}

/* New reference: the request target as Daphne logs it, the raw path and
 * query string ("/a%20b?q=1"), other than ASCII bytes escaped; the
 * scope's path if the app replaced raw_path.  NULL with an exception. */
static PyObject *
log_target(cd_cycle_t *cy)
{
    PyObject *raw = PyDict_GetItemWithError(cy->scope, cy->st->s_raw_path);
    PyObject *qs = PyDict_GetItemWithError(cy->scope, cy->st->s_query_string);
    if (raw == NULL || qs == NULL || !PyBytes_Check(raw) ||
        !PyBytes_Check(qs)) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *path = PyDict_GetItemWithError(cy->scope, cy->st->s_path);
        if (path == NULL) {
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        }
        return Py_NewRef(path);
    }
    Py_ssize_t rn = PyBytes_GET_SIZE(raw), qn = PyBytes_GET_SIZE(qs);
    if (qn == 0) {
        return PyUnicode_DecodeASCII(PyBytes_AS_STRING(raw), rn,
                                     "backslashreplace");
    }
    PyObject *t = PyBytes_FromStringAndSize(NULL, rn + 1 + qn);
    if (t == NULL) {
        return NULL;
    }
    char *d = PyBytes_AS_STRING(t);
    memcpy(d, PyBytes_AS_STRING(raw), (size_t)rn);
    d[rn] = '?';
    memcpy(d + rn + 1, PyBytes_AS_STRING(qs), (size_t)qn);
    PyObject *r = PyUnicode_DecodeASCII(d, rn + 1 + qn, "backslashreplace");
    Py_DECREF(t);
    return r;
}

void
cd_cycle_log_access(cd_cycle_t *cy, int status)
{
    cd_server_t *srv = cy->server;
    if (srv->action_logger == NULL) {
        return;
    }
    PyObject *client = Py_None, *cl = NULL;
    PyObject *c = PyDict_GetItemWithError(cy->scope, cy->st->s_client);
    if (c != NULL && PyTuple_Check(c) && PyTuple_GET_SIZE(c) == 2) {
        cl = PyUnicode_FromFormat("%S:%S", PyTuple_GET_ITEM(c, 0),
                                  PyTuple_GET_ITEM(c, 1));
        client = cl;
    }
    PyObject *path = log_target(cy);
    PyObject *method = PyDict_GetItemWithError(cy->scope, cy->st->s_method);
    double taken = (double)(uv_hrtime() - cy->start_ns) / 1e9;
    PyObject *details = NULL;
    if (path != NULL && !PyErr_Occurred()) {
        details =
            Py_BuildValue("{sOsOsisOsdsK}", "path", path, "method",
                          method ? method : Py_None, "status", status,
                          "client", client ? client : Py_None, "time_taken",
                          taken, "size", (unsigned long long)cy->sent);
    }
    Py_XDECREF(path);
    Py_XDECREF(cl);
    if (details != NULL) {
        cd_server_log_action(srv, "http", "complete", details);
        Py_DECREF(details);
    }
    else {
        PyErr_Clear();
    }
}

/* The response can no longer come from the app: answer it ourselves. */
void
cd_cycle_respond_error(cd_cycle_t *cy, int status, const char *body)
{
    cd_conn_t *c = cy->conn;
    if (c == NULL || cy->disconnected) {
        return;
    }
    if (cy->resp == CD_RESP_START || cy->resp == CD_RESP_HEAD) {
        cy->resp = CD_RESP_DONE;
        cd_cycle_log_access(cy, status);
        cd_http1_simple_response(c, status, body);
        if (cy->task == NULL && cd_cycle_is_http(cy)) {
            /* Still waiting for its turn (admit.c) or its dispatch: the
             * client has its answer, so the app would only fail to send
             * a second one. */
            cd_admit_withdraw(cy);
        }
    }
    else if (cy->resp == CD_RESP_BODY) {
        /* What was sent goes out; the unfinished body tells the client
         * something went wrong. */
        cy->resp = CD_RESP_DONE;
        cd_conn_close_after_writes(c);
    }
    cd_cycle_on_disconnect(cy);
}

void
cd_cycle_on_timeout(cd_cycle_t *cy)
{
    /* --http-timeout: Daphne answers 503 if nothing was sent yet. */
    cd_cycle_respond_error(cy, 503, "Service Unavailable");
}

/* ---- receive ------------------------------------------------------ */

static void
http_receive(cd_cycle_t *cy)
{
    if (!has_message(cy)) {
        cd_http1_continue(cy); /* The app waits for the body. */
    }
}

/* receive() and send() touch the conn's libuv handles, which only the
 * loop's thread may do (libuv is not thread-safe).  asgiref's
 * async_to_sync(send)(msg), in every Channels sync consumer, calls send()
 * in its sync thread and awaits the result on the loop: called off the
 * loop's thread, they return cdaphne._offthread.deferred(now, ...), which
 * calls the `now` variant (raising if still off the thread) when awaited.
 * 1 if called on the loop's thread; 0 with *out set (new reference, or
 * NULL with an exception) otherwise. */
static int
cycle_on_thread(cd_cycle_t *cy, PyMethodDef *now_def, PyObject *arg,
                PyObject **out)
{
    if (PyThread_get_thread_ident() == cy->thread) {
        return 1;
    }
    *out = NULL;
    PyObject *mod = PyImport_ImportModule("cdaphne._offthread");
    PyObject *now = PyCFunction_New(now_def, (PyObject *)cy);
    if (mod != NULL && now != NULL) {
        *out =
            PyObject_CallMethod(mod, "deferred", arg ? "OO" : "O", now, arg);
    }
    Py_XDECREF(mod);
    Py_XDECREF(now);
    return 0;
}

PyObject *
cd_cycle_off_thread(const char *what)
{
    PyErr_Format(PyExc_RuntimeError,
                 "%s() awaited outside the server's event loop thread; "
                 "await it on that loop (asgiref.sync.async_to_sync, "
                 "asyncio.run_coroutine_threadsafe)",
                 what);
    return NULL;
}

static PyObject *cycle_receive_now(cd_cycle_t *cy, PyObject *unused);
static PyObject *cycle_send_now(cd_cycle_t *cy, PyObject *msg);
static PyMethodDef receive_now_def = {
    "receive", (PyCFunction)cycle_receive_now, METH_NOARGS, NULL};
static PyMethodDef send_now_def = {"send", (PyCFunction)cycle_send_now, METH_O,
                                   NULL};

/* receive() on the loop's thread. */
static PyObject *
cycle_receive_here(cd_cycle_t *cy)
{
    if (cy->ops->receive != NULL) {
        cy->ops->receive(cy);
    }
    return cd_cycle_receive_waiter(cy);
}

static PyObject *
cycle_receive_now(cd_cycle_t *cy, PyObject *unused)
{
    if (PyThread_get_thread_ident() != cy->thread) {
        return cd_cycle_off_thread("receive");
    }
    return cycle_receive_here(cy);
}

static PyObject *
cycle_receive(cd_cycle_t *cy, PyObject *unused)
{
    PyObject *deferred;
    if (!cycle_on_thread(cy, &receive_now_def, NULL, &deferred)) {
        return deferred;
    }
    return cycle_receive_here(cy);
}

/* ---- send --------------------------------------------------------- */

int
cd_cycle_response_start(cd_cycle_t *cy, PyObject *msg)
{
    cd_state *st = cy->st;
    if (cy->resp != CD_RESP_START) {
        PyErr_SetString(PyExc_RuntimeError, "http.response.start sent twice");
        return -1;
    }
    PyObject *status = PyDict_GetItemWithError(msg, st->s_status);
    if (status == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError,
                            "http.response.start without a status");
        }
        return -1;
    }
    int code = PyLong_AsInt(status);
    if (code == -1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "status must be an int");
        return -1;
    }
    if (code < 200 || code > 999) {
        /* 1xx is interim, not an answer: 101 would tell the client the
         * connection switched protocols, 100 would leave it waiting. */
        PyErr_Format(PyExc_ValueError, "invalid status %d", code);
        return -1;
    }
    PyObject *headers = PyDict_GetItemWithError(msg, st->s_headers);
    if (headers == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *list = cd_http1_head_headers(headers);
    if (list == NULL) {
        return -1;
    }
    cy->status = code;
    Py_XSETREF(cy->resp_headers, list);
    cy->resp = CD_RESP_HEAD;
    return 0;
}

int
cd_cycle_response_body(cd_cycle_t *cy, PyObject *msg)
{
    cd_state *st = cy->st;
    if (cy->resp == CD_RESP_START) {
        PyErr_SetString(PyExc_RuntimeError,
                        "http.response.body before http.response.start");
        return -1;
    }
    if (cy->resp == CD_RESP_DONE) {
        if (cy->disconnected) {
            return 0;
        }
        PyErr_SetString(PyExc_RuntimeError,
                        "http.response.body after the response finished");
        return -1;
    }
    PyObject *body = PyDict_GetItemWithError(msg, st->s_body);
    if (body == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (body == NULL) {
        body = st->empty_bytes;
    }
    Py_INCREF(body);
    if (!PyBytes_Check(body)) {
        if (!PyByteArray_Check(body) && !PyMemoryView_Check(body)) {
            Py_DECREF(body);
            PyErr_SetString(PyExc_TypeError, "body must be bytes");
            return -1;
        }
        Py_SETREF(body, PyBytes_FromObject(body));
        if (body == NULL) {
            return -1;
        }
    }
    PyObject *more = PyDict_GetItemWithError(msg, st->s_more_body);
    if (more == NULL && PyErr_Occurred()) {
        Py_DECREF(body);
        return -1;
    }
    int more_body = more ? PyObject_IsTrue(more) : 0;
    if (more_body < 0) {
        Py_DECREF(body);
        return -1;
    }
    cd_conn_t *c = cy->conn;
    int r = cd_http1_write_body(cy, body, more_body);
    Py_DECREF(body);
    if (r != 0) {
        return r < 0 ? -1 : 0; /* 1: no conn; the app sees a disconnect. */
    }
    if (!more_body) {
        int keep = cd_http1_keep_alive(cy);
        cd_cycle_log_access(cy, cy->status);
        /* Keep ourselves alive: the conn drops its reference. */
        Py_INCREF(cy);
        cd_http1_response_done(c, keep);
        if (c->cycle == NULL) {
            /* The response goes out now, not when the app next yields: an
             * app that computes after its last send() must not hold it.
             * A pipelined request already started stays in the batch
             * written when the loop polls: its response usually follows
             * in this turn. */
            cd_conn_flush(c);
        }
        cd_cycle_wake_receiver(cy);
        Py_DECREF(cy);
    }
    return 0;
}

PyObject *
cd_cycle_message_type(cd_state *st, PyObject *msg)
{
    if (!PyDict_Check(msg)) {
        PyErr_SetString(PyExc_TypeError, "send() takes a dict");
        return NULL;
    }
    PyObject *type = PyDict_GetItemWithError(msg, st->s_type);
    if (type == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "message has no 'type'");
    }
    return type;
}

/* name: one of ours (an exact str).  An app's literal is rarely the
 * same object, so the characters are compared without a call. */
int
cd_cycle_type_is(PyObject *type, PyObject *name)
{
    if (type == name) {
        return 1;
    }
    if (!PyUnicode_Check(type)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    int kind = PyUnicode_KIND(name);
    return PyUnicode_GET_LENGTH(type) == n && PyUnicode_KIND(type) == kind &&
           memcmp(PyUnicode_DATA(type), PyUnicode_DATA(name),
                  (size_t)n * (size_t)kind) == 0;
}

/* cd_cycle_type_is, known by identity when type is the object *seen
 * (strong, module state): the last string that matched, kept. */
int
cd_cycle_type_is_seen(PyObject *type, PyObject *name, PyObject **seen)
{
    if (type == *seen) {
        return 1;
    }
    if (!cd_cycle_type_is(type, name)) {
        return 0;
    }
    Py_XSETREF(*seen, Py_NewRef(type));
    return 1;
}

PyObject *
cd_cycle_send_done(cd_cycle_t *cy, int open)
{
    cd_conn_t *c = cy->conn;
    if (c != NULL && open &&
        c->write_queued > cy->server->cfg.write_high_water) {
        /* A send() cancelled while it waited leaves its future done. */
        if (drop_done_future(cy->st, &cy->send_fut) < 0) {
            return NULL;
        }
        if (cy->send_fut == NULL) {
            cy->send_fut = cd_future_new(cy->server);
            if (cy->send_fut == NULL) {
                return NULL;
            }
        }
        return cd_waiter_pending(cy->st, Py_NewRef(cy->send_fut));
    }
    return Py_NewRef(cy->st->done_waiter);
}

static PyObject *
http_send(cd_cycle_t *cy, PyObject *msg)
{
    cd_state *st = cy->st;
    PyObject *type = cd_cycle_message_type(st, msg);
    if (type == NULL) {
        return NULL;
    }
    int r;
    if (cd_cycle_type_is(type, st->s_http_response_body)) {
        r = cd_cycle_response_body(cy, msg);
    }
    else if (cd_cycle_type_is(type, st->s_http_response_start)) {
        r = cd_cycle_response_start(cy, msg);
    }
    else if ((r = cd_pubsub_on_send(cy, type, msg)) == 0) {
        PyErr_Format(PyExc_ValueError,
                     "unexpected ASGI message type %R for an HTTP "
                     "response",
                     type);
        return NULL;
    }
    if (r < 0) {
        return NULL;
    }
    return cd_cycle_send_done(cy, !cy->disconnected);
}

/* ---- the app's task ----------------------------------------------- */

/* How the app's task ended; the exception it raised is logged. */
static cd_task_end_t
task_end(cd_cycle_t *cy, PyObject *task)
{
    cd_state *st = cy->st;
    PyObject *r = PyObject_CallMethodNoArgs(task, st->s_cancelled);
    int cancelled = r ? PyObject_IsTrue(r) : 0;
    Py_XDECREF(r);
    if (cancelled) {
        return CD_TASK_CANCELLED;
    }
    PyObject *exc = PyObject_CallMethodNoArgs(task, st->s_exception);
    if (exc == NULL) {
        cd_log_exception("Exception inside application");
        return CD_TASK_UNKNOWN;
    }
    if (exc == Py_None) {
        Py_DECREF(exc);
        return CD_TASK_RETURNED;
    }
    PyErr_SetRaisedException(exc);
    cd_log_exception("Exception inside application");
    return CD_TASK_RAISED;
}

/* An HTTP app finished: answer 500 for it unless it completed. */
static void
http_on_task_done(cd_cycle_t *cy, cd_task_end_t end)
{
    switch (end) {
    case CD_TASK_RETURNED:
        if (cy->resp != CD_RESP_DONE && !cy->disconnected &&
            cy->disconnect_delivered && cy->conn != NULL) {
            /* The app took the peer's FIN for its leaving (Django stops
             * the view): no answer, and no error either. */
            cd_conn_close_after_writes(cy->conn);
        }
        else if (cy->resp != CD_RESP_DONE && !cy->disconnected) {
            PyErr_SetString(PyExc_RuntimeError,
                            "ASGI application returned without "
                            "completing the response");
            cd_log_exception("Application error");
            cd_cycle_respond_error(cy, 500, "Internal Server Error");
        }
        break;
    case CD_TASK_RAISED:
    case CD_TASK_CANCELLED:
        cd_cycle_respond_error(cy, 500, "Internal Server Error");
        break;
    case CD_TASK_UNKNOWN: break;
    }
}

static void
on_task_done(cd_cycle_t *cy, PyObject *task)
{
    cy->ops->on_task_done(cy, task_end(cy, task));
    if (cy->close_handle != NULL) {
        PyObject *x =
            PyObject_CallMethodNoArgs(cy->close_handle, cy->st->s_cancel);
        Py_XDECREF(x);
        PyErr_Clear();
        Py_CLEAR(cy->close_handle);
    }
    Py_CLEAR(cy->task);
    cd_admit_done(cy);
    /* No more receive()s: the waiter (which may hold the cycle) and the
     * future kept for them go now. */
    Py_CLEAR(cy->waiter);
    cd_cycle_drop_spares(cy);
}

static PyObject *
cycle_task_done(cd_cycle_t *cy, PyObject *task)
{
    on_task_done(cy, task);
    Py_RETURN_NONE;
}

static PyObject *
cycle_send_now(cd_cycle_t *cy, PyObject *msg)
{
    if (PyThread_get_thread_ident() != cy->thread) {
        return cd_cycle_off_thread("send");
    }
    return cy->ops->send(cy, msg);
}

static PyObject *
cycle_send(cd_cycle_t *cy, PyObject *msg)
{
    PyObject *deferred;
    cd_waiter_drop_returned(cy->st);
    messages_let_go(cy);
    if (!cycle_on_thread(cy, &send_now_def, msg, &deferred)) {
        return deferred;
    }
    return cy->ops->send(cy, msg);
}

static PyMethodDef receive_def = {"receive", (PyCFunction)cycle_receive,
                                  METH_NOARGS, NULL};
static PyMethodDef send_def = {"send", (PyCFunction)cycle_send, METH_O, NULL};
static PyMethodDef done_def = {"_task_done", (PyCFunction)cycle_task_done,
                               METH_O, NULL};

/* Task(coro, loop=loop, eager_start=True), made as type_call makes it
 * (tp_new, then tp_init: Task has no vectorcall, so the call built the
 * same tuple and dict) to keep the task when its first step raises
 * SystemExit or KeyboardInterrupt out of Task(): asyncio set that
 * exception on the task, which then died unretrieved and logged "Task
 * exception was never retrieved" besides our own log.  Retrieved here;
 * the exception stays raised for the caller. */
static PyObject *
new_eager_task(cd_state *st, PyObject *coro, PyObject *loop)
{
    PyTypeObject *tp = (PyTypeObject *)st->asyncio_Task;
    PyObject *task = NULL;
    PyObject *kw = NULL;
    PyObject *args = PyTuple_Pack(1, coro);
    if (args == NULL || (kw = PyDict_New()) == NULL ||
        PyDict_SetItem(kw, st->s_loop, loop) < 0 ||
        PyDict_SetItem(kw, st->s_eager_start, Py_True) < 0 ||
        (task = tp->tp_new(tp, args, kw)) == NULL) {
        goto done;
    }
    if (Py_TYPE(task)->tp_init(task, args, kw) < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *r = PyObject_CallMethodNoArgs(task, st->s_exception);
        if (r == NULL) {
            PyErr_Clear(); /* Not done: Task() refused its arguments. */
        }
        Py_XDECREF(r);
        Py_CLEAR(task);
        PyErr_SetRaisedException(exc);
    }

done:
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return task;
}

int
cd_cycle_start(PyObject *obj)
{
    cd_cycle_t *cy = (cd_cycle_t *)obj;
    cd_state *st = cy->st;
    cd_server_t *srv = cy->server;
    PyObject *receive = PyCFunction_New(&receive_def, obj);
    PyObject *send = PyCFunction_New(&send_def, obj);
    PyObject *coro = NULL, *task = NULL;
    if (receive == NULL || send == NULL) {
        goto error;
    }
    PyObject *args[3] = {cy->scope, receive, send};
    coro = PyObject_Vectorcall(srv->app, args, 3, NULL);
    if (coro == NULL) {
        goto error;
    }
    if (srv->cfg.eager_tasks) {
        task = new_eager_task(st, coro, srv->loop->aio_loop);
    }
    else {
        PyObject *targs[2] = {coro, srv->loop->aio_loop};
        task =
            PyObject_Vectorcall(st->asyncio_Task, targs, 1, st->kwnames_loop);
    }
    if (task == NULL) {
        goto error;
    }
    Py_CLEAR(coro);
    Py_CLEAR(receive);
    Py_CLEAR(send);
    cy->task = task;
    PyObject *done = PyObject_CallMethodNoArgs(task, st->s_done);
    if (done == NULL) {
        return -1;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done) {
        on_task_done(cy, task);
        return 0;
    }
    PyObject *cb = PyCFunction_New(&done_def, obj);
    if (cb == NULL) {
        return -1;
    }
    PyObject *r = PyObject_CallMethodOneArg(task, st->s_add_done_callback, cb);
    Py_DECREF(cb);
    Py_XDECREF(r);
    if (cy->close_timeout_due) {
        /* The client left, or the app saw its disconnect, before the task
         * existed: arm application_close_timeout now. */
        cd_cycle_arm_close_timeout(cy);
    }
    return r ? 0 : -1;

error:
    Py_XDECREF(receive);
    Py_XDECREF(send);
    if (coro != NULL) {
        /* Never awaited, or its eager first step raised out of Task():
         * close it quietly, with the app's exception kept aside (close()
         * with one set was a SystemError). */
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *x = PyObject_CallMethod(coro, "close", NULL);
        if (x == NULL) {
            PyErr_Clear(); /* Not a coroutine (Task() said so): no close. */
        }
        Py_XDECREF(x);
        Py_DECREF(coro);
        PyErr_SetRaisedException(exc);
    }
    /* SystemExit and KeyboardInterrupt leave the loop after the 500, as
     * they do from a later step of the app's task (asyncio's rule). */
    PyObject *exit_exc = NULL;
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        exit_exc = PyErr_GetRaisedException();
        PyErr_SetRaisedException(Py_NewRef(exit_exc));
    }
    cd_log_exception("Exception inside application");
    cy->ops->on_task_done(cy, CD_TASK_RAISED);
    cd_admit_done(cy);
    if (exit_exc != NULL) {
        PyErr_SetRaisedException(exit_exc);
        return -1;
    }
    return 0;
}

static const cd_cycle_ops_t http_ops = {
    .name = "http",
    .receive = http_receive,
    .send = http_send,
    .next_message = take_message,
    .has_message = has_message,
    .on_disconnect = http_on_disconnect,
    .on_task_done = http_on_task_done,
};

int
cd_cycle_is_http(const cd_cycle_t *cy)
{
    return cy->ops == &http_ops;
}

cd_cycle_t *
cd_cycle_new(cd_conn_t *c, PyObject *scope)
{
    cd_server_t *srv = c->server;
    cd_cycle_t *cy = PyObject_GC_New(cd_cycle_t, srv->st->Cycle_type);
    if (cy == NULL) {
        return NULL;
    }
    memset((char *)cy + sizeof(PyObject), 0, sizeof(*cy) - sizeof(PyObject));
    cy->st = srv->st;
    cy->st->live.cycles++;
    srv->requests++;
    cy->server = (cd_server_t *)Py_NewRef((PyObject *)srv);
    cy->conn = c;
    cy->scope = Py_NewRef(scope);
    cy->ops = &http_ops;
    cy->resp = CD_RESP_START;
    cy->content_length = -1;
    cy->start_ns = uv_hrtime();
    cy->thread = PyThread_get_thread_ident(); /* A read callback's. */
    PyObject_GC_Track(cy);
    return cy;
}

static int
cycle_traverse(cd_cycle_t *cy, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(cy));
    Py_VISIT(cy->server);
    Py_VISIT(cy->scope);
    Py_VISIT(cy->task);
    Py_VISIT(cy->recv_fut);
    Py_VISIT(cy->send_fut);
    Py_VISIT(cy->waiter);
    Py_VISIT(cy->spare_fut[0]);
    Py_VISIT(cy->spare_fut[1]);
    Py_VISIT(cy->sent_msg[0]);
    Py_VISIT(cy->sent_msg[1]);
    Py_VISIT(cy->sent_val[0]);
    Py_VISIT(cy->sent_val[1]);
    Py_VISIT(cy->free_msg);
    Py_VISIT(cy->resp_headers);
    Py_VISIT(cy->close_handle);
    return 0;
}

static int
cycle_clear(cd_cycle_t *cy)
{
    Py_CLEAR(cy->scope);
    Py_CLEAR(cy->task);
    PyObject *recv_fut = cy->recv_fut;
    cy->recv_fut = NULL;
    future_release(cy->st, recv_fut);
    Py_CLEAR(cy->send_fut);
    Py_CLEAR(cy->waiter);
    cd_cycle_drop_spares(cy);
    Py_CLEAR(cy->resp_headers);
    Py_CLEAR(cy->close_handle);
    return 0;
}

static void
cycle_dealloc(cd_cycle_t *cy)
{
    PyTypeObject *tp = Py_TYPE(cy);
    PyObject_GC_UnTrack(cy);
    cycle_clear(cy);
    cd_buf_dispose(&cy->body);
    if (cy->ops->free != NULL) {
        cy->ops->free(cy);
    }
    cy->st->live.cycles--;
    Py_CLEAR(cy->server);
    tp->tp_free(cy);
    Py_DECREF(tp);
}

static PyType_Slot cycle_slots[] = {
    {Py_tp_traverse, cycle_traverse},
    {Py_tp_clear, cycle_clear},
    {Py_tp_dealloc, cycle_dealloc},
    {0, NULL},
};

static PyType_Spec cycle_spec = {
    .name = "cdaphne._cdaphne.Cycle",
    .basicsize = sizeof(cd_cycle_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = cycle_slots,
};

int
cd_cycle_type_init(PyObject *module, cd_state *st)
{
    st->Cycle_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &cycle_spec, NULL);
    return st->Cycle_type ? 0 : -1;
}
