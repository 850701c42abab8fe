/* How the native threads wait for their descriptors: poll(), after a bounded busy poll.

   Why: on an idle machine each thread of a round trip sleeps between packets, and the reply to
   what it just sent comes back tens of microseconds later to a thread (and, in a virtual
   machine, often a halted vCPU) that must be woken again: docs/benchmarks.md, "Where the round
   trip goes".  So for Waiter.spin_ns after its last traffic a thread looks at its descriptors
   without waiting, yielding the CPU to anything runnable between looks, and only then blocks.
   The spin starts only where it pays: after a lone packet (below) that the thread moved itself
   (forwarded, sealed and sent, or written to the TUN), a request whose reply comes back to it.
   Not after reads it only handed to Python (a relayed TCP stream, a handshake), whose answers
   come back, if at all, through Python: a spin then only takes turns from the processes that
   carry them on a small machine.  Not after a bulk burst either: a flow that keeps the thread
   busy wakes it soon anyway.  An idle thread costs nothing, and each spell is bounded.  A spin
   of 0 is a plain poll().

   The wait also tells the bursts whether to read on: a wake-up whose first look found nothing
   brought what just arrived, usually one packet (a ping, a game's update), so a burst that read
   one lone packet sends or writes it and returns to the wait instead of reading again to find
   the descriptor empty; the wait's first look (poll(0), before any spin or sleep) is the read
   that would have found it so.  Bulk comes as super-packets or GRO receives, or
   finds the descriptor ready at the first look, and is read until empty as before.
   Shared by the node's loop (_fastpath_loop.c) and the relay's (_fastpath_relay.c).  Part of
   meshvpn._fastpath. */

#include <errno.h>
#include <sched.h>
#include <time.h>

#include "_fastpath.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void waiter_moved(Waiter *w) { w->moved = 1; }

void waiter_traffic(Waiter *w) {
    if (w->spin_ns > 0 && w->moved) w->spin_until = w->lone ? now_ns() + w->spin_ns : 0;  /* bulk: no spell */
    w->moved = w->lone = 0;
}

int waiter_lone(Waiter *w, int side) {
    int lone = w->waited || (side == SIDE_TUN && now_ns() - w->tun_read_at > SPARSE_NS);
    w->lone |= lone;
    return lone;
}

void waiter_read_tun(Waiter *w) { w->tun_read_at = now_ns(); }

void waiter_more(Waiter *w) { w->waited = 0; }

/* The first look is poll(0) whether or not a spell lasts: what it finds was queued before the
   thread came to wait (bulk), what a later look or the sleep finds came after (waited). */
int waiter_poll(Waiter *w, struct pollfd *fds, nfds_t n, int timeout_ms) {
    int ready = poll(fds, n, 0);
    w->waited = ready == 0 && timeout_ms != 0;
    if (!w->waited) return ready;
    while (w->spin_ns > 0 && now_ns() < w->spin_until) {
        COUNT(w->spins, 1);
        sched_yield();
        ready = poll(fds, n, 0);
        if (ready != 0) return ready;
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
    w->moved = w->waited = w->lone = 0;
    w->tun_read_at = 0;
    return 0;
}
