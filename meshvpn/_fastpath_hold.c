/* The native loop's send turn: bulk TUN reads wait here for their turn, sparse flows go first.

   Why: under a bulk TCP flow the standing queue sat in the TUN's ring: the kernel's tun drops
   when its ring is full instead of stopping its queue, so no qdisc (and this kernel has no
   fq_codel) can hold the queue and let a ping by.  A ping or a game's update waited behind
   megabytes of super-packets, as long as the tunnel takes to seal them.  So each turn the
   thread reads the ring empty into HOLD_SLOTS slots: a read that is a super-packet, or of a flow
   with a read already held, is held; any other (a ping, the ACKs of a flow the other way, a
   game's datagram) is sealed at once.  Then the oldest held read is sealed, one per turn.
   Within a flow the order is kept; flows overtake each other only as fq_codel's sparse flows
   do.  Part of meshvpn._fastpath (see _fastpath_loop.c). */

#include <unistd.h>

#include "_fastpath_loop.h"

#define VNET_LEN 10

/* The flow of the read b[0:n] (virtio header first): protocol, addresses and, for TCP and UDP
   outside fragments, ports, hashed.  Two flows with one hash only keep one order. */
static uint64_t flow_of(const uint8_t *b, Py_ssize_t n) {
    const uint8_t *p = b + VNET_LEN;
    Py_ssize_t size = n - VNET_LEN;
    uint64_t h = FNV_OFFSET;
    if (size >= 20 && p[0] >> 4 == 4) {
        Py_ssize_t ihl = (p[0] & 15) * 4;
        int whole = !(get16(p + 6) & 0x3FFF);  /* neither MF nor a fragment offset */
        h = fnv1a(fnv1a(h, p + 9, 1), p + 12, 8);
        if (whole && (p[9] == PROTO_TCP || p[9] == PROTO_UDP) && size >= ihl + 4) h = fnv1a(h, p + ihl, 4);
    } else if (size >= 40 && p[0] >> 4 == 6) {
        h = fnv1a(fnv1a(h, p + 6, 1), p + 8, 32);
        if ((p[6] == PROTO_TCP || p[6] == PROTO_UDP) && size >= 44) h = fnv1a(h, p + 40, 4);
    }
    return h;
}

static uint8_t *slot(Loop *L, int i) { return L->held + (size_t)(i % HOLD_SLOTS) * TUN_READ; }

static int flow_held(const Loop *L, uint64_t flow) {
    for (int i = 0; i < L->held_count; i++)
        if (L->held_flow[(L->held_head + i) % HOLD_SLOTS] == flow) return 1;
    return 0;
}

/* Read the TUN until it is empty (or BURST reads, or every slot holds one), sealing sparse reads
   at once, then seal the oldest held read.  1 if more waits: held reads, or an unread TUN.  With
   lone, a first read sealed here as one packet is sent at once and the burst ends there (1: the
   next turn drains the TUN). */
int send_burst(Loop *L, int lone) {
    int more = 1;
    for (int i = 0; i < BURST && L->held_count < HOLD_SLOTS; i++) {
        int at = (L->held_head + L->held_count) % HOLD_SLOTS;
        uint8_t *b = slot(L, at);
        ssize_t n = read(L->tun_fd, b, TUN_READ);
        if (n < 0) { more = 0; break; }
        COUNT(L->tun_reads, 1);
        uint64_t flow = flow_of(b, n);
        if ((n > VNET_LEN && b[1] != GSO_NONE) || flow_held(L, flow)) {
            L->held_size[at] = n;
            L->held_flow[at] = flow;
            L->held_count++;
        } else {
            take_read(L, b, n);
            if (lone && i == 0 && L->run_count == 1) break;
        }
    }
    if (L->held_count) {
        take_read(L, slot(L, L->held_head), L->held_size[L->held_head]);
        L->held_head = (L->held_head + 1) % HOLD_SLOTS;
        L->held_count--;
    }
    send_run(L);
    return more || L->held_count > 0;
}
