/* Module state of _cdaphne: types, interned strings, imported callables. */
#ifndef CD_STATE_H
#define CD_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Interned str keys and constant values, built once at exec time.
 * X(field, "text") */
#define CD_STRINGS(X)                                                         \
    X(s_type, "type")                                                         \
    X(s_asgi, "asgi")                                                         \
    X(s_version, "version")                                                   \
    X(s_spec_version, "spec_version")                                         \
    X(s_http_version, "http_version")                                         \
    X(s_method, "method")                                                     \
    X(s_scheme, "scheme")                                                     \
    X(s_path, "path")                                                         \
    X(s_raw_path, "raw_path")                                                 \
    X(s_query_string, "query_string")                                         \
    X(s_root_path, "root_path")                                               \
    X(s_headers, "headers")                                                   \
    X(s_client, "client")                                                     \
    X(s_server, "server")                                                     \
    X(s_state, "state")                                                       \
    X(s_extensions, "extensions")                                             \
    X(s_subprotocols, "subprotocols")                                         \
    X(s_subprotocol, "subprotocol")                                           \
    X(s_body, "body")                                                         \
    X(s_more_body, "more_body")                                               \
    X(s_status, "status")                                                     \
    X(s_trailers, "trailers")                                                 \
    X(s_bytes, "bytes")                                                       \
    X(s_text, "text")                                                         \
    X(s_code, "code")                                                         \
    X(s_reason, "reason")                                                     \
    X(s_http, "http")                                                         \
    X(s_https, "https")                                                       \
    X(s_websocket, "websocket")                                               \
    X(s_ws, "ws")                                                             \
    X(s_wss, "wss")                                                           \
    X(s_http_request, "http.request")                                         \
    X(s_http_disconnect, "http.disconnect")                                   \
    X(s_http_response_start, "http.response.start")                           \
    X(s_http_response_body, "http.response.body")                             \
    X(s_ws_connect, "websocket.connect")                                      \
    X(s_ws_accept, "websocket.accept")                                        \
    X(s_ws_receive, "websocket.receive")                                      \
    X(s_ws_send, "websocket.send")                                            \
    X(s_ws_close, "websocket.close")                                          \
    X(s_ws_disconnect, "websocket.disconnect")                                \
    X(s_ws_http_response_start, "websocket.http.response.start")              \
    X(s_ws_http_response_body, "websocket.http.response.body")                \
    X(s_ws_http_response, "websocket.http.response")                          \
    X(s_v1_0, "1.0")                                                          \
    X(s_v1_1, "1.1")                                                          \
    X(s_v2_3, "2.3")                                                          \
    X(s_v3_0, "3.0")                                                          \
    X(s_empty, "")                                                            \
    X(s_GET, "GET")                                                           \
    X(s_POST, "POST")                                                         \
    X(s_HEAD, "HEAD")                                                         \
    X(s_PUT, "PUT")                                                           \
    X(s_DELETE, "DELETE")                                                     \
    X(s_OPTIONS, "OPTIONS")                                                   \
    X(s_PATCH, "PATCH")                                                       \
    X(s_create_future, "create_future")                                       \
    X(s_set_result, "set_result")                                             \
    X(s__state, "_state")                                                     \
    X(s__result, "_result")                                                   \
    X(s__exception, "_exception")                                             \
    X(s__done_callbacks, "_done_callbacks")                                   \
    X(s_remove_done_callback, "remove_done_callback")                         \
    X(s_set_exception, "set_exception")                                       \
    X(s_done, "done")                                                         \
    X(s_cancel, "cancel")                                                     \
    X(s_cancelled, "cancelled")                                               \
    X(s_result, "result")                                                     \
    X(s_exception, "exception")                                               \
    X(s_add_done_callback, "add_done_callback")                               \
    X(s_get_loop, "get_loop")                                                 \
    X(s_submit, "submit")                                                     \
    X(s_run_in_executor, "run_in_executor")                                   \
    X(s_wrap_future, "wrap_future")                                           \
    X(s__shutdown_lock, "_shutdown_lock")                                     \
    X(s__global_shutdown_lock, "_global_shutdown_lock")                       \
    X(s__broken, "_broken")                                                   \
    X(s__shutdown, "_shutdown")                                               \
    X(s__work_queue, "_work_queue")                                           \
    X(s__adjust_thread_count, "_adjust_thread_count")                         \
    X(s__idle_semaphore, "_idle_semaphore")                                   \
    X(s__cond, "_cond")                                                       \
    X(s__lock, "_lock")                                                       \
    X(s__value, "_value")                                                     \
    X(s_locked, "locked")                                                     \
    X(s__threads, "_threads")                                                 \
    X(s__max_workers, "_max_workers")                                         \
    X(s_put, "put")                                                           \
    X(s_acquire, "acquire")                                                   \
    X(s_release, "release")                                                   \
    X(s__default_executor, "_default_executor")                               \
    X(s__check_default_executor, "_check_default_executor")                   \
    X(s_create_task, "create_task")                                           \
    X(s__task_factory, "_task_factory")                                       \
    X(s_name, "name")                                                         \
    X(s_context, "context")                                                   \
    X(s_asyncio_future_blocking, "_asyncio_future_blocking")                  \
    X(s_loop, "loop")                                                         \
    X(s_eager_start, "eager_start")                                           \
    X(s_receive, "receive")                                                   \
    X(s_send, "send")                                                         \
    X(s_error, "error")                                                       \
    X(s_exc_info, "exc_info")                                                 \
    X(s_pubsub, "cdaphne.pubsub")                                             \
    X(s_pubsub_subscribe, "cdaphne.pubsub.subscribe")                         \
    X(s_pubsub_unsubscribe, "cdaphne.pubsub.unsubscribe")                     \
    X(s_pubsub_publish, "cdaphne.pubsub.publish")                             \
    X(s_topic, "topic")                                                       \
    X(s_exclude_self, "exclude_self")                                         \
    X(s_call_exception_handler, "call_exception_handler")                     \
    X(s_message, "message")                                                   \
    X(s_future, "future")                                                     \
    X(s__debug, "_debug")                                                     \
    X(s__closed, "_closed")                                                   \
    X(s__scheduled, "_scheduled")                                             \
    X(s__timer_cancelled_count, "_timer_cancelled_count")                     \
    X(s__stopping, "_stopping")                                               \
    X(s__selector, "_selector")                                               \
    X(s_select, "select")                                                     \
    X(s__process_events, "_process_events")                                   \
    X(s_time, "time")                                                         \
    X(s__clock_resolution, "_clock_resolution")                               \
    X(s__when, "_when")                                                       \
    X(s__cancelled, "_cancelled")                                             \
    X(s__run, "_run")                                                         \
    X(s_core, "core")                                                         \
    X(s__loop, "_loop")

/* Offsets of asyncio.Handle's slots (sched.c). */
typedef struct {
    Py_ssize_t callback, args, cancelled, loop, source_traceback, repr,
        context;
    Py_ssize_t when, scheduled; /* TimerHandle's own */
} cd_handle_slots_t;

struct cd_pubsub_s;

/* The loop methods that LoopMethods (loopmeth.c) serves in C, and time(),
 * which the scheduling core reads the clock for: what a loop's class
 * resolves each name to decides whether the C path may run. */
typedef enum {
    CD_LM_CREATE_FUTURE,
    CD_LM_CALL_SOON,
    CD_LM_CALL_SOON_THREADSAFE,
    CD_LM_CALL_AT,
    CD_LM_CALL_LATER,
    CD_LM_CREATE_TASK,
    CD_LM_RUN_IN_EXECUTOR,
    CD_LM_GET_DEBUG,
    CD_LM_RUN_ONCE,
    CD_LM_TIMER_CANCELLED,
    CD_LM_WRITE_TO_SELF, /* BaseSelectorEventLoop's, not BaseEventLoop's */
    CD_LM_TIME,          /* not a method of LoopMethods */
    CD_LM_N,
} cd_lm_t;

/* What a loop class resolves the CD_LM_* names to (loopmeth.c), valid
 * while the class keeps the version tag it was found with: setting an
 * attribute of the class or of any class in its MRO changes the tag. */
typedef struct {
    unsigned int tag;   /* tp_version_tag of the class; 0: nothing valid */
    uint32_t next_base; /* bit i: after LoopMethods in the MRO, name i is
                           asyncio's own function (lm_base[i]) */
    uint32_t plain;     /* bit i: next_base, and nothing before LoopMethods
                           overrides name i: type(loop).<i> is ours */
    PyObject *next[CD_LM_N]; /* borrowed: what follows LoopMethods in the
                                MRO (the classes' dicts keep it while the
                                tag holds), or NULL */
} cd_lm_cache_t;

typedef struct {
    /* Heap types. */
    PyTypeObject *LoopCore_type;
    PyTypeObject *Server_type;
    PyTypeObject *Cycle_type;
    PyTypeObject *Waiter_type;
    PyTypeObject *RecvFuture_type; /* waiter.c */
    PyTypeObject *TLSContext_type;
    PyTypeObject *Hop_type;
    PyTypeObject *HopItem_type;
    PyTypeObject *ReadyQueue_type;
    PyTypeObject *LoopMethods_type; /* loopmeth.c */

    /* Imported at exec time: asyncio.Task, logging callables. */
    PyObject *asyncio_Task;
    PyObject *asyncio_Future;
    /* loopmeth.c: the names of the loop methods LoopMethods serves (and
     * time), and asyncio's own functions of those names (what
     * asyncio.selector_events.BaseSelectorEventLoop resolves them to:
     * BaseEventLoop's but for _write_to_self), which the C paths stand for
     * and fall back to. */
    PyObject *lm_name[CD_LM_N];
    PyObject *lm_base[CD_LM_N];
    /* What the class of the loop asked last resolved the names to. */
    cd_lm_cache_t lm_cache;
    PyObject *get_running_loop; /* _asyncio._get_running_loop */
    PyObject *asyncio_CancelledError;
    PyObject *convert_future_exc; /* asyncio.futures._convert_future_exc */
    /* concurrent.futures.Future and its done states: hop.c reads a
     * future of exactly that class without its lock (see there). */
    PyObject *cf_Future;
    PyObject *cf_FINISHED;
    PyObject *cf_CANCELLED;
    PyObject *cf_CANCELLED_AND_NOTIFIED;
    PyObject *cf_InvalidStateError;
    /* concurrent.futures.thread, found when run_in_executor first meets
     * it imported: ThreadPoolExecutor, its own submit (NULL if already
     * patched then), the module's globals; and how many run_in_executor()
     * calls queued a C work item instead of calling submit (hop.c). */
    PyObject *tpe_type;
    PyObject *tpe_submit;
    PyObject *tpe_globals;
    Py_ssize_t hop_items;
    /* What _adjust_thread_count() does after a queued item, read in C
     * while these are the originals (hop.c item_adjust): its own function
     * (NULL if already patched), threading's Semaphore and its own
     * acquire, Condition, and the type of threading.Lock(); how many
     * calls were answered in C. */
    PyObject *tpe_adjust;
    PyObject *sem_type;
    PyObject *sem_acquire;
    PyObject *cond_type;
    PyObject *lock_type;
    Py_ssize_t hop_adjusts;
    /* The scheduling core's (sched.c), and its timers' type (timer.c):
     * asyncio.TimerHandle with cancel() in C, used while TimerHandle.cancel
     * and Handle.cancel are still these functions (checked at the type's
     * version tag timer_tag). */
    PyObject *asyncio_Handle;
    PyObject *asyncio_TimerHandle;
    PyTypeObject *Timer_type;
    PyObject *timer_cancel;  /* asyncio.TimerHandle.cancel */
    PyObject *handle_cancel; /* asyncio.Handle.cancel */
    unsigned int timer_tag;
    cd_handle_slots_t handle_slots;
    int dict_watcher; /* sched.c's PyDict watcher id + 1; 0: none */
    int type_watcher; /* sched.c's PyType watcher id + 1; 0: none */
    /* Where a Handle's weak reference list is (tp_weaklistoffset, which
     * may be negative: before the object), and whether run Handles may be
     * reused at all (sched.c). */
    Py_ssize_t handle_weaklist;
    int handle_reuse;
    PyObject *empty_bytes;
    PyObject *empty_tuple;
    PyObject *done_waiter;    /* a Waiter that returns None: stateless, shared
                                 by every send() that need not wait */
    PyObject *stop_iteration; /* strong: the StopIteration a receive()
                                 returns its message in, raised again
                                 while nothing else holds it (waiter.c) */
    PyObject *fut_set_result; /* asyncio.Future.set_result (cycle.c) */
    PyObject *http_scope_template; /* every key of an HTTP scope, None */
    PyObject *ws_scope_template;   /* likewise for WebSocket scopes */
    PyObject *asgi_dict;    /* {"version": "3.0", "spec_version": "2.3"} */
    PyObject *kwnames_loop; /* ("loop",) */
    PyObject *kwnames_task; /* ("loop", "name", "context"): loopapi.c */
    /* ("context",): a RecvFuture's call_soon (recvfut.c) */
    PyObject *kwnames_context;
    /* The last keyword names that a RecvFuture's add_done_callback found
     * to be ("context",), or NULL: the Task's own tuple, whose string is
     * not the interned one (recvfut.c). */
    PyObject *kwnames_context_seen;
    /* The C function of _asyncio's Task wake-up (task_wakeup), once a
     * RecvFuture's done callback was found to be one, or NULL
     * (recvfut.c). */
    PyCFunction task_wakeup;
    /* The app's last string found equal to "websocket.send", or NULL: a
     * literal in the app's code is the same object at every send(). */
    PyObject *ws_send_seen;
    /* Received messages with their keys in place (cd_message_new):
     * {"type": "websocket.receive", "text": None}, likewise "bytes", and
     * {"type": "http.request", "body": None, "more_body": None}. */
    PyObject *ws_text_template;
    PyObject *ws_bytes_template;
    PyObject *http_request_template;
    /* Set when C code scheduled asyncio callbacks (resolved a future,
     * armed a timer): select() must not block before they run. */
    int scheduled;
    /* cdaphne.pubsub (pubsub.c): the registry of the loop that attached
     * last, for publish() from any thread; hooks set by Python (other
     * workers, Redis), or NULL. */
    struct cd_pubsub_s *pubsub; /* borrowed: its loop clears it */
    PyObject *pubsub_forward;   /* strong: callable(topic, data, is_text) */
    PyObject *pubsub_on_topic;  /* strong: callable(topic, subscribed) */
    /* Live objects of each kind, for leak tests (_debug_counters()). */
    struct {
        Py_ssize_t conns, cycles, ws, waiters, write_reqs;
    } live;

#define CD_STATE_STR_FIELD(name, text) PyObject *name;
    CD_STRINGS(CD_STATE_STR_FIELD)
#undef CD_STATE_STR_FIELD
} cd_state;

extern struct PyModuleDef cd_module_def;

static inline cd_state *
cd_get_state(PyObject *module)
{
    return (cd_state *)PyModule_GetState(module);
}

static inline cd_state *
cd_state_from_type(PyTypeObject *tp)
{
    PyObject *mod = PyType_GetModuleByDef(tp, &cd_module_def);
    return mod ? cd_get_state(mod) : NULL;
}

#endif
