/* Creates every heap type of the module (one call per type file). */
#include "internal.h"

int
cd_types_init(PyObject *module, cd_state *st)
{
    if (cd_loop_type_init(module, st) < 0 ||
        cd_server_type_init(module, st) < 0 ||
        cd_cycle_type_init(module, st) < 0 ||
        cd_waiter_type_init(module, st) < 0 ||
        cd_rfut_type_init(module, st) < 0 ||
        cd_tls_type_init(module, st) < 0 || cd_hop_type_init(module, st) < 0 ||
        cd_readyq_type_init(module, st) < 0 ||
        cd_loopmeth_type_init(module, st) < 0 ||
        cd_timer_type_init(module, st) < 0 || cd_sched_init(st) < 0) {
        return -1;
    }
    return 0;
}
