/* ReadyQueue: the loop's ready queue, a ring of handles.
 *
 * It is the asyncio loop's `_ready`: the scheduling core (sched.c) pushes
 * and pops in C, and Python code sees the collections.deque methods that
 * asyncio and its tests use (append, appendleft, popleft, pop, clear, len,
 * truth, iteration, indexing, `in`).  The GIL guards it: every caller
 * holds it. */
#include "internal.h"

#include <string.h>

struct cd_readyq_s {
    PyObject_HEAD
    PyObject **items; /* owned: cap slots; the len from head (mod cap) are
                         strong references */
    Py_ssize_t head;  /* index of the first item */
    Py_ssize_t len;
    Py_ssize_t cap; /* a power of two, or 0 */
};

#define CD_READYQ_AT(q, i) ((q)->items[((q)->head + (i)) & ((q)->cap - 1)])

static int
readyq_grow(cd_readyq_t *q)
{
    Py_ssize_t cap = q->cap ? q->cap * 2 : 64;
    PyObject **items = PyMem_Malloc(cap * sizeof(*items));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < q->len; i++) {
        items[i] = CD_READYQ_AT(q, i);
    }
    PyMem_Free(q->items);
    q->items = items;
    q->head = 0;
    q->cap = cap;
    return 0;
}

int
cd_readyq_push(cd_readyq_t *q, PyObject *h)
{
    if (cd_readyq_push_steal(q, Py_NewRef(h)) < 0) {
        Py_DECREF(h);
        return -1;
    }
    return 0;
}

int
cd_readyq_push_steal(cd_readyq_t *q, PyObject *h)
{
    if (q->len == q->cap && readyq_grow(q) < 0) {
        return -1;
    }
    q->items[(q->head + q->len) & (q->cap - 1)] = h;
    q->len++;
    return 0;
}

PyObject *
cd_readyq_pop(cd_readyq_t *q)
{
    if (q->len == 0) {
        return NULL;
    }
    PyObject *h = q->items[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    return h;
}

Py_ssize_t
cd_readyq_len(cd_readyq_t *q)
{
    return q->len;
}

PyObject *
cd_readyq_new(cd_state *st)
{
    cd_readyq_t *q = PyObject_GC_New(cd_readyq_t, st->ReadyQueue_type);
    if (q == NULL) {
        return NULL;
    }
    q->items = NULL;
    q->head = q->len = q->cap = 0;
    PyObject_GC_Track(q);
    return (PyObject *)q;
}

static PyObject *
readyq_append(cd_readyq_t *q, PyObject *h)
{
    return cd_readyq_push(q, h) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
readyq_appendleft(cd_readyq_t *q, PyObject *h)
{
    if (q->len == q->cap && readyq_grow(q) < 0) {
        return NULL;
    }
    q->head = (q->head - 1) & (q->cap - 1);
    q->items[q->head] = Py_NewRef(h);
    q->len++;
    Py_RETURN_NONE;
}

static PyObject *
readyq_popleft(cd_readyq_t *q, PyObject *unused)
{
    PyObject *h = cd_readyq_pop(q);
    if (h == NULL) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty deque");
    }
    return h;
}

static PyObject *
readyq_pop(cd_readyq_t *q, PyObject *unused)
{
    if (q->len == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty deque");
        return NULL;
    }
    q->len--;
    return CD_READYQ_AT(q, q->len);
}

/* Empties the queue; the handles are released after it is consistent
 * (their deallocation may run code that touches the queue). */
static int
readyq_clear(cd_readyq_t *q)
{
    PyObject **items = q->items;
    Py_ssize_t head = q->head, len = q->len, cap = q->cap;
    q->items = NULL;
    q->head = q->len = q->cap = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_DECREF(items[(head + i) & (cap - 1)]);
    }
    PyMem_Free(items);
    return 0;
}

static PyObject *
readyq_clear_meth(cd_readyq_t *q, PyObject *unused)
{
    readyq_clear(q);
    Py_RETURN_NONE;
}

/* New reference: a list of the queued handles, first to last. */
static PyObject *
readyq_snapshot(cd_readyq_t *q)
{
    PyObject *l = PyList_New(q->len);
    if (l != NULL) {
        for (Py_ssize_t i = 0; i < q->len; i++) {
            PyList_SET_ITEM(l, i, Py_NewRef(CD_READYQ_AT(q, i)));
        }
    }
    return l;
}

static PyObject *
readyq_iter(cd_readyq_t *q)
{
    PyObject *l = readyq_snapshot(q);
    PyObject *it = l ? PyObject_GetIter(l) : NULL;
    Py_XDECREF(l);
    return it;
}

static Py_ssize_t
readyq_length(cd_readyq_t *q)
{
    return q->len;
}

/* q[i]; a negative i was made positive by the sequence protocol. */
static PyObject *
readyq_item(cd_readyq_t *q, Py_ssize_t i)
{
    if (i < 0 || i >= q->len) {
        PyErr_SetString(PyExc_IndexError, "deque index out of range");
        return NULL;
    }
    return Py_NewRef(CD_READYQ_AT(q, i));
}

static PyObject *
readyq_repr(cd_readyq_t *q)
{
    PyObject *l = readyq_snapshot(q);
    PyObject *r = l ? PyUnicode_FromFormat("ReadyQueue(%R)", l) : NULL;
    Py_XDECREF(l);
    return r;
}

static int
readyq_traverse(cd_readyq_t *q, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(q));
    for (Py_ssize_t i = 0; i < q->len; i++) {
        Py_VISIT(CD_READYQ_AT(q, i));
    }
    return 0;
}

static void
readyq_dealloc(cd_readyq_t *q)
{
    PyTypeObject *tp = Py_TYPE(q);
    PyObject_GC_UnTrack(q);
    readyq_clear(q);
    tp->tp_free(q);
    Py_DECREF(tp);
}

static PyMethodDef readyq_methods[] = {
    {"append", (PyCFunction)readyq_append, METH_O, NULL},
    {"appendleft", (PyCFunction)readyq_appendleft, METH_O, NULL},
    {"popleft", (PyCFunction)readyq_popleft, METH_NOARGS, NULL},
    {"pop", (PyCFunction)readyq_pop, METH_NOARGS, NULL},
    {"clear", (PyCFunction)readyq_clear_meth, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot readyq_slots[] = {
    {Py_tp_dealloc, readyq_dealloc},
    {Py_tp_traverse, readyq_traverse},
    {Py_tp_clear, readyq_clear},
    {Py_tp_iter, readyq_iter},
    {Py_tp_repr, readyq_repr},
    {Py_tp_methods, readyq_methods},
    {Py_sq_length, readyq_length},
    {Py_sq_item, readyq_item},
    {Py_tp_doc, "The loop's ready queue (loop._ready): a ring of handles."},
    {0, NULL},
};

static PyType_Spec readyq_spec = {
    .name = "cdaphne._cdaphne.ReadyQueue",
    .basicsize = sizeof(cd_readyq_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = readyq_slots,
};

int
cd_readyq_type_init(PyObject *module, cd_state *st)
{
    st->ReadyQueue_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &readyq_spec, NULL);
    return st->ReadyQueue_type == NULL ? -1 : 0;
}
