/* The LAN party's fan-out budget, held at the thread while it is spent.

   Why: a local application that floods broadcasts or multicast (a storm) has every packet read
   by the thread, which cannot seal it for one peer and hands it to Python; Python's budget
   (meshvpn.lan.fanout) then drops most of them, but each one has woken the asyncio loop first,
   and on a busy machine those wake-ups are CPU a parallel unicast flow loses.  So Python tells
   the thread until when the budget could not pay for the fan-out it last decided
   (hold_fanout(until)), and until then the thread drops broadcast and multicast reads itself
   and counts them.  IGMP and ICMPv6 (MLD, neighbour discovery) are the node's own business and
   always go to Python; unicast never waits here.
   Part of meshvpn._fastpath (see _fastpath_loop.c). */

#include "_fastpath_loop.h"

/* Whether the TUN read p[0:size] (no virtio header) is a broadcast or multicast packet the LAN
   party would fan out: an IPv4 multicast, limited broadcast or one of the accepted addresses that
   is not our own (the network's broadcast, a joined group); IPv6 multicast other than ICMPv6 and
   hop-by-hop (MLD). */
static int fanned_out(const Loop *L, const uint8_t *p, Py_ssize_t size) {
    if (size >= 20 && p[0] >> 4 == 4) {
        const uint8_t *dst = p + 16;
        if (p[9] == 2) return 0;  /* IGMP */
        if ((dst[0] & 0xF0) == 0xE0 || (dst[0] & dst[1] & dst[2] & dst[3]) == 0xFF) return 1;
        return accepted(L, dst, 4) && memcmp(dst, L->accept4, 4) != 0;
    }
    if (size >= 40 && p[0] >> 4 == 6) return p[24] == 0xFF && p[6] != 58 && p[6] != 0;
    return 0;
}

int fanout_holds(Loop *L, const uint8_t *p, Py_ssize_t size, double now) {
    double until;
    __atomic_load(&L->fanout_until, &until, __ATOMIC_RELAXED);
    if (now >= until || !fanned_out(L, p, size)) return 0;
    __atomic_add_fetch(&L->fanout_held, 1, __ATOMIC_RELAXED);
    return 1;
}

const char hold_fanout_doc[] =
"hold_fanout(until) -> held\n\n"
"Drop broadcast and multicast TUN reads (not IGMP, ICMPv6 or hop-by-hop) until `until` on the monotonic\n"
"clock, when the LAN party's budget can pay for a fan-out again (0.0: hand them all over).  Returns how\n"
"many reads the thread dropped so since the last call.";

PyObject *loop_hold_fanout(Loop *L, PyObject *arg) {
    double until = PyFloat_AsDouble(arg);
    if (until == -1.0 && PyErr_Occurred()) return NULL;
    __atomic_store(&L->fanout_until, &until, __ATOMIC_RELAXED);
    return PyLong_FromUnsignedLongLong(__atomic_exchange_n(&L->fanout_held, 0, __ATOMIC_RELAXED));
}
