/* How the native threads wait for their descriptors: poll(), after a bounded busy poll.

   Why: on an idle machine each thread of a round trip sleeps between packets, and the reply to
   what it just sent comes back tens of microseconds later to a thread (and, in a virtual
   machine, often a halted vCPU) that must be woken again: docs/benchmarks.md, "Where the round
   trip goes".  So for Waiter.spin_ns after its last traffic a thread looks at its descriptors
   without waiting, yielding the CPU to anything runnable between looks, and only then blocks.
   The spin starts only after traffic: an idle thread costs nothing, and each spell is bounded.
   A spin of 0 is a plain poll().  Shared by the node's loop (_fastpath_loop.c) and the relay's
   (_fastpath_relay.c).  Part of meshvpn._fastpath. */

#include <errno.h>
#include <sched.h>
#include <time.h>

#include "_fastpath.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void waiter_traffic(Waiter *w) {
    if (w->spin_ns > 0) w->spin_until = now_ns() + w->spin_ns;
}

int waiter_poll(Waiter *w, struct pollfd *fds, nfds_t n, int timeout_ms) {
    if (timeout_ms != 0 && w->spin_ns > 0) {
        while (now_ns() < w->spin_until) {
            int ready = poll(fds, n, 0);
            if (ready != 0) return ready;
            COUNT(w->spins, 1);
            sched_yield();
        }
    }
    return poll(fds, n, timeout_ms);
}

int waiter_init(Waiter *w, int busy_poll_us) {
    if (busy_poll_us < 0 || busy_poll_us > MAX_BUSY_POLL_US) {
        PyErr_Format(PyExc_ValueError, "busy_poll_us is 0 to %d microseconds", MAX_BUSY_POLL_US);
        return -1;
    }
    w->spin_ns = (int64_t)busy_poll_us * 1000;
    w->spin_until = 0;
    w->spins = 0;
    return 0;
}
