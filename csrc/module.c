/* The _cdaphne extension module: init, module state traverse/clear. */
#include "internal.h"

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
