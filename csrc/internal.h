/* Types and prototypes shared between the files of csrc/, one banner per
 * file.  Ownership tags on pointer fields: owned (our close path frees it),
 * borrowed (who keeps it alive is named), strong (a PyObject reference
 * that traverse/clear or the close path releases). */
#ifndef CD_INTERNAL_H
#define CD_INTERNAL_H

#include "state.h"

#include <limits.h>
#include <llhttp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Compatibility with CPython 3.11 and 3.12. */
#if PY_VERSION_HEX < 0x030C0000
static inline PyObject *
cd_compat_get_raised(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(v, tb);
    }
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}
#define PyErr_GetRaisedException cd_compat_get_raised
static inline void
cd_compat_set_raised(PyObject *exc)
{
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
}
#define PyErr_SetRaisedException cd_compat_set_raised
#endif
#if PY_VERSION_HEX < 0x030D0000
static inline int
cd_compat_long_as_int(PyObject *o)
{
    long v = PyLong_AsLong(o);
    if (v > INT_MAX || v < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError, "value out of int range");
        return -1;
    }
    return (int)v;
}
#define PyLong_AsInt cd_compat_long_as_int
#endif

#define cd_container_of(ptr, type, member)                                    \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* A uv_buf_t over constant bytes.  libuv never writes through a write
 * buffer, but its field is not const; the cast goes through uintptr_t so
 * that -Wcast-qual stays on for every other cast. */
static inline uv_buf_t
cd_uvbuf_const(const char *p, size_t n)
{
    uv_buf_t b;
    b.base = (char *)(uintptr_t)p;
    b.len = n;
    return b;
}

/* A uv_buf_t of any size: uv_buf_init() takes an unsigned int and would
 * cut a buffer over 4 GiB; the field itself is a size_t on Unix. */
static inline uv_buf_t
cd_uvbuf(char *p, size_t n)
{
    uv_buf_t b;
    b.base = p;
    b.len = n;
    return b;
}

/* asyncio's selector event masks; they equal UV_READABLE/UV_WRITABLE. */
#define CD_EVENT_READ 1
#define CD_EVENT_WRITE 2

typedef struct cd_loop_s cd_loop_t;
typedef struct cd_server_s cd_server_t;
typedef struct cd_listener_s cd_listener_t;
typedef struct cd_conn_s cd_conn_t;
typedef struct cd_cycle_s cd_cycle_t;
typedef struct cd_ws_s cd_ws_t;
typedef struct cd_transport_s cd_transport_t;
typedef struct cd_proto_s cd_proto_t;
typedef struct cd_tls_s cd_tls_t;
typedef struct cd_hop_s cd_hop_t;
typedef struct cd_readyq_s cd_readyq_t;

/* ---- strings.c ---------------------------------------------------- */
int cd_strings_init(cd_state *st);
PyObject *cd_message_new(PyObject *template, PyObject *key,
                         PyObject *value); /* steals value */
int cd_state_traverse(cd_state *st, visitproc visit, void *arg);
void cd_state_clear(cd_state *st);

/* ---- types.c ------------------------------------------------------ */
int cd_types_init(PyObject *module, cd_state *st);

/* ---- buf.c: a growable byte buffer -------------------------------- */
typedef struct {
    char *base; /* owned */
    size_t len;
    size_t cap;
} cd_buf_t;

int cd_buf_reserve(cd_buf_t *b, size_t extra);
int cd_buf_append(cd_buf_t *b, const char *data, size_t n);
void cd_buf_consume(cd_buf_t *b, size_t n);
void cd_buf_dispose(cd_buf_t *b);

/* Doubly linked list node; server->conns, loop->corked. */
typedef struct cd_link_s {
    struct cd_link_s *prev, *next;
} cd_link_t;

/* ---- loop.c: the libuv loop under asyncio's selector -------------- */

/* One uv_poll_t per file descriptor that asyncio registered. */
typedef struct {
    uv_poll_t handle;
    cd_loop_t *loop; /* borrowed: the loop closes every poll before dying */
    int fd;
    int events;
} cd_poll_t;

typedef struct {
    int fd;
    int events;
} cd_ready_t;

/* The asyncio loop's attributes that the scheduling core reads at every
 * step, as last read from its __dict__; valid while no watched loop
 * __dict__ changed since (sched.c, Python 3.12+: dict watchers). */
typedef enum {
    CD_ATTR_DEBUG,         /* loop._debug */
    CD_ATTR_CLOSED,        /* loop._closed */
    CD_ATTR_STOPPING,      /* loop._stopping */
    CD_ATTR_TIME_IS_CLOCK, /* no instance attribute replaces loop.time */
    CD_ATTR_NO_FACTORY,    /* loop._task_factory is None */
    CD_ATTR_WAKE_IS_OURS,  /* no instance attribute replaces _write_to_self */
    CD_ATTR_TC_IS_OURS, /* nor _timer_handle_cancelled (TimerHandle.cancel) */
    CD_ATTR_DEBUG_IS_OURS, /* nor get_debug (TimerHandle.cancel) */
    CD_ATTR_CF_IS_OURS,    /* nor create_future (the server's futures) */
    CD_ATTR_CS_IS_OURS,    /* nor call_soon (a RecvFuture's wake-up) */
    CD_ATTR_CST_IS_OURS,   /* nor call_soon_threadsafe (run_in_executor) */
    CD_ATTR_NFLAGS,
} cd_attr_flag_t;

typedef struct {
    uint64_t gen;        /* the watcher generation read at; 0: nothing */
    PyObject *scheduled; /* strong: loop._scheduled (a list), or NULL */
    PyObject *selector;  /* strong: loop._selector, or NULL */
    signed char flag[CD_ATTR_NFLAGS]; /* 0 or 1; -1: not a bool */
} cd_loop_attrs_t;

/* The core's copy of one entry of loop._scheduled (sched.c). */
typedef struct {
    double when; /* the timer's _when; NAN: compare the items in Python */
    PyObject *h; /* borrowed: the list's item at this index holds it (the
                    entry is used only while that is still so) */
} cd_heap_ent_t;

/* Handles kept for reuse (sched.c): as many as a stream of
 * call_soon_threadsafe() callbacks keeps in flight; timers, fewer. */
#define CD_SPARE_HANDLES 1024
#define CD_SPARE_TIMERS 16
/* 1-tuples kept for call_soon's arguments (sched.c): one per Handle of a
 * loop turn's batch of wake-ups (a WebSocket echo at 50 connections runs
 * ~40 a turn), 64 bytes each. */
#define CD_SPARE_ARGS 256
/* Write blocks (conn.c, cd_conn_block): the bytes of one, and how many a
 * loop keeps for reuse once their writes are done (a WebSocket echo at 50
 * connections writes 50 small frames a turn). */
#define CD_BLOCK_SIZE 1032
#define CD_SPARE_BLOCKS 128

/* The Python object LoopCore.  It owns the uv_loop_t; asyncio's
 * SelectorEventLoop drives it through cdaphne.loop.LibuvSelector. */
/* Admission (admit.c): how many HTTP apps a loop runs at once.  Past the
 * limit a request waits, parsed, in arrival order, while the process keeps
 * its core busy; a core left idle, a slot freed or a long wait lets it in. */
typedef struct {
    PyObject *waiting;   /* strong: list of HTTP cycles not started yet */
    int running;         /* HTTP apps started and not done */
    int limit;           /* running before a request waits (0: no limit) */
    int cap;             /* the limit now: raised while the core idles with
                            requests waiting, lowered back while it is busy */
    uint64_t mark_ns;    /* start of the window the CPU is measured over */
    uint64_t mark_cpu;   /* the process's CPU time (ns) then */
    uint64_t mark_delay; /* the loop thread's wait for a CPU (ns) then */
} cd_admit_t;

/* The loop thread's scheduling policy (policy.c). */
typedef enum {
    CD_POLICY_OFF,   /* not asked for, or not ours to change */
    CD_POLICY_ASKED, /* asked for; the loop's thread not seen yet */
    CD_POLICY_OTHER, /* policy_tid under SCHED_OTHER, the default */
    CD_POLICY_BATCH, /* policy_tid under SCHED_BATCH, set here */
} cd_policy_t;

struct cd_loop_s {
    PyObject_HEAD
    /* public */
    uv_loop_t uv; /* owned, embedded */
    cd_state *st; /* borrowed: the module outlives its types */
    /* private */
    uv_timer_t select_timer; /* wakes uv_run at select()'s timeout */
    uv_prepare_t prepare;    /* flushes what callbacks queued before a poll */
    PyThreadState *released; /* non-NULL while the GIL is released */
    cd_poll_t **polls;       /* owned: indexed by fd, NULL when unused */
    int npolls;
    cd_ready_t *ready; /* owned: events collected during uv_run */
    int nready;
    int ready_cap;
    PyObject *pending;  /* strong: list of cycles waiting to start */
    cd_admit_t admit;   /* HTTP apps running at once (admit.c) */
    PyObject *aio_loop; /* strong: the asyncio loop, once attached */
    cd_link_t corked;   /* conns with output to flush before polling */
    int ncorked;        /* conns on corked */
    char *read_buf;     /* owned: conn.c reads into it for any conn that holds
                           no unparsed input (cd_conn_t in), or NULL */
    cd_link_t servers;  /* Servers on this loop (each unlinks itself) */
    struct cd_pubsub_s *pubsub; /* owned: topics (pubsub.c), once attached */
    /* The wake-up (loop.c, cd_loop_wake): any thread ends uv_run. */
    uv_poll_t wake;          /* embedded: polls wake_fd */
    int wake_fd;             /* owned: an eventfd (elsewhere a pipe's read
                                end), or -1 */
    int wake_wfd;            /* owned: the pipe's write end, or wake_fd */
    atomic_int wake_pending; /* 1 from a wake-up until the loop reads it */
    atomic_int wake_writers; /* writes in flight without the GIL (close
                                waits for them before it closes wake_wfd) */
    /* Thread hops (hop.c).  The GIL guards these fields: every thread
     * that touches them runs Python code at that moment. */
    cd_hop_t *hops_head; /* strong: each queued hop, first to complete */
    cd_hop_t *hops_tail; /* borrowed: the last of hops_head's chain */
    int hops_out;        /* hops made and not done (policy.c reads it) */
    /* The loop thread's scheduling policy (policy.c). */
    cd_policy_t policy;
    pthread_t policy_thread; /* the thread `policy` describes */
    int policy_tid;          /* its kernel thread id */
    uint64_t hop_moved_ns;   /* uv_hrtime() when a hop last went out or
                                came back */
    /* Scheduling core (sched.c), set by sched_init(). */
    cd_readyq_t *ready_q; /* strong: the ready queue, also loop._ready */
    PyObject *aio_dict;   /* strong: the asyncio loop's __dict__, where its
                             attributes are read; NULL: read them with getattr */
    /* The dict watcher id + 1 that watches aio_dict (0: none), kept here
     * because the module state may be gone when a loop outlives its module
     * at interpreter exit. */
    int dict_watch;
    int dict_attaching; /* sched_attach_dict runs (it may set __dict__) */
    /* Whether the names the core reads live in aio_dict: 1 while the
     * loop's class has no data descriptor for any, found when the class
     * had the version tag dict_tag (0: check at every use). */
    unsigned int dict_tag;
    int dict_plain;
    cd_loop_attrs_t attrs; /* what was read from aio_dict (sched.c) */
    /* strong: Handles already run that nothing else held, cleared, for
     * call_soon to fill again instead of allocating (sched.c). */
    PyObject *spare_handles[CD_SPARE_HANDLES];
    int nspare;
    PyObject *spare_timers[CD_SPARE_TIMERS]; /* strong: TimerHandles, same */
    int nspare_timers;
    /* strong: 1-tuples (None) that released Handles' _args were and
     * nothing else holds, for the next call_soons' arguments (sched.c) */
    PyObject *spare_args[CD_SPARE_ARGS];
    int nspare_args;
    /* owned: CD_BLOCK_SIZE blocks whose writes are done, for the next
     * cd_conn_block(); freed when the loop closes (conn.c) */
    char *spare_blocks[CD_SPARE_BLOCKS];
    int nspare_blocks;
    Py_ssize_t timer_cancelled; /* loop._timer_cancelled_count */
    /* owned: loop._scheduled's items and their _when, in its order, so a
     * sift reads no timer; heap_len -1: made again at the next use. */
    cd_heap_ent_t *heap;
    Py_ssize_t heap_len;
    Py_ssize_t heap_cap;
    uint64_t heap_writes; /* cd_timer_when_writes() when the keys were read */
    PyObject *report;     /* strong: reports a callback's exception */
    /* strong: asyncio.events._ThreadSafeHandle where the running Python
     * has it (call_soon_threadsafe's handle, with a lock), or NULL */
    PyObject *ts_handle;
    PyObject *ts_rlock;     /* strong: what makes its _lock, or NULL */
    Py_ssize_t ts_lock_off; /* the offset of its _lock slot */
    PyObject *selector;     /* strong: the LibuvSelector over this core */
    /* strong: an asyncio.Future of aio_loop done with the result None,
     * which a RecvFuture hands to a Task's wake-up (recvfut.c), or NULL:
     * made by cd_sched_done_future */
    PyObject *done_fut;
    int closed;
    /* read_buf's bytes: the largest --read-size of its servers (conn.c). */
    size_t read_buf_size;
};

/* Retake the GIL if select() released it; every libuv callback that
 * touches a PyObject calls this first. */
static inline void
cd_gil_ensure(cd_loop_t *loop)
{
    if (loop->released != NULL) {
        PyThreadState *ts = loop->released;
        loop->released = NULL;
        PyEval_RestoreThread(ts);
    }
}

int cd_loop_type_init(PyObject *module, cd_state *st);
/* LibuvSelector.select(timeout) in C (a negative timeout blocks): new
 * reference to the list of (key, events) that _process_events takes, or
 * to None when there is none. */
PyObject *cd_loop_select(cd_loop_t *loop, PyObject *selector, double timeout);
/* Write out what every corked conn has queued (before each poll). */
void cd_loop_flush(cd_loop_t *loop);
/* The scheduler also flushes between two callbacks of a step once this
 * many conns have output queued: a turn that sends to many clients (a
 * chat room's broadcast) lets the first ones have theirs while it goes
 * on, instead of in one burst when it ends, which a client that answers
 * once it has them all would wait for.  Each flush may wake a client:
 * not at every send. */
#define CD_LOOP_FLUSH_BATCH 8
/* Queues a cycle whose application must start on the next dispatch.
 * Does not steal. */
int cd_loop_defer_start(cd_loop_t *loop, PyObject *cycle);
/* Ends the loop's current or next poll, from any thread that holds the
 * GIL (close() holds it too: the fd outlives every call); silent once the
 * loop is closed.  Coalesced: one write until the loop reads it. */
void cd_loop_wake(cd_loop_t *loop);
/* cd_loop_wake, with the GIL released around the write, as asyncio's
 * _write_to_self() (socket.send) releases it: the loop it wakes need not
 * wait for the GIL the caller holds.  The caller holds the GIL and no
 * borrowed state across the call (other threads run during it). */
void cd_loop_wake_release_gil(cd_loop_t *loop);
/* Logs the current exception with the "cdaphne" logger and clears it. */
void cd_log_exception(const char *msg);

/* ---- hop.c: thread -> loop wake-ups, run_in_executor completions --- */
int cd_hop_type_init(PyObject *module, cd_state *st);
/* Sets up loop->wake (before any uv_run). */
void cd_hop_loop_init(cd_loop_t *loop);
/* Completes the asyncio futures whose executor work finished since the
 * last call.  Runs on the loop's thread with the GIL, outside uv_run. */
void cd_hop_drain(cd_loop_t *loop);
/* Drops the hops still queued: their loop is closing (as asyncio drops a
 * result whose loop is closed).  loop->wake is closed by the walk. */
void cd_hop_loop_close(cd_loop_t *loop);
int cd_hop_loop_traverse(cd_loop_t *loop, visitproc visit, void *arg);
/* wakeup(): cd_loop_wake, from any thread (call_soon_threadsafe). */
PyObject *cd_hop_wakeup(cd_loop_t *loop, PyObject *unused);
/* hop(concurrent_future) -> asyncio future of the loop, completed on
 * the loop's thread when the concurrent one is done (wrap_future). */
PyObject *cd_hop_wrap(cd_loop_t *loop, PyObject *source);
/* run_in_executor(args[0], args[1], *args[2:]) for a ThreadPoolExecutor
 * that submit() need not see (hop.c's top comment): 1 with *out the new
 * asyncio future, 0 if the executor's submit() must run, -1 error. */
int cd_hop_submit(cd_loop_t *loop, PyObject *const *args, Py_ssize_t nargs,
                  PyObject **out);

/* ---- loopapi.c: BaseEventLoop methods without their Python frame ---- */
/* 1 if the asyncio loop aio is open and not in debug mode (and, if task,
 * has no task factory): BaseEventLoop's plain attributes read from its
 * dict; 0 if not (or not readable so), -1 with an exception. */
int cd_loopapi_plain(cd_loop_t *loop, int task);
/* create_task(coro, *, name=None, context=None). */
PyObject *cd_loopapi_create_task(cd_loop_t *loop, PyObject *const *args,
                                 size_t nargsf, PyObject *kwnames);
/* run_in_executor(executor, func, *args). */
PyObject *cd_loopapi_run_in_executor(cd_loop_t *loop, PyObject *const *args,
                                     size_t nargsf, PyObject *kwnames);

/* ---- loopmeth.c: LoopMethods, BaseEventLoop methods on the class -- */
int cd_loopmeth_type_init(PyObject *module, cd_state *st);
/* New reference: loop.create_future(), made as asyncio.Future(loop=loop)
 * directly when that is what the call would make (debug mode aside);
 * else the method is called. */
PyObject *cd_loopmeth_future_new(cd_state *st, PyObject *loop);
/* 1 when type(loop).<which> is LoopMethods' or asyncio's own and what
 * follows LoopMethods in its MRO is asyncio's (a C path may stand for the
 * call; the instance's own attributes are the caller's to check), 0 if
 * not, -1 on error. */
int cd_loopmeth_plain(cd_state *st, PyObject *loop, cd_lm_t which);
/* Borrowed: k.__dict__[name], or NULL (an exception set if the lookup
 * failed). */
PyObject *cd_loopmeth_own(PyTypeObject *k, PyObject *name);
/* Borrowed: the first definition of name in tp's MRO (no descriptor
 * called), or NULL (an exception set if the lookup failed). */
PyObject *cd_loopmeth_lookup(PyTypeObject *tp, PyObject *name);
/* Borrowed: the core of loop when loop.<which>(...) would run its C path
 * (the class keeps LoopMethods' method, no instance attribute replaces it,
 * the loop is the core's), for C callers that skip the method call; NULL
 * if not, with an exception set on error. */
cd_loop_t *cd_loopmeth_direct(cd_state *st, PyObject *loop, cd_lm_t which);
/* Drops the module's note of core (its dealloc). */
void cd_loopmeth_forget(cd_loop_t *core);
/* Gives tp a version tag if it has none (it stays 0 if it cannot have
 * one); name: any attribute, looked up through tp where CPython has no
 * call for it (3.11).  -1 with an exception on error. */
int cd_type_tag(PyTypeObject *tp, PyObject *name);
/* Copies the handle slot offsets for the timers' dealloc (cd_sched_init). */
void cd_timer_note_slots(const cd_handle_slots_t *o);
/* How many times Python code set a timer's _when so far (the loop writes
 * the slot itself): sched.c's copy of the heap's keys is read again when
 * this moved.  Read on every sift: a variable, not a call. */
extern uint64_t cd_timer_when_writes;
/* New reference: fn(self, *args, **kw), args as vectorcall passes them. */
PyObject *cd_loopmeth_call(PyObject *fn, PyObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);

/* ---- timer.c: the loop's timers (asyncio.TimerHandle subclass) ---- */
/* Imports asyncio's Handle and TimerHandle into st, makes Timer_type. */
int cd_timer_type_init(PyObject *module, cd_state *st);
/* New reference: an empty TimerHandle of tp (a freed one when it can). */
PyObject *cd_timer_alloc(PyTypeObject *tp);
/* Frees the timers kept for reuse (before st lets Timer_type go). */
void cd_timer_state_clear(cd_state *st);

/* ---- readyq.c: the loop's ready queue (loop._ready) --------------- */
int cd_readyq_type_init(PyObject *module, cd_state *st);
/* New reference: an empty queue. */
PyObject *cd_readyq_new(cd_state *st);
/* Appends h (a new reference is taken); -1 with MemoryError. */
int cd_readyq_push(cd_readyq_t *q, PyObject *h);
/* Appends h, whose reference it takes on success only (the caller's
 * reference moves without touching the object). */
int cd_readyq_push_steal(cd_readyq_t *q, PyObject *h);
/* New reference: the first handle, removed; NULL (no exception) if empty. */
PyObject *cd_readyq_pop(cd_readyq_t *q);
Py_ssize_t cd_readyq_len(cd_readyq_t *q);

/* ---- sched.c: call_soon and the run-once step -------------------- */
/* Imports asyncio's Handle, BaseEventLoop's methods and the slot offsets
 * into st. */
int cd_sched_init(cd_state *st);
/* Drops the dict watcher of cd_sched_init (module clear). */
void cd_sched_state_clear(cd_state *st);
PyObject *cd_sched_call_soon(cd_loop_t *core, PyObject *const *args,
                             size_t nargsf, PyObject *kwnames);
PyObject *cd_sched_call_soon_threadsafe(cd_loop_t *core, PyObject *const *args,
                                        size_t nargsf, PyObject *kwnames);
PyObject *cd_sched_call_at(cd_loop_t *core, PyObject *const *args,
                           size_t nargsf, PyObject *kwnames);
PyObject *cd_sched_call_later(cd_loop_t *core, PyObject *const *args,
                              size_t nargsf, PyObject *kwnames);
PyObject *cd_sched_step(cd_loop_t *core, PyObject *unused);
/* BaseEventLoop.get_debug(). */
PyObject *cd_sched_get_debug(cd_loop_t *core, PyObject *unused);
/* 1 if loop._debug is true, 0 if not, -1 on error (cached reads). */
int cd_sched_debug(cd_loop_t *core);
/* Borrowed: an asyncio.Future of the core's loop, done with the result
 * None (made at the first call and kept), or NULL with an exception. */
PyObject *cd_sched_done_future(cd_loop_t *core);
/* 1 when the loop's call_soon_threadsafe and _write_to_self are the
 * core's (class and instance): asyncio's run_in_executor completes its
 * future through both, so the C hops may wake the loop themselves; 0 if
 * not, -1 on error. */
int cd_sched_threadsafe_plain(cd_loop_t *core);
/* 1 when the loop is open and not in debug mode (and, if task, has no
 * task factory): what create_task and run_in_executor check before their
 * C paths; 0 if not, -1 on error.  Read through the step's cache (3.12+),
 * else from the loop's __dict__ or getattr. */
int cd_sched_loop_plain(cd_loop_t *core, int task);
/* 1 when no instance attribute of the loop replaces its method `which`
 * (for _timer_handle_cancelled and get_debug, from the step's cached
 * reads of the loop's __dict__ while they are current), 0 if one does or
 * the __dict__ is not read, -1 on error. */
int cd_sched_no_instance_attr(cd_loop_t *core, cd_lm_t which);
/* BaseEventLoop._timer_handle_cancelled(handle), which cancel() calls. */
PyObject *cd_sched_timer_cancelled(cd_loop_t *core, PyObject *h);
/* LoopCore.timer_cancelled_count: get and set. */
PyObject *cd_sched_get_cancelled(cd_loop_t *core, void *closure);
int cd_sched_set_cancelled(cd_loop_t *core, PyObject *v, void *closure);
/* sched_dict_replaced(): loop.__dict__ was assigned (the loop class's
 * __dict__ descriptor tells): the core reads and watches the new one. */
PyObject *cd_sched_dict_replaced(cd_loop_t *core, PyObject *unused);
PyObject *cd_sched_attach(cd_loop_t *core, PyObject *const *args,
                          Py_ssize_t nargs);
int cd_sched_loop_traverse(cd_loop_t *core, visitproc visit, void *arg);
/* closing: the loop closed (its __dict__ stays readable), else GC clear. */
void cd_sched_loop_clear(cd_loop_t *core, int closing);

/* ---- server.c ----------------------------------------------------- */

/* Settings copied from cdaphne.config.Config at Server() time. */
typedef struct {
    uint64_t max_body;           /* 0 = unlimited (Daphne's default) */
    size_t max_head;             /* request head bytes before 431 */
    unsigned max_headers;        /* header fields before 431, 0 = any */
    uint64_t header_timeout;     /* ms to read a request head */
    uint64_t keepalive_timeout;  /* ms idle between requests */
    uint64_t http_timeout;       /* ms before 503, 0 = none */
    uint64_t app_close_timeout;  /* ms an app may outlive its conn */
    size_t body_high_water;      /* stop reading above this much body */
    size_t write_high_water;     /* send() waits above this much queued */
    int limit_concurrency;       /* connections before 503, 0 = none */
    int max_running_requests;    /* HTTP apps at once on a busy core */
    int eager_tasks;             /* Task(eager_start=True) available */
    uint64_t ws_connect_timeout; /* ms to accept a WebSocket, 0 = none */
    uint64_t ws_timeout;         /* ms a WebSocket may live, 0 = forever */
    uint64_t ping_interval;      /* ms between server pings, 0 = none */
    uint64_t ping_timeout;       /* ms to wait for a pong */
    uint64_t ws_max_message;     /* bytes, 0 = unlimited (close 1009) */
    uint64_t ws_max_frame;       /* bytes, 0 = unlimited (close 1009) */
    int ws_deflate;              /* offer permessage-deflate answers */
    int ws_deflate_window_bits;  /* 9..15 (cd_deflate_limits_t) */
    int ws_deflate_mem_level;    /* 1..9 */
    uint64_t min_body_rate;    /* body bytes/s while the app waits, 0 = none */
    uint64_t body_rate_grace;  /* ms of waiting before the rate counts */
    uint64_t half_close_grace; /* ms an app has after the peer's FIN to
                                  start its response (http1.c) */
    uint64_t pubsub_max_queue; /* bytes queued for a subscriber, 0 = any */
    uint64_t pubsub_max_topics; /* topics one WebSocket may subscribe to */
    uint64_t pubsub_max_inbox;  /* publishes from threads waiting, 0 = any */
    uint64_t pubsub_max_inbox_bytes; /* their frames' bytes, 0 = any */
    size_t tls_read_size;            /* TLS ciphertext bytes per socket read */
    size_t read_size;                /* plain bytes per socket read */
} cd_config_t;

struct cd_listener_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } io;
    cd_server_t *server; /* borrowed: the server closes its listeners */
    PyObject *sockname;  /* strong: the scope's "server" value */
    const cd_transport_t *transport; /* borrowed: a static table for the
                                        conns it accepts, NULL: plain */
    PyObject *tls; /* strong: TLSContext its conns speak, or NULL */
    int is_unix;
    /** Accepts the connection held back for a less busy worker. */
    uv_timer_t resume;
    int held;             /* libuv holds an accepted fd for us (resume runs) */
    uint64_t others_seen; /* the others' connections when last looked */
    uint64_t stall_since; /* loop time: since then they took nothing */
    uint64_t last_wait;   /* loop time of the last wait */
    uint64_t greedy_until; /* loop time: accept all until then */
    int open_handles;      /* io, resume (and drop): freed when all closed */
    /** A connection we could not take (cd_conn_new failed before
     * uv_accept) is accepted into this handle and closed: libuv watches
     * the listening socket again only after a uv_accept. */
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } drop;
    int dropping; /* drop is open or closing: reused after its close */
    /** Out of file descriptors with libuv's spare one gone, libuv would
     * retry accept() at once, forever (uv__server_io): io is closed
     * instead, which ends that loop, and listens again on a copy of
     * spare_fd after a pause (listener_pause). */
    int spare_fd;           /* owned: a dup of the listening socket, or -1 */
    int backlog;            /* for listening again */
    int io_open;            /* io is open and not closing */
    int out_of_fds;         /* paused since the last connection accepted */
    const char *pipe_fname; /* owned while paused: the bound path, which
                               libuv would unlink on closing io */
};

/* The Python object Server: listeners, connections, the app. */
struct cd_server_s {
    PyObject_HEAD
    cd_state *st;             /* borrowed: the module outlives its types */
    cd_loop_t *loop;          /* strong */
    PyObject *app;            /* strong: ASGI 3 callable */
    PyObject *root_path;      /* strong: str */
    PyObject *lifespan_state; /* strong: dict or NULL */
    PyObject *action_logger;  /* strong: callable or NULL */
    PyObject *scheme;         /* strong: "http" or "https" */
    char *server_header;      /* owned: "server: x\r\n" or NULL */
    char *tls_rbuf;           /* owned: cfg.tls_read_size bytes, TLS socket
                                 reads land here (tls.c), or NULL until one */
    cd_config_t cfg;
    const cd_proto_t *first_proto; /* borrowed: a static table, what a
                                      conn speaks once ready (HTTP/1) */
    cd_listener_t **listeners;     /* owned array of owned listeners */
    int nlisteners;
    cd_link_t conns; /* every open connection */
    int nconns;
    int closing;            /* stop accepting, close idle conns */
    uint64_t requests;      /* served so far */
    uint64_t accept_drops;  /* connections closed at accept (no memory) */
    uint64_t accept_pauses; /* pauses for want of file descriptors */
    /* Test only (CDAPHNE_TEST_FAIL_CONN_NEW, off by default): the next N
     * cd_conn_new calls fail as if out of memory. */
    int test_fail_conn_new;
    /** Workers sharing a listening socket: one uint32 per worker, its
     * connections + 1 (0: not accepting), in memory they all map. */
    Py_buffer share; /* owned view (strong share.obj) when share_index >= 0 */
    int share_index; /* this worker's slot, -1: not sharing */

    cd_link_t loop_link; /* in loop->servers */
};

int cd_server_type_init(PyObject *module, cd_state *st);
/* New reference: (host, port) of an IPv4/IPv6 address. */
PyObject *cd_server_addr_tuple(const struct sockaddr_storage *ss);
void cd_server_log_action(cd_server_t *srv, const char *protocol,
                          const char *action, PyObject *details);
/* The loop is closing: close every listener and connection now. */
void cd_server_abort(cd_server_t *srv);

/* ---- conn.c: one accepted stream ---------------------------------- */

typedef enum {
    CD_CONN_HEAD,     /* reading a request head (or idle keep-alive) */
    CD_CONN_ACTIVE,   /* an HTTP request is with the app */
    CD_CONN_UPGRADED, /* a WebSocket owns the stream */
    CD_CONN_CLOSING,  /* uv_close called, waiting for callbacks */
} cd_conn_state_t;

enum {
    CD_CONN_F_READING = 1 << 0,     /* uv_read_start is active */
    CD_CONN_F_PAUSED = 1 << 1,      /* HTTP/1: llhttp paused at message end */
    CD_CONN_F_EOF = 1 << 2,         /* peer closed its side */
    CD_CONN_F_CLOSE_AFTER = 1 << 3, /* close once writes drain */
    CD_CONN_F_GOT_BYTES = 1 << 4,   /* HTTP/1: first byte of a head came */
    CD_CONN_F_CORKED = 1 << 5,      /* on loop->corked with output queued */
    CD_CONN_F_UNIX = 1 << 6,        /* a unix socket (io.pipe) */
    CD_CONN_F_LINGER = 1 << 7,      /* discarding input before the close */
    CD_CONN_F_SHUT_WR = 1 << 8,     /* uv_shutdown issued: no more writes */
    CD_CONN_F_BODY_WAIT = 1 << 9,   /* HTTP/1: the app waits for body */
    CD_CONN_F_SERVED = 1 << 10,     /* HTTP/1: a response completed */
    CD_CONN_F_HUP_INIT = 1 << 11,   /* hup and hup_fd exist */
    CD_CONN_F_TP_SHUT = 1 << 12,    /* the transport's shutdown ran */
    CD_CONN_F_OVER_LIMIT = 1 << 13, /* beyond --limit-concurrency */
    CD_CONN_F_HELD = 1 << 14,       /* reading held: our output is high */
    CD_CONN_F_WANT_READ = 1 << 15,  /* reading resumes when released */
    CD_CONN_F_WATCH_HUP = 1 << 16,  /* paused: c->hup watches the peer */
};

/* Output written during one loop turn, sent with one writev before the
 * loop polls again (pipelined responses share a syscall). */
typedef struct {
    uv_buf_t *bufs;  /* owned array */
    PyObject **keep; /* owned array of strong refs (or NULL entries) */
    char **owned;    /* owned array of owned blocks (or NULL entries) */
    int n;
    int cap;
} cd_outq_t;

/* The byte transport: what sits between the socket and the protocol
 * (TLS).  NULL on a plain conn, which costs nothing: reads land in c->in
 * and a flush writes c->outq as it is.  A transport keeps its state in
 * c->transport_data and owns a wire queue of the bytes it made (records,
 * handshake, alerts), which the flush writes instead of c->outq.  Its
 * hooks run with the GIL held, never after cd_conn_close. */
struct cd_transport_s {
    const char *name;
    /* At accept, before the first read: set c->transport_data (the
     * server's config is c->server, the listener's settings ls; ls may
     * close before the conn).  0, or a negative UV_E* to refuse the conn
     * (closed at once; free still runs). */
    int (*open)(cd_conn_t *c, cd_listener_t *ls);
    /* Where libuv reads the socket: a buffer of the transport's (libuv
     * calls read right after alloc, so one per loop will do). */
    void (*alloc)(cd_conn_t *c, uv_buf_t *buf);
    /* nread > 0 raw bytes arrived in buf->base.  Appends to c->in all the
     * plaintext they complete (never more than nread, so c->in grows as
     * a plain read would), calls cd_conn_ready() once the handshake is
     * done and cd_conn_want_flush() when it queued bytes of its own.
     * Returns 1 if c->in grew, 2 if it grew and then the peer said
     * goodbye (the bytes are parsed first), 0 if it needs more bytes,
     * UV_EOF when the peer said goodbye (close_notify: handled as the
     * peer's FIN), or another negative UV_E* to close the connection
     * now. */
    int (*read)(cd_conn_t *c, const uv_buf_t *buf, size_t nread);
    /* At each flush: encode what it can of c->outq (the protocol's
     * plaintext, with its keep/owned references) into the wire queue and
     * release those entries (cd_conn_outq_clear); what stays in c->outq
     * waits (before the handshake, say).  Returns the wire queue, or NULL
     * to close the connection. */
    cd_outq_t *(*encode)(cd_conn_t *c);
    /* Every queued byte is out and the conn is about to close or send
     * its FIN (lingering close): queue a last record (close_notify) into
     * the wire queue; returns 1 if it queued bytes (they are flushed
     * first), 0 if not.  Runs once; writes are refused afterwards. */
    int (*shutdown)(cd_conn_t *c);
    /* The conn is freed (its last close callback): free transport_data
     * (NULL if open failed). */
    void (*free)(cd_conn_t *c);
};

/* The protocol a connection speaks, above the transport: conn.c calls
 * only these hooks and names no protocol.  HTTP/1 (cd_http1_proto) is
 * installed when the conn is ready (cd_conn_ready: at accept, or once
 * TLS shook hands); the WebSocket upgrade swaps in cd_ws_proto
 * (cd_conn_set_proto).  libuv's read_cb, h2o's h2o_conn_callbacks_t.
 * Hooks run with the GIL held; all but free never after cd_conn_close. */
/* Where a conn stands, for graceful shutdown (cd_proto_t.activity). */
enum {
    CD_ACT_BUSY = 1 << 0,      /* counts in busy_connections: wait for it */
    CD_ACT_CLOSE_NOW = 1 << 1, /* no request with the app: close it first */
};

struct cd_proto_s {
    const char *name;
    /* The conn is ready: set c->proto_data.  0, or a negative UV_E*
     * (the conn closes). */
    int (*open)(cd_conn_t *c);
    /* c->in holds bytes that came (plaintext): parse them. */
    void (*on_read)(cd_conn_t *c);
    /* The peer closed its side or reset the conn while we read. */
    void (*on_eof)(cd_conn_t *c);
    /* c->timer fired (the lingering close keeps it otherwise). */
    void (*on_timeout)(cd_conn_t *c);
    /* Queued output drained below half the write high-water mark. */
    void (*on_drain)(cd_conn_t *c);
    /* cd_conn_close ran: tell the app its peer is gone. */
    void (*on_close)(cd_conn_t *c);
    /* The end of a graceful shutdown: close now, politely. */
    void (*shutdown)(cd_conn_t *c);
    /* The start of a graceful shutdown: begin to end what will not end
     * on its own (a WebSocket: close 1012).  NULL: nothing to do. */
    void (*stop)(cd_conn_t *c);
    /* CD_ACT_* bits; none: fresh (nothing read yet), left a moment. */
    int (*activity)(const cd_conn_t *c);
    /* The conn is freed (its last close callback): free proto_data and
     * drop c->cycle. */
    void (*free)(cd_conn_t *c);
    /* The conn came beyond --limit-concurrency: say the server is busy
     * (HTTP/1: 503) and close once that is written.  A server's first
     * protocol only (NULL in WebSocket's). */
    void (*refuse)(cd_conn_t *c);
};

/* A connection.  Owned by its server's list; freed in the last close
 * callback of its three handles. */
struct cd_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } io;
    uv_timer_t timer;    /* header, keep-alive or http timeout */
    cd_link_t link;      /* in server->conns */
    cd_link_t cork_link; /* in loop->corked while CD_CONN_F_CORKED */
    cd_outq_t outq;      /* owned: output not yet handed to libuv */
    cd_server_t *server; /* borrowed: closes every conn before dying */
    const cd_transport_t *transport; /* borrowed: a static table, or NULL
                                        on a plain conn */
    void *transport_data;            /* owned: the transport's free hook */
    const cd_proto_t *proto; /* borrowed: a static table, NULL until the
                                conn is ready */
    void *proto_data;        /* owned: the protocol's free hook */
    PyObject *sockname;      /* strong: the scope's "server" (a listener
                                can close and go first, at shutdown) */
    cd_conn_state_t state;
    unsigned flags;
    int open_handles; /* free the conn when this reaches 0 */
    int writes_in_flight;
    size_t write_queued;  /* bytes handed to uv_write, not yet done */
    size_t inflight_bufs; /* buffers handed to uv_write, not yet done
                             (pubsub.c counts them against its bound) */
    cd_buf_t in;          /* owned: bytes read, not yet parsed */
    PyObject *client;     /* strong: (host, port) or None */
    cd_cycle_t *cycle;    /* strong: the request or WebSocket with the app */

    /* Lingering close (conn.c cd_conn_linger_after_writes). */
    size_t linger_bytes; /* input discarded while lingering */

    /* A second timer for the protocol (HTTP/1: the minimum body rate). */
    uv_timer_t proto_timer;

    /* The peer's FIN or RST while reading is paused or held:
     * a poll of a dup of the socket, since libuv takes one watcher per
     * fd.  Made on the first pause or hold; closed with the conn. */
    uv_poll_t hup;
    int hup_fd; /* owned: the dup, while CD_CONN_F_HUP_INIT */
};

cd_conn_t *cd_conn_new(cd_listener_t *ls);
/* Queues bufs for the flush before the next poll.  `keep` (borrowed,
 * may be NULL) is INCREF'd while the data is queued; `owned` (may be
 * NULL) is freed once the data is sent. */
int cd_conn_write(cd_conn_t *c, uv_buf_t *bufs, int nbufs, PyObject *keep,
                  char *owned);
/* A block of CD_BLOCK_SIZE bytes from the loop's spares (else malloc), or
 * NULL; owned by the caller until cd_conn_write_block takes it. */
char *cd_conn_block(cd_conn_t *c);
/* cd_conn_write of the first len bytes of block (from cd_conn_block),
 * which goes back to the loop's spares once sent.  Steals block. */
int cd_conn_write_block(cd_conn_t *c, char *block, size_t len);
/* Frees the loop's spare blocks (loop.c, at close). */
void cd_conn_blocks_free(cd_loop_t *loop);
void cd_conn_close(cd_conn_t *c);
/* Close once every queued write is done. */
void cd_conn_close_after_writes(cd_conn_t *c);
/* Lingering close: once every queued write is done, shut down the write
 * side, discard input for a bounded time and size, then close (a client
 * still sending reads the response instead of an RST). */
void cd_conn_linger_after_writes(cd_conn_t *c);
void cd_conn_read_start(cd_conn_t *c);
void cd_conn_read_stop(cd_conn_t *c);
/* Stops reading for backpressure, yet still notices the peer leaving (its
 * FIN behind unread data, or an RST), which ends the conn as an EOF does
 * while reading.  cd_conn_read_start or _stop ends the pause. */
void cd_conn_read_pause(cd_conn_t *c);
/* Stop reading while the conn's queued output is above
 * --write-buffer-size because of bytes the server made itself for a
 * peer that never reads (TLS alerts and handshake records, WebSocket
 * pongs).  The protocol's read_start and _stop still say whether it
 * wants to read; reading resumes, if it does, once the output drains
 * below half the mark.  Meanwhile the peer leaving is still seen (its
 * FIN is an EOF, a reset closes), and the conn's timers run on. */
void cd_conn_read_hold(cd_conn_t *c);
void cd_conn_timer_start(cd_conn_t *c, uint64_t ms);
void cd_conn_timer_stop(cd_conn_t *c);
/* Writes that drained below the high-water mark. */
void cd_conn_on_drain(cd_conn_t *c);
void cd_conn_flush(cd_conn_t *c);
/* The transport is ready for the protocol (plain: at accept; TLS: once
 * its handshake is done): the server's first protocol starts. */
void cd_conn_ready(cd_conn_t *c);
/* Hands the conn over to another protocol (the WebSocket upgrade); the
 * old one freed its own proto_data.  c->in and c->cycle stay. */
void cd_conn_set_proto(cd_conn_t *c, const cd_proto_t *proto, void *data);
/* CD_ACT_* bits for graceful shutdown: the protocol's, without
 * CD_ACT_CLOSE_NOW while the conn finishes a close of its own. */
int cd_conn_activity(const cd_conn_t *c);
/* The end of a graceful shutdown: the protocol closes (WebSocket 1012). */
void cd_conn_shutdown(cd_conn_t *c);
/* The server stops: the protocol's stop hook, if any. */
void cd_conn_stop(cd_conn_t *c);
/* For transports: have the conn flushed before the loop polls again,
 * even if the protocol queued nothing (handshake records, alerts). */
void cd_conn_want_flush(cd_conn_t *c);
/* For transports: release every entry of c->outq (its references go)
 * once encode copied them; keeps c->write_queued right. */
void cd_conn_outq_clear(cd_conn_t *c);
/* For transports: append bytes to a wire queue; `owned` (may be NULL)
 * is freed once they are sent, `keep` (borrowed, may be NULL) INCREF'd
 * meanwhile.  Counts them in c->write_queued.  0 or UV_ENOMEM (then
 * `owned` is freed). */
int cd_conn_wire_push(cd_conn_t *c, cd_outq_t *wire, uv_buf_t *bufs, int nbufs,
                      PyObject *keep, char *owned);
/* For transports: release every entry of a wire queue and its arrays
 * (in the free hook). */
void cd_conn_wire_dispose(cd_outq_t *wire);

/* ---- transport.c: the "copy" test transport ----------------------- */
/* The transport CDAPHNE_TEST_TRANSPORT=copy asks for, else NULL. */
const cd_transport_t *cd_transport_test(void);

/* ---- http1.c: llhttp glue ----------------------------------------- */
/* The protocol a conn speaks first (server->first_proto). */
extern const cd_proto_t cd_http1_proto;
/* A response finished: next request, or close. */
void cd_http1_response_done(cd_conn_t *c, int keep_alive);
/* The app waits in receive() for a body that has not come: send
 * "100 Continue" if the client asked for it and nothing was sent. */
void cd_http1_continue(cd_cycle_t *cy);
/* Writes a body message of the cycle's response (the head first, from
 * cy->status and cy->resp_headers), framed as the head says (length,
 * chunks, or the close); moves cy->resp on.  body: bytes, borrowed and
 * kept alive until written.  0 written, 1 nothing to write to (the conn
 * is gone), -1 with an exception (ValueError, RuntimeError for a body
 * longer than its content-length: then nothing was written). */
int cd_http1_write_body(cd_cycle_t *cy, PyObject *body, int more_body);
/* Whether the conn may serve another request after this response. */
int cd_http1_keep_alive(const cd_cycle_t *cy);
/* Writes a whole simple response (400, 431, 503...) and closes. */
void cd_http1_simple_response(cd_conn_t *c, int status, const char *body);
/* The app starts (1) or stops (0) waiting in receive() for request body
 * bytes: the minimum body rate is measured over that time only. */
void cd_http1_body_wait(cd_conn_t *c, int waiting);
const char *cd_http1_reason(int status);
size_t cd_http1_date(char *out);

/* The response head writer: the one place that writes a head, for
 * http.response.start (cycle.c), the 101 handshake (websocket.c) and the
 * server's own responses (cd_http1_simple_response).  http1.c owns the
 * wire format and every check on what the app gave; the caller owns the
 * output buffer and the header list, and copies the decisions the writer
 * makes (framing, keep-alive) into its own state.  A pure function of
 * its arguments: no connection, no server, callable from a fuzz target.
 * Needs the GIL (it reads Python bytes). */
typedef struct {
    /* In. */
    int status;                /* 100..999, else ValueError */
    int http10;                /* the request was HTTP/1.0 */
    int is_head;               /* the request was HEAD: no body follows */
    int upgrade;               /* a 101 handshake: no body framing and no
                                  connection header of ours */
    int final;                 /* the first body message is the last */
    uint64_t first_len;        /* that message's length, when final */
    const char *server_header; /* borrowed: "server: x\r\n", or NULL;
                                  left out if the app sent a server */
    const char *fixed;         /* borrowed: lines the server writes right
                                  after the status line (each ending in
                                  CRLF, already safe), or NULL */
    size_t fixed_len;
    /* In and out. */
    int keep_alive; /* in: the request allows it and the server is not
                       closing; out: the conn may stay open */
    /* Out. */
    int chunked;            /* 1: chunked, and we said so; 2: the app sent
                               transfer-encoding, we frame in chunks */
    int add_length;         /* we wrote content-length: first_len */
    int64_t content_length; /* the body's length, -1 if unknown */
} cd_http1_head_t;

/* New reference: `headers` (an iterable of pairs; NULL or None for none)
 * read exactly once into a new list of (bytes, bytes) tuples.  TypeError
 * for an item that is not a pair of bytes, ValueError for a name that is
 * not an RFC 9110 token or a value holding a control character other
 * than HTAB; the messages name the header. */
PyObject *cd_http1_head_headers(PyObject *headers);
/* 1 if a value has no control character but HTAB (for values that are
 * not in a list, such as the subprotocol). */
int cd_http1_head_value_ok(const char *p, size_t n);
/* Appends a whole head (status line to the empty line) to out through
 * its checked growth.  `headers` (borrowed, may be NULL) must come from
 * cd_http1_head_headers.  0, or -1 with ValueError (bad or conflicting
 * content-length, transfer-encoding not ending in chunked, or status)
 * or MemoryError; out then holds a partial head to dispose. */
int cd_http1_head_write(cd_buf_t *out, cd_http1_head_t *h, PyObject *headers);

/* ---- scope.c ------------------------------------------------------ */
/* What the protocol parsed of a request, for its scope. */
typedef struct {
    const char *url; /* borrowed: the request target (NULL: "/") */
    size_t url_len;
    int http10;
    int method;                 /* llhttp_method_t */
    int websocket;              /* a WebSocket handshake */
    PyObject *headers;          /* borrowed: list of (name, value) */
    PyObject *root_path_header; /* borrowed: Daphne-Root-Path or NULL */
} cd_scope_req_t;

int cd_scope_init(cd_state *st);
/* New reference: the scope dict of a request on c. */
PyObject *cd_scope_http(cd_conn_t *c, const cd_scope_req_t *req);

/* ---- cycle.c: one HTTP request/response or WebSocket with the app -- */

/* How the app's task ended (its exception, if any, is logged). */
typedef enum {
    CD_TASK_RETURNED,
    CD_TASK_RAISED, /* or the app could not be started */
    CD_TASK_CANCELLED,
    CD_TASK_UNKNOWN, /* task.exception() itself failed */
} cd_task_end_t;

/* What a cycle does that depends on its protocol: HTTP's table is in
 * cycle.c (set by cd_cycle_new), the WebSocket handshake swaps in
 * websocket.c's.  cycle.c talks ASGI through it and never asks which
 * one it has. */
typedef struct {
    const char *name;
    /* receive() was called, before its awaitable is made (HTTP: 100
     * Continue); NULL for nothing. */
    void (*receive)(cd_cycle_t *cy);
    /* send(msg): new reference to what send() returns (an awaitable),
     * or NULL with an exception. */
    PyObject *(*send)(cd_cycle_t *cy, PyObject *msg);
    /* New reference: the next message for receive(), or NULL without an
     * exception when there is none yet. */
    PyObject *(*next_message)(cd_cycle_t *cy);
    /* Whether next_message would return a message. */
    int (*has_message)(cd_cycle_t *cy);
    /* The peer is gone (once; cy->disconnected is set): wake the app. */
    void (*on_disconnect)(cd_cycle_t *cy);
    /* The app's task ended, or it could not start (CD_TASK_RAISED). */
    void (*on_task_done)(cd_cycle_t *cy, cd_task_end_t end);
    /* The cycle is freed: free the protocol's state; NULL for none. */
    void (*free)(cd_cycle_t *cy);
} cd_cycle_ops_t;

typedef enum {
    CD_RESP_START, /* nothing sent */
    CD_RESP_HEAD,  /* http.response.start received, head not written */
    CD_RESP_BODY,  /* head sent, more body to come */
    CD_RESP_DONE,
} cd_resp_state_t;

typedef enum {
    CD_ADMIT_NEW = 0,  /* not looked at (and never for a WebSocket) */
    CD_ADMIT_WAITING,  /* on the loop's waiting list */
    CD_ADMIT_RUNNING,  /* holds one of the loop's slots */
    CD_ADMIT_DONE,     /* gave its slot back */
    CD_ADMIT_ANSWERED, /* answered (503, 408, 400) before its app started:
                          the app never starts */
} cd_admit_state_t;

struct cd_cycle_s {
    PyObject_HEAD
    const cd_cycle_ops_t *ops; /* borrowed: a static table */
    cd_ws_t *ws;            /* owned: WebSocket state, WebSocket cycles only */
    cd_state *st;           /* borrowed */
    cd_server_t *server;    /* strong */
    cd_conn_t *conn;        /* borrowed: NULL once detached */
    PyObject *scope;        /* strong */
    PyObject *task;         /* strong: the app's Task, or NULL */
    PyObject *recv_fut;     /* strong: a receive() waiting, or NULL */
    PyObject *send_fut;     /* strong: a send() waiting to drain */
    PyObject *waiter;       /* strong: the last receive() waiter, which the
                               next reuses once nothing else holds it */
    PyObject *spare_fut[2]; /* strong: the last receive futures, done,
                               which later ones reuse once nothing else
                               holds them (cycle.c), or NULL */
    /* Messages made by cd_cycle_message (cycle.c), for receive(): */
    PyObject *sent_msg[2];  /* strong: the last two, which the app may
                               still hold, or NULL */
    PyObject *sent_type[2]; /* borrowed (module state): their "type" */
    PyObject *sent_key[2];  /* borrowed (module state): their payload key */
    PyObject *sent_val[2];  /* strong: their payloads, or NULL */
    PyObject *free_msg;     /* strong: one the app let go of as it was made,
                               for the next to be made in, or NULL */
    PyObject *free_type;    /* borrowed (module state) */
    PyObject *free_key;     /* borrowed (module state) */
    cd_buf_t body;          /* owned: request body not yet received */
    int body_complete;      /* llhttp finished the request */
    int body_delivered;     /* the last http.request went out */
    int disconnected;
    int disconnect_delivered; /* receive() returned the disconnect: later
                                 ones wait (Daphne delivers it once) */
    int continue_sent;
    int fin_told; /* the peer's FIN is a disconnect for receive() now
                     (http1.c fin_grace_arm) */
    int expect_continue;
    int http10;
    int is_head;
    int keep_alive;
    cd_resp_state_t resp;
    PyObject *close_handle; /* strong: call_later handle, or NULL */
    int close_timeout_due;  /* asked for before the task existed */
    cd_admit_state_t admit; /* where the request is in admit.c */
    uint64_t waiting_since; /* uv_now() when it began to wait */
    int status;
    int chunked;
    int64_t content_length; /* -1 unknown */
    uint64_t sent;          /* body bytes sent */
    PyObject *resp_headers; /* strong: from http.response.start */
    uint64_t start_ns;
    struct cd_pubsub_sub_s *pubsub; /* owned: topics subscribed (pubsub.c) */
    unsigned long thread; /* the loop's, where receive() and send() may run */
};

int cd_cycle_type_init(PyObject *module, cd_state *st);
/* New reference: an HTTP cycle for a request on c (the WebSocket
 * handshake turns it into a WebSocket one). */
cd_cycle_t *cd_cycle_new(cd_conn_t *c, PyObject *scope);
/* 1 if cy has HTTP's operations (not a WebSocket). */
int cd_cycle_is_http(const cd_cycle_t *cy);

/* policy.c: SCHED_BATCH for the loop's thread while thread hops are out */
void cd_policy_ask(cd_loop_t *loop);
void cd_policy_hop_out(cd_loop_t *loop);
void cd_policy_hops_back(cd_loop_t *loop);
void cd_policy_before_sleep(cd_loop_t *loop);
void cd_policy_close(cd_loop_t *loop);

/* admit.c */
int cd_admit_init(cd_loop_t *loop);
void cd_admit_clear(cd_loop_t *loop);
void cd_admit_set_limit(cd_loop_t *loop, int limit);
/* 1: start cy now; 0: it waits (the loop holds it); -1 with an exception */
int cd_admit_start(cd_loop_t *loop, cd_cycle_t *cy);
/* cy's app is done (or never ran): its slot goes to the next waiting. */
void cd_admit_done(cd_cycle_t *cy);
/* cy was answered before its app started: the app never starts, and cy
 * leaves the waiting list or gives back the slot it was let in with. */
void cd_admit_withdraw(cd_cycle_t *cy);
/* The select() timeout while requests wait: their checks need a turn. */
double cd_admit_timeout(cd_loop_t *loop, double timeout);
/* After a poll: lets waiting requests in if the core was not busy, or the
 * first has waited too long.  -1 with an exception. */
int cd_admit_after_poll(cd_loop_t *loop);
/* The stop: every waiting request starts now. */
int cd_admit_all(cd_loop_t *loop);
/* Start the app for a cycle (called from the loop's dispatch). */
int cd_cycle_start(PyObject *cycle);
void cd_cycle_on_body(cd_cycle_t *cy);
void cd_cycle_on_disconnect(cd_cycle_t *cy);
/* Protocol hooks shared by HTTP/1 and WebSocket, for c->cycle: the conn
 * drained (wake a send()), closed (tell the app), is freed (drop it). */
void cd_cycle_conn_on_drain(cd_conn_t *c);
void cd_cycle_conn_on_close(cd_conn_t *c);
void cd_cycle_conn_release(cd_conn_t *c);
void cd_cycle_on_timeout(cd_cycle_t *cy);
/* Resolve fut with result (both borrowed) unless fut is done. */
int cd_future_resolve(cd_state *st, PyObject *fut, PyObject *result);
/* 1 if fut is done (or cancelled), 0 if not, -1 with an exception. */
int cd_future_done(cd_state *st, PyObject *fut);
/* New reference: a loop future. */
PyObject *cd_future_new(cd_server_t *srv);

/* Respond to a request the app can no longer answer (HTTP only). */
int cd_cycle_response_start(cd_cycle_t *cy, PyObject *msg);
int cd_cycle_response_body(cd_cycle_t *cy, PyObject *msg);
void cd_cycle_respond_error(cd_cycle_t *cy, int status, const char *body);
void cd_cycle_arm_close_timeout(cd_cycle_t *cy);
/* Borrowed: msg["type"] of a send(); NULL with an exception if msg is
 * not a dict with a type. */
PyObject *cd_cycle_message_type(cd_state *st, PyObject *msg);
int cd_cycle_type_is(PyObject *type, PyObject *name);
int cd_cycle_type_is_seen(PyObject *type, PyObject *name, PyObject **seen);
/* New reference: what send() returns, a waiter that waits for the
 * socket to drain if `open` and too much output is queued. */
PyObject *cd_cycle_send_done(cd_cycle_t *cy, int open);
/* Lets the futures kept for later receive()s go. */
void cd_cycle_drop_spares(cd_cycle_t *cy);
PyObject *cd_cycle_message(cd_cycle_t *cy, PyObject *template, PyObject *type,
                           PyObject *key, PyObject *value, size_t len);
/* Wake a waiting receive() if there is a message for it. */
void cd_cycle_wake_receiver(cd_cycle_t *cy);
/* New reference: the next message for receive() (HTTP or WebSocket), or
 * NULL without an exception when there is none yet. */
PyObject *cd_cycle_take_message(cd_cycle_t *cy);
/* New reference: the pending future a waiting receive() yields (a new
 * one if the last was cancelled). */
PyObject *cd_cycle_recv_future(cd_cycle_t *cy);
/* New reference: what receive() returns, for HTTP and WebSocket. */
PyObject *cd_cycle_receive_waiter(cd_cycle_t *cy);
/* Let a send() waiting for the socket to drain go on. */
void cd_cycle_wake_sender(cd_cycle_t *cy);
/* NULL with RuntimeError: what() (receive or send) awaited off the
 * loop's thread. */
PyObject *cd_cycle_off_thread(const char *what);
void cd_cycle_log_access(cd_cycle_t *cy, int status);

/* ---- websocket.c: the handshake, wslay, ASGI websocket events ------ */
/* The protocol of an upgraded conn (HTTP/1 hands over to it). */
extern const cd_proto_t cd_ws_proto;
/* At headers complete of a GET: checks the handshake request and turns
 * the conn's cycle into a WebSocket one; returns an HTTP status to
 * refuse it with, or 0. */
int cd_ws_begin(cd_conn_t *c, cd_cycle_t *cy);
/* For pubsub.c: -1 before the accept, 0 while open, 1 once closing. */
int cd_ws_phase(cd_cycle_t *cy);
const char *cd_ws_state_of(cd_cycle_t *cy);
/* Writes a whole prepared frame (borrowed bytes, kept while queued)
 * after wslay's pending output; nothing unless open. */
void cd_ws_write_prepared(cd_cycle_t *cy, PyObject *frame);
/* Closes an open WebSocket with code and reason. */
void cd_ws_close_with(cd_cycle_t *cy, int code, const char *reason);

/* ---- pubsub.c: cdaphne.pubsub topics and the fan-out --------------- */
/* The loop's registry, made when asyncio attaches (on the loop thread);
 * detach drops every subscription and closes it with the loop. */
int cd_pubsub_attach(cd_loop_t *loop);
void cd_pubsub_detach(cd_loop_t *loop);
/* Fans out what other threads published since the last call (select(),
 * after uv_run, with the GIL; cheap when nothing waits). */
void cd_pubsub_drain(cd_loop_t *loop);
/* The bounds of the loop's inbox of publishes from other threads, from a
 * server's config (0: none; config.py's defaults until a server sets
 * them).  The server's loop becomes the one publish() goes to. */
void cd_pubsub_set_inbox_limits(cd_loop_t *loop, uint64_t max_items,
                                uint64_t max_bytes);
/* A send() of type `type`: 1 if it was a cdaphne.pubsub.* message and
 * went well, 0 if it is not one, -1 with an exception. */
int cd_pubsub_on_send(cd_cycle_t *cy, PyObject *type, PyObject *msg);
/* The WebSocket is gone: unsubscribe it from everything. */
void cd_pubsub_drop(cd_cycle_t *cy);
/* The module functions pubsub_publish, pubsub_stats, pubsub_set_hooks. */
PyObject *cd_pubsub_publish_fn(PyObject *module, PyObject *const *args,
                               Py_ssize_t nargs);
PyObject *cd_pubsub_stats_fn(PyObject *module, PyObject *unused);
PyObject *cd_pubsub_set_hooks_fn(PyObject *module, PyObject *const *args,
                                 Py_ssize_t nargs);

/* ---- deflate.c: permessage-deflate (RFC 7692) --------------------- */

/* The server's bounds on one WebSocket's zlib state (config.py). */
typedef struct {
    int window_bits; /* 9..15: the largest LZ77 window, ours and the
                        peer's when it lets us choose */
    int mem_level;   /* 1..9: zlib's memLevel for our compressor */
} cd_deflate_limits_t;

/* What an accepted offer settled. */
typedef struct {
    int server_bits;        /* our compressor's window, 9..15 */
    int client_bits;        /* the peer's window, 8..15 */
    int server_no_takeover; /* we reset our compressor per message */
    int client_no_takeover; /* the peer resets; so do we, to inflate */
    int say_server_bits;    /* put server_max_window_bits in the reply */
    int say_client_bits;    /* put client_max_window_bits in the reply */
} cd_deflate_params_t;

typedef struct cd_deflate_s cd_deflate_t;

/* Reads one Sec-WebSocket-Extensions value: 1 and *p filled for the
 * first permessage-deflate offer we can accept, 0 if none (an unknown,
 * repeated or bad parameter declines its offer; a broken list declines
 * the rest of it). */
int cd_deflate_negotiate(const char *value, size_t n,
                         const cd_deflate_limits_t *lim,
                         cd_deflate_params_t *p);
/* Appends "sec-websocket-extensions: permessage-deflate...\r\n" for
 * what d was made with. */
int cd_deflate_response(const cd_deflate_t *d, cd_buf_t *out);
/* The streams are made on first use: an idle connection holds only this
 * struct.  NULL when out of memory. */
cd_deflate_t *cd_deflate_new(const cd_deflate_params_t *p, int mem_level);
void cd_deflate_free(cd_deflate_t *d);
/* Appends the inflated message (data without its 00 00 ff ff tail) to
 * out, an empty buffer.  UV_EMSGSIZE as soon as it passes max bytes (out
 * never holds more than max + 1), UV_EINVAL for bad data, UV_ENOMEM. */
int cd_deflate_inflate(cd_deflate_t *d, const char *data, size_t n, size_t max,
                       cd_buf_t *out);
/* Fills out, an empty buffer, with `headroom` bytes left for the frame
 * header and then the compressed message, its tail stripped. */
int cd_deflate_compress(cd_deflate_t *d, const char *data, size_t n,
                        size_t headroom, cd_buf_t *out);

/* ---- waiter.c: the awaitable returned by receive()/send() --------- */
int cd_waiter_type_init(PyObject *module, cd_state *st);
/* New reference: a waiter that waits on fut (stolen). */
PyObject *cd_waiter_pending(cd_state *st, PyObject *fut);
/* New reference: a receive() waiter that takes its message from cy
 * when first awaited, or when the cycle's receive future (which only
 * signals) completes. */
PyObject *cd_waiter_receive(cd_state *st, cd_cycle_t *cy);
/* Lets go of the message the last receive() returned in the spare
 * StopIteration (3.12+) once nothing else holds that. */
void cd_waiter_drop_returned(cd_state *st);

/* ---- recvfut.c: the future a waiting receive() yields ------------ */
int cd_rfut_type_init(PyObject *module, cd_state *st);
int cd_rfut_check(cd_state *st, PyObject *o);
/* New reference: a pending one of loop. */
PyObject *cd_rfut_new(cd_state *st, PyObject *loop);
/* Whether only its owner holds it (it may be made pending again). */
int cd_rfut_unheld(PyObject *f);
/* Makes an unheld one pending again, for loop. */
void cd_rfut_reset(PyObject *f, PyObject *loop);
/* Drops the owner's reference (f may be NULL). */
void cd_rfut_release(PyObject *f);
int cd_rfut_done(PyObject *f);
/* Completes it with None and schedules its callbacks (nothing if done
 * already); -1 with an exception if one could not be scheduled. */
int cd_rfut_set_result(PyObject *f);
/* New reference: its result(), or NULL with CancelledError or
 * InvalidStateError. */
PyObject *cd_rfut_result(PyObject *f);
void cd_rfut_set_blocking(PyObject *f);
/* Whether its cancel() came from the Task.cancel() of a task waiting on
 * it (else the app cancelled it itself). */
int cd_rfut_cancelled_by_task(PyObject *f);

/* ---- tls.c: OpenSSL over memory BIOs ------------------------------ */
/* The Python type TLSContext (a server SSL_CTX from the config). */
int cd_tls_type_init(PyObject *module, cd_state *st);
/* cd_tls_read: the peer's close_notify arrived. */
#define CD_TLS_EOF 1
/* A new engine for one connection; keeps `context` (a TLSContext)
 * alive.  NULL when out of memory. */
cd_tls_t *cd_tls_new(PyObject *context);
void cd_tls_free(cd_tls_t *t);
/* Ciphertext from the socket (copied).  0 or UV_ENOMEM. */
int cd_tls_feed(cd_tls_t *t, const char *data, size_t n);
/* Ciphertext fed but not yet decrypted. */
size_t cd_tls_in_pending(const cd_tls_t *t);
/* Runs the handshake, then decrypts into out at most `room` bytes.  0
 * (wants more ciphertext, or room ran out), CD_TLS_EOF, or a negative
 * UV_E* error: fatal, close (after sending cd_tls_take_out's alert). */
int cd_tls_read(cd_tls_t *t, cd_buf_t *out, size_t room);
/* Gives back the memory BIOs' room once they are empty (OPEN only). */
void cd_tls_trim(cd_tls_t *t);
/* Plaintext or ciphertext is left for another cd_tls_read. */
int cd_tls_has_plaintext(const cd_tls_t *t);
/* We can send: the handshake completed, and no error and no close_notify
 * of ours since (the peer's may have come). */
int cd_tls_is_open(const cd_tls_t *t);
/* The handshake completed (whatever happened since). */
int cd_tls_handshake_done(const cd_tls_t *t);
/* Encrypts n plaintext bytes (copied) into the output.  0, UV_EAGAIN
 * during the handshake, or a fatal error. */
int cd_tls_write(cd_tls_t *t, const char *data, size_t n);
/* Ciphertext waiting to go to the socket (records, alerts, tickets). */
size_t cd_tls_out_pending(const cd_tls_t *t);
/* Owned (free()): all pending ciphertext, its length in *n; NULL when
 * there is none or memory ran out (*n == 0). */
char *cd_tls_take_out(cd_tls_t *t, size_t *n);
/* Queues our close_notify (once the handshake is done). */
void cd_tls_shutdown(cd_tls_t *t);
/* New reference: the ASGI "tls" scope extension (server_cert,
 * client_cert_chain, client_cert_name, client_cert_error, tls_version,
 * cipher_suite, and server_name: the SNI the client sent, or None). */
PyObject *cd_tls_info(cd_tls_t *t);
/* The transport of a TLS listener's conns (ls->tls is the context). */
extern const cd_transport_t cd_tls_transport;
/* 1 if c speaks TLS (scheme https/wss). */
static inline int
cd_tls_conn_is_tls(const cd_conn_t *c)
{
    return c->transport == &cd_tls_transport;
}
/* New reference: the ASGI "tls" extension of a TLS conn; NULL with an
 * exception on error, NULL without one for a plain conn. */
PyObject *cd_tls_conn_info(cd_conn_t *c);

#endif
