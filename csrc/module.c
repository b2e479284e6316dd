/* The _cdaphne extension module: init, module state traverse/clear, and the
 * versions of the C libraries it runs with. */
#include "internal.h"

#include <openssl/crypto.h>
#include <wslay/wslay.h>

/* wslay 1.1.1's wslayver.h still says "1.0.1-DEV", so setup.py passes the
 * version of the installed libwslay-dev package when it can find it. */
#ifndef CD_WSLAY_VERSION
#define CD_WSLAY_VERSION WSLAY_VERSION
#endif

#define CD_STR2(x) #x
#define CD_STR(x) CD_STR2(x)

/* libuv and OpenSSL: the shared libraries loaded at run time; llhttp (compiled
 * in) and wslay (no run-time query): the versions built against. */
static PyObject *
cdaphne_versions(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    static const char llhttp[] = CD_STR(LLHTTP_VERSION_MAJOR) "." CD_STR(
        LLHTTP_VERSION_MINOR) "." CD_STR(LLHTTP_VERSION_PATCH);

    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s}", "libuv", uv_version_string(),
                         "llhttp", llhttp, "wslay", CD_WSLAY_VERSION,
                         "wslay_header", WSLAY_VERSION, "openssl",
                         OpenSSL_version(OPENSSL_VERSION));
}

/* Live C objects by kind, so that tests can check nothing leaks. */
static PyObject *
cdaphne_debug_counters(PyObject *module, PyObject *unused)
{
    cd_state *st = cd_get_state(module);
    return Py_BuildValue("{snsnsnsnsnsnsn}", "conns", st->live.conns, "cycles",
                         st->live.cycles, "ws", st->live.ws, "waiters",
                         st->live.waiters, "write_reqs", st->live.write_reqs,
                         "hop_items", st->hop_items, "hop_adjusts",
                         st->hop_adjusts);
}

static PyMethodDef cdaphne_methods[] = {
    {"_versions", cdaphne_versions, METH_NOARGS,
     "The versions of libuv, llhttp, wslay and OpenSSL, as a dict."},
    {"_debug_counters", cdaphne_debug_counters, METH_NOARGS,
     "Live connections, cycles, WebSockets, waiters and write requests; "
     "hop_items: run_in_executor() calls that queued a C work item; "
     "hop_adjusts: their _adjust_thread_count() done in C."},
    {"pubsub_publish", (PyCFunction)(void (*)(void))cd_pubsub_publish_fn,
     METH_FASTCALL,
     "pubsub_publish(topic, data, is_text, forward=True) -> bool: fan out "
     "to this process's subscribers (False: the queue from other threads "
     "is full, try again)."},
    {"pubsub_stats", cd_pubsub_stats_fn, METH_NOARGS,
     "Counters of cdaphne.pubsub in this process."},
    {"pubsub_set_hooks", (PyCFunction)(void (*)(void))cd_pubsub_set_hooks_fn,
     METH_FASTCALL, "pubsub_set_hooks(forward, on_topic): callables or None."},
    {NULL, NULL, 0, NULL},
};

static int
cdaphne_exec(PyObject *module)
{
    cd_state *st = cd_get_state(module);
    if (cd_strings_init(st) < 0) {
        return -1;
    }
    if (cd_scope_init(st) < 0) {
        return -1;
    }
    if (cd_types_init(module, st) < 0) {
        return -1;
    }
    return 0;
}

static int
cdaphne_traverse(PyObject *module, visitproc visit, void *arg)
{
    return cd_state_traverse(cd_get_state(module), visit, arg);
}

static int
cdaphne_clear(PyObject *module)
{
    cd_state_clear(cd_get_state(module));
    return 0;
}

static void
cdaphne_free(void *module)
{
    cdaphne_clear((PyObject *)module);
}

static PyModuleDef_Slot cdaphne_slots[] = {
    {Py_mod_exec, cdaphne_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* libuv signal handling and the loop's GIL bookkeeping are
     * process-wide. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

struct PyModuleDef cd_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cdaphne._cdaphne",
    .m_doc = "cdaphne's C core: libuv loop, HTTP/1.1, WebSocket, ASGI.",
    .m_size = sizeof(cd_state),
    .m_methods = cdaphne_methods,
    .m_slots = cdaphne_slots,
    .m_traverse = cdaphne_traverse,
    .m_clear = cdaphne_clear,
    .m_free = cdaphne_free,
};

PyMODINIT_FUNC PyInit__cdaphne(void);

PyMODINIT_FUNC
PyInit__cdaphne(void)
{
    return PyModuleDef_Init(&cd_module_def);
}
