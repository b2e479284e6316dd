/* libFuzzer driver: embeds CPython once, with cdaphne's C core compiled
 * into this binary (so libFuzzer sees its coverage), and hands each input
 * to fuzz/harness.py, which drives a real cdaphne server with it.
 *
 * Build: `make fuzz-build` (see the Makefile); one binary per target,
 * chosen at compile time with -DCD_FUZZ_TARGET="http" (or "websocket", "tls",
 * "head").  An exception escaping the harness is a finding: it is printed
 * and the process aborts, so libFuzzer saves the input. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef CD_FUZZ_TARGET
#error "define CD_FUZZ_TARGET"
#endif
#ifndef CD_FUZZ_ROOT
#error "define CD_FUZZ_ROOT (the repository root)"
#endif

PyMODINIT_FUNC PyInit__cdaphne(void);

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static PyObject *one_input; /* strong: harness.one_input_<target> */

static void
die(const char *what)
{
    fprintf(stderr, "fuzz driver: %s\n", what);
    if (PyErr_Occurred()) {
        PyErr_Print();
    }
    fflush(stderr);
    abort();
}

/* Puts <root>/python (the package) and <root>/fuzz (the harness) first
 * on sys.path; the root comes from $CDAPHNE_ROOT or the build. */
static void
add_paths(void)
{
    const char *root = getenv("CDAPHNE_ROOT");
    if (root == NULL || *root == '\0') {
        root = CD_FUZZ_ROOT;
    }
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    if (path == NULL) {
        die("no sys.path");
    }
    const char *subdirs[] = {"fuzz", "python"};
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        PyObject *dir = PyUnicode_FromFormat("%s/%s", root, subdirs[i]);
        if (dir == NULL || PyList_Insert(path, 0, dir) < 0) {
            die("cannot extend sys.path");
        }
        Py_DECREF(dir);
    }
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* A write to a socket the server closed must fail with EPIPE, as in a
     * Python process, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    PyPreConfig preconfig;
    PyPreConfig_InitPythonConfig(&preconfig);
    /* Every object on malloc, so ASan sees use-after-free of objects. */
    preconfig.allocator = PYMEM_ALLOCATOR_MALLOC;
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    if (PyImport_AppendInittab("cdaphne._cdaphne", PyInit__cdaphne) < 0) {
        die("PyImport_AppendInittab failed");
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* libFuzzer owns the signals. */
    config.parse_argv = 0;
    config.write_bytecode = 0;
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    add_paths();
    PyObject *harness = PyImport_ImportModule("harness");
    if (harness == NULL) {
        die("cannot import fuzz/harness.py");
    }
    one_input = PyObject_GetAttrString(harness, "one_input_" CD_FUZZ_TARGET);
    Py_DECREF(harness);
    if (one_input == NULL) {
        die("harness has no one_input_" CD_FUZZ_TARGET);
    }
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    PyObject *arg = PyBytes_FromStringAndSize((const char *)data, size);
    if (arg == NULL) {
        die("out of memory");
    }
    PyObject *res = PyObject_CallOneArg(one_input, arg);
    Py_DECREF(arg);
    if (res == NULL) {
        die("the harness raised (a finding)");
    }
    Py_DECREF(res);
    return 0;
}
