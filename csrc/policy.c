/* The loop thread's scheduling policy while thread hops are out (Linux).
 *
 * A thread hop (run_in_executor, sync_to_async) wakes a worker while the
 * loop holds the GIL, and the worker wakes the loop as it finishes.  Under
 * the default policy each woken thread preempts its waker on a shared core
 * only to wait for the GIL the waker holds, and CPython's GIL hand-over (a
 * signal, then an unlock) wakes the waiter twice: 6.6 context switches per
 * run_in_executor round trip, 2.2 under SCHED_BATCH, where a woken thread
 * runs when its waker blocks or its slice ends (README, Speed).
 *
 * SCHED_BATCH all the time cost the apps that make no hops: a loop woken
 * by the network while another process ran on its core waited for that
 * process's slice (hello world at 2,000 requests/s beside a busy process
 * on one core: 1.7 ms median latency, 0.09 ms under the default policy).
 * So the loop's thread goes to SCHED_BATCH when it hands work to an
 * executor and back to the default policy when it is about to sleep with
 * no hop out, or with none gone out or come back for STALE_NS: a slow
 * view's or a long job's hop has no hand-overs to save, and the network
 * would wait for other processes' slices as long as it ran (hello world
 * beside a busy process with a one-second hop always out: 1.72 ms median,
 * 0.08-0.10 ms once the hop goes stale).  ThreadPoolExecutor starts its
 * threads in submit(), after the switch: they inherit SCHED_BATCH, and a
 * worker the loop wakes does not preempt it either.
 *
 * Only a thread found under SCHED_OTHER is changed: a policy the operator
 * chose (chrt: batch, idle, real-time) stays.  The thread is the one that
 * polls (the loop's); a loop that moves to another thread gives the first
 * its policy back, and so does close(). */

#include "internal.h"

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__linux__) && defined(SCHED_BATCH)

/* Hops of a Django request come and go every few hundred microseconds. */
#define STALE_NS (5 * 1000 * 1000)

static void
policy_set(cd_loop_t *loop, cd_policy_t to)
{
    struct sched_param param = {0};
    int policy = to == CD_POLICY_BATCH ? SCHED_BATCH : SCHED_OTHER;
    if (sched_setscheduler(loop->policy_tid, policy, &param) == 0) {
        loop->policy = to;
    }
    else {
        /* A seccomp filter or a container that forbids it: stop trying. */
        loop->policy = CD_POLICY_OFF;
    }
}

/* The calling thread polls: if it is not the one loop->policy describes,
 * give that one its policy back and read this one's. */
static void
policy_find_thread(cd_loop_t *loop)
{
    pthread_t self = pthread_self();
    if (loop->policy != CD_POLICY_ASKED &&
        pthread_equal(self, loop->policy_thread)) {
        return;
    }
    if (loop->policy == CD_POLICY_BATCH) {
        policy_set(loop, CD_POLICY_OTHER);
    }
    loop->policy_thread = self;
    loop->policy_tid = (int)syscall(SYS_gettid);
    loop->policy =
        sched_getscheduler(0) == SCHED_OTHER ? CD_POLICY_OTHER : CD_POLICY_OFF;
}

void
cd_policy_ask(cd_loop_t *loop)
{
    if (loop->policy == CD_POLICY_OFF && !loop->closed) {
        loop->policy = CD_POLICY_ASKED;
    }
}

void
cd_policy_hop_out(cd_loop_t *loop)
{
    if (loop->policy == CD_POLICY_OFF) {
        return;
    }
    loop->hop_moved_ns = uv_hrtime();
    if (loop->policy == CD_POLICY_OTHER &&
        pthread_equal(pthread_self(), loop->policy_thread)) {
        policy_set(loop, CD_POLICY_BATCH);
    }
}

void
cd_policy_hops_back(cd_loop_t *loop)
{
    if (loop->policy != CD_POLICY_OFF) {
        loop->hop_moved_ns = uv_hrtime();
    }
}

void
cd_policy_before_sleep(cd_loop_t *loop)
{
    if (loop->policy == CD_POLICY_OFF) {
        return;
    }
    policy_find_thread(loop);
    if (loop->policy == CD_POLICY_BATCH &&
        (loop->hops_out == 0 || uv_hrtime() - loop->hop_moved_ns > STALE_NS)) {
        policy_set(loop, CD_POLICY_OTHER);
    }
}

void
cd_policy_close(cd_loop_t *loop)
{
    if (loop->policy == CD_POLICY_BATCH) {
        policy_set(loop, CD_POLICY_OTHER);
    }
    loop->policy = CD_POLICY_OFF;
}

#else /* no SCHED_BATCH: the default policy throughout */

void
cd_policy_ask(cd_loop_t *loop)
{
}

void
cd_policy_hop_out(cd_loop_t *loop)
{
}

void
cd_policy_hops_back(cd_loop_t *loop)
{
}

void
cd_policy_before_sleep(cd_loop_t *loop)
{
}

void
cd_policy_close(cd_loop_t *loop)
{
}

#endif
