/* Module state: interned strings, constants, traverse and clear. */
#include "internal.h"

int
cd_strings_init(cd_state *st)
{
#define CD_INIT_STR(name, text)                                               \
    st->name = PyUnicode_InternFromString(text);                              \
    if (st->name == NULL) {                                                   \
        return -1;                                                            \
    }
    CD_STRINGS(CD_INIT_STR)
#undef CD_INIT_STR

    st->empty_bytes = PyBytes_FromStringAndSize("", 0);
    st->empty_tuple = PyTuple_New(0);
    st->kwnames_loop = Py_BuildValue("(O)", st->s_loop);
    st->kwnames_task =
        Py_BuildValue("(OOO)", st->s_loop, st->s_name, st->s_context);
    st->kwnames_context = Py_BuildValue("(O)", st->s_context);
    st->asgi_dict = Py_BuildValue("{OOOO}", st->s_version, st->s_v3_0,
                                  st->s_spec_version, st->s_v2_3);
    st->ws_text_template = Py_BuildValue(
        "{OOOO}", st->s_type, st->s_ws_receive, st->s_text, Py_None);
    st->ws_bytes_template = Py_BuildValue(
        "{OOOO}", st->s_type, st->s_ws_receive, st->s_bytes, Py_None);
    st->http_request_template =
        Py_BuildValue("{OOOOOO}", st->s_type, st->s_http_request, st->s_body,
                      Py_None, st->s_more_body, Py_None);
    if (!st->empty_bytes || !st->empty_tuple || !st->kwnames_loop ||
        !st->kwnames_task || !st->kwnames_context || !st->asgi_dict ||
        !st->ws_text_template || !st->ws_bytes_template ||
        !st->http_request_template) {
        return -1;
    }

    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL) {
        return -1;
    }
    st->asyncio_Task = PyObject_GetAttrString(asyncio, "Task");
    st->asyncio_CancelledError =
        PyObject_GetAttrString(asyncio, "CancelledError");
    st->asyncio_Future = PyObject_GetAttrString(asyncio, "Future");
    Py_DECREF(asyncio);
    if (!st->asyncio_Task || !st->asyncio_CancelledError ||
        !st->asyncio_Future) {
        return -1;
    }
    st->fut_set_result =
        PyObject_GetAttrString(st->asyncio_Future, "set_result");
    if (st->fut_set_result == NULL) {
        return -1;
    }
    return 0;
}

int
cd_state_traverse(cd_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->LoopCore_type);
    Py_VISIT(st->Server_type);
    Py_VISIT(st->Cycle_type);
    Py_VISIT(st->Waiter_type);
    Py_VISIT(st->RecvFuture_type);
    Py_VISIT(st->TLSContext_type);
    Py_VISIT(st->Hop_type);
    Py_VISIT(st->HopItem_type);
    Py_VISIT(st->cf_InvalidStateError);
    Py_VISIT(st->tpe_type);
    Py_VISIT(st->tpe_submit);
    Py_VISIT(st->tpe_globals);
    Py_VISIT(st->tpe_adjust);
    Py_VISIT(st->sem_type);
    Py_VISIT(st->sem_acquire);
    Py_VISIT(st->cond_type);
    Py_VISIT(st->lock_type);
    Py_VISIT(st->ReadyQueue_type);
    Py_VISIT(st->LoopMethods_type);
    for (int i = 0; i < CD_LM_N; i++) {
        Py_VISIT(st->lm_base[i]);
    }
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->convert_future_exc);
    Py_VISIT(st->cf_Future);
    Py_VISIT(st->cf_FINISHED);
    Py_VISIT(st->cf_CANCELLED);
    Py_VISIT(st->cf_CANCELLED_AND_NOTIFIED);
    Py_VISIT(st->asyncio_Handle);
    Py_VISIT(st->asyncio_TimerHandle);
    Py_VISIT(st->Timer_type);
    Py_VISIT(st->timer_cancel);
    Py_VISIT(st->handle_cancel);
    Py_VISIT(st->asyncio_Task);
    Py_VISIT(st->asyncio_CancelledError);
    Py_VISIT(st->asyncio_Future);
    Py_VISIT(st->asgi_dict);
    Py_VISIT(st->ws_text_template);
    Py_VISIT(st->ws_bytes_template);
    Py_VISIT(st->http_request_template);
    Py_VISIT(st->http_scope_template);
    Py_VISIT(st->ws_scope_template);
    Py_VISIT(st->done_waiter);
    Py_VISIT(st->stop_iteration);
    Py_VISIT(st->fut_set_result);
    Py_VISIT(st->kwnames_context_seen);
    Py_VISIT(st->ws_send_seen);
    Py_VISIT(st->pubsub_forward);
    Py_VISIT(st->pubsub_on_topic);
    return 0;
}

void
cd_state_clear(cd_state *st)
{
    cd_sched_state_clear(st);
    cd_timer_state_clear(st);
    Py_CLEAR(st->LoopCore_type);
    Py_CLEAR(st->Server_type);
    Py_CLEAR(st->Cycle_type);
    Py_CLEAR(st->Waiter_type);
    Py_CLEAR(st->RecvFuture_type);
    Py_CLEAR(st->TLSContext_type);
    Py_CLEAR(st->Hop_type);
    Py_CLEAR(st->HopItem_type);
    Py_CLEAR(st->cf_InvalidStateError);
    Py_CLEAR(st->tpe_type);
    Py_CLEAR(st->tpe_submit);
    Py_CLEAR(st->tpe_globals);
    Py_CLEAR(st->tpe_adjust);
    Py_CLEAR(st->sem_type);
    Py_CLEAR(st->sem_acquire);
    Py_CLEAR(st->cond_type);
    Py_CLEAR(st->lock_type);
    Py_CLEAR(st->ReadyQueue_type);
    Py_CLEAR(st->LoopMethods_type);
    for (int i = 0; i < CD_LM_N; i++) {
        Py_CLEAR(st->lm_name[i]);
        Py_CLEAR(st->lm_base[i]);
    }
    st->lm_cache.tag = 0;
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->convert_future_exc);
    Py_CLEAR(st->cf_Future);
    Py_CLEAR(st->cf_FINISHED);
    Py_CLEAR(st->cf_CANCELLED);
    Py_CLEAR(st->cf_CANCELLED_AND_NOTIFIED);
    Py_CLEAR(st->asyncio_Handle);
    Py_CLEAR(st->asyncio_TimerHandle);
    Py_CLEAR(st->Timer_type);
    Py_CLEAR(st->timer_cancel);
    Py_CLEAR(st->handle_cancel);
    st->timer_tag = 0;
    Py_CLEAR(st->asyncio_Task);
    Py_CLEAR(st->asyncio_CancelledError);
    Py_CLEAR(st->asyncio_Future);
    Py_CLEAR(st->empty_bytes);
    Py_CLEAR(st->empty_tuple);
    Py_CLEAR(st->asgi_dict);
    Py_CLEAR(st->ws_text_template);
    Py_CLEAR(st->ws_bytes_template);
    Py_CLEAR(st->http_request_template);
    Py_CLEAR(st->http_scope_template);
    Py_CLEAR(st->ws_scope_template);
    Py_CLEAR(st->done_waiter);
    Py_CLEAR(st->stop_iteration);
    Py_CLEAR(st->fut_set_result);
    Py_CLEAR(st->pubsub_forward);
    Py_CLEAR(st->pubsub_on_topic);
    Py_CLEAR(st->kwnames_loop);
    Py_CLEAR(st->kwnames_task);
    Py_CLEAR(st->kwnames_context);
    Py_CLEAR(st->kwnames_context_seen);
    Py_CLEAR(st->ws_send_seen);
#define CD_CLEAR_STR(name, text) Py_CLEAR(st->name);
    CD_STRINGS(CD_CLEAR_STR)
#undef CD_CLEAR_STR
}

/* New reference: a copy of template (a dict holding every key of the
 * message) with key set to value; steals value.  Copying a small dict
 * clones its table in one step and setting a key it has never grows it:
 * cheaper than building the dict key by key. */
PyObject *
cd_message_new(PyObject *template, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        return NULL;
    }
    PyObject *msg = PyDict_Copy(template);
    if (msg == NULL || PyDict_SetItem(msg, key, value) < 0) {
        Py_XDECREF(msg);
        msg = NULL;
    }
    Py_DECREF(value);
    return msg;
}
