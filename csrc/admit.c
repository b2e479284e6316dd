/* Admission: how many HTTP apps one loop runs at once.
 *
 * A Django view costs a fifth more CPU per request with 50 in flight than
 * with 4 (the same instructions; each request's objects, frames and two
 * threads crowd the caches), so once the process keeps its core busy,
 * more requests at once only make each slower.  Past the limit in force
 * (cap) a parsed request waits, in arrival order, until
 *  - a running one ends (its slot passes on), or
 *  - the process used under half of a core over a window of WINDOW_NS
 *    while requests waited, counting the time the loop's thread waited for
 *    a CPU as used (other processes taking the core do not make it idle): the
 * apps wait on something else (a database, a timer, another request, a long
 * poll), so cap rises by the configured limit and that many more go in -- the
 * limit never leaves the core idle; a window with the core busier lowers cap
 * again by as much, down to the configured limit; or
 *  - it has waited MAX_WAIT_MS (apps that keep the core busy for long
 *    cannot hold the others back for good).
 * WebSockets are never held: their app runs for the connection's life. */

#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define WINDOW_NS (2 * 1000 * 1000)
#define MAX_WAIT_MS 500

static uint64_t
process_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The time the calling (loop) thread has waited runnable for a CPU, from
 * Linux's schedstat (0 where there is none: then only the CPU counts).
 * Opened each time: no descriptor is held, and it is always this thread's. */
static uint64_t
loop_thread_delay_ns(void)
{
    char buf[96];
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    unsigned long long run = 0, delay = 0;
    if (fd >= 0) {
        close(fd);
    }
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    return sscanf(buf, "%llu %llu", &run, &delay) == 2 ? delay : 0;
}

static void
window_restart(cd_admit_t *a)
{
    a->mark_ns = uv_hrtime();
    a->mark_cpu = process_cpu_ns();
    a->mark_delay = loop_thread_delay_ns();
}

int
cd_admit_init(cd_loop_t *loop)
{
    loop->admit.waiting = PyList_New(0);
    return loop->admit.waiting == NULL ? -1 : 0;
}

void
cd_admit_clear(cd_loop_t *loop)
{
    Py_CLEAR(loop->admit.waiting);
}

/* Servers sharing a loop share its limit: the smallest one set. */
void
cd_admit_set_limit(cd_loop_t *loop, int limit)
{
    cd_admit_t *a = &loop->admit;
    if (limit > 0 && (a->limit == 0 || limit < a->limit)) {
        a->limit = a->cap = limit;
    }
}

int
cd_admit_start(cd_loop_t *loop, cd_cycle_t *cy)
{
    cd_admit_t *a = &loop->admit;
    if (cy->admit == CD_ADMIT_ANSWERED) {
        return 0;
    }
    if (cy->admit != CD_ADMIT_NEW || !cd_cycle_is_http(cy)) {
        return 1; /* RUNNING: let in while it waited */
    }
    if (a->limit == 0 || a->running < a->cap) {
        cy->admit = CD_ADMIT_RUNNING;
        a->running++;
        return 1;
    }
    if (PyList_Append(a->waiting, (PyObject *)cy) < 0) {
        return -1;
    }
    if (PyList_GET_SIZE(a->waiting) == 1) {
        window_restart(a);
    }
    cy->admit = CD_ADMIT_WAITING;
    cy->waiting_since = uv_now(&loop->uv);
    return 0;
}

/* The first n waiting requests go to the loop's pending list, holding a
 * slot each (the limit may be passed: only admit_some's callers do). */
static int
admit_some(cd_loop_t *loop, Py_ssize_t n)
{
    cd_admit_t *a = &loop->admit;
    Py_ssize_t have = PyList_GET_SIZE(a->waiting);
    n = n < have ? n : have;
    if (n == 0) {
        return 0;
    }
    PyObject *first = PyList_GetSlice(a->waiting, 0, n);
    int rc = -1;
    if (first == NULL || PyList_SetSlice(loop->pending, PY_SSIZE_T_MAX,
                                         PY_SSIZE_T_MAX, first) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ((cd_cycle_t *)PyList_GET_ITEM(first, i))->admit = CD_ADMIT_RUNNING;
    }
    a->running += (int)n;
    rc = PyList_SetSlice(a->waiting, 0, n, NULL);
done:
    Py_XDECREF(first);
    return rc;
}

void
cd_admit_done(cd_cycle_t *cy)
{
    if (cy->admit != CD_ADMIT_RUNNING) {
        return;
    }
    cy->admit = CD_ADMIT_DONE;
    cd_loop_t *loop = cy->server->loop;
    loop->admit.running--;
    if ((loop->admit.limit == 0 || loop->admit.running < loop->admit.cap) &&
        admit_some(loop, 1) < 0) {
        /* The list could not grow: the request waits for the next turn's
         * check, which lets it in after MAX_WAIT_MS at the latest. */
        cd_log_exception("Exception letting a waiting request in");
    }
}

void
cd_admit_withdraw(cd_cycle_t *cy)
{
    cd_admit_t *a = &cy->server->loop->admit;
    if (cy->admit == CD_ADMIT_WAITING && a->waiting != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(a->waiting);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyList_GET_ITEM(a->waiting, i) == (PyObject *)cy) {
                /* The conn holds cy too: the list's reference is not
                 * its last. */
                (void)PySequence_DelItem(a->waiting, i);
                break;
            }
        }
    }
    else if (cy->admit == CD_ADMIT_RUNNING) {
        cd_admit_done(cy);
    }
    cy->admit = CD_ADMIT_ANSWERED;
}

double
cd_admit_timeout(cd_loop_t *loop, double timeout)
{
    if (PyList_GET_SIZE(loop->admit.waiting) == 0 || timeout == 0) {
        return timeout;
    }
    double window = WINDOW_NS / 1e9;
    return timeout < 0 || timeout > window ? window : timeout;
}

/* Moves cap by the last window's CPU use, once a window has passed. */
static void
cap_adjust(cd_admit_t *a)
{
    uint64_t now = uv_hrtime();
    if (now - a->mark_ns < WINDOW_NS) {
        return;
    }
    uint64_t cpu = process_cpu_ns(), delay = loop_thread_delay_ns();
    if (cpu - a->mark_cpu + (delay - a->mark_delay) < (now - a->mark_ns) / 2) {
        a->cap = a->cap > INT_MAX - a->limit ? INT_MAX : a->cap + a->limit;
    }
    else {
        a->cap = a->cap - a->limit < a->limit ? a->limit : a->cap - a->limit;
    }
    a->mark_ns = now;
    a->mark_cpu = cpu;
    a->mark_delay = delay;
}

/* How many to let in now: up to cap, or one if the first has waited
 * MAX_WAIT_MS. */
static Py_ssize_t
admit_due(cd_loop_t *loop)
{
    cd_admit_t *a = &loop->admit;
    cd_cycle_t *first = (cd_cycle_t *)PyList_GET_ITEM(a->waiting, 0);
    cap_adjust(a);
    if (a->running < a->cap) {
        return a->cap - a->running;
    }
    return uv_now(&loop->uv) - first->waiting_since >= MAX_WAIT_MS;
}

int
cd_admit_after_poll(cd_loop_t *loop)
{
    if (PyList_GET_SIZE(loop->admit.waiting) == 0) {
        return 0;
    }
    return admit_some(loop, admit_due(loop));
}

int
cd_admit_all(cd_loop_t *loop)
{
    return admit_some(loop, PyList_GET_SIZE(loop->admit.waiting));
}
