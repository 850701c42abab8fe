/* The native loop's receive side: UDP (GRO) → open in place → coalesce → TUN (see _fastpath_loop.c),
   on the main socket and on each pinned one (_fastpath_pins.c).
   Part of meshvpn._fastpath. */

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/uio.h>
#include <unistd.h>

#include "_fastpath_loop.h"

int accepted(const Loop *L, const uint8_t *dest, int len) {
    const uint8_t *list = len == 4 ? L->accept4 : L->accept6;
    Py_ssize_t n = len == 4 ? L->n_accept4 : L->n_accept6;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!memcmp(dest, list + i * len, (size_t)len)) return 1;
    return 0;
}

/* Receive events Python acts on at once, which it would otherwise see only when it next folds the
   thread's counts (its next timer, or the thread's own wake-up a second after its last): the receive
   burst ends with a wake-up of Python, which folds the counts.  Python judges; the thread only wakes
   it, at most once per WAKE_EVERY for an entry, never per packet. */
static void wake_python(Loop *L, Entry *e, double now) {
    e->woke = now;
    e->roamed = 0;
    L->wake = 1;
}

/* A message of entry e opened inside relay envelope from src at now.  While the thread sends to the
   peer on a direct route, that may be the peer leaving the path (DataPlane.relay_received's
   relayed_on_direct); while it sends through another relay, the peer may have left that one because
   it died (relay_moved). */
static void relayed(Loop *L, Entry *e, const struct sockaddr_storage *src, double now) {
    if (now < e->woke + WAKE_EVERY) return;
    const Sender *s = find_sender(L, e->overlay, e->overlay_len);
    if (s == NULL || now >= s->expires_at || (s->prefix_len && same_endpoint(&s->dest, src))) return;
    wake_python(L, e, now);
}

/* The newest message of entry e came straight from src at now: from a new source, that is the peer
   roaming (DataPlane.direct_received's roamed, the current session's only).  A roam within WAKE_EVERY
   of the last wake-up is kept (roamed) and wakes Python on the first newest receive after it. */
static void direct(Loop *L, Entry *e, const struct sockaddr_storage *src, double now) {
    if (!same_endpoint(src, &e->last_src)) e->roamed = 1;
    if (e->roamed && now >= e->woke + WAKE_EVERY) wake_python(L, e, now);
    e->last_rx = now;
    e->last_src = *src;
}

/* fastpath.open_run for one message p[0:size] of entry e (bare, or after a relay envelope of skip bytes); the plaintext joins the TUN batch. */
static void open_one(Loop *L, Entry *e, uint8_t *p, Py_ssize_t size, Py_ssize_t skip,
                     const struct sockaddr_storage *src, double now, Py_ssize_t *npk) {
    note_entry(L, e);
    if (skip && memcmp(p + 4, e->relay_key, KEY_LEN)) { e->wrong_key++; return; }
    p += skip;
    size -= skip;
    Window w = {NULL, NULL, 0, e->window, 0};
    Py_ssize_t length = open_message(p, 0, size, e->index, e->key, &w);
    if (length < 0) { e->failed++; return; }
    /* Liveness of the direct path and of the relayed one apart, as DataPlane.open_datagrams.  A bare
       message counts only if it was the newest (it moved the window): an old one never seen, sent
       again from elsewhere, opens but may not move the peer nor count as liveness (docs/security.md). */
    if (skip) {
        e->last_relay_rx = now;
        e->last_relay_src = *src;
        relayed(L, e, src, now);
    } else if (w.newest) {
        direct(L, e, src, now);
    }
    if (length == 0) return;
    uint8_t *body = p + HEADER_LEN;
    int v4 = e->overlay_len == 4;
    if (body[0] >> 4 != (v4 ? 4 : 6) || length < (v4 ? 20 : 40) || memcmp(body + (v4 ? 12 : 8), e->overlay, (size_t)e->overlay_len)) {
        e->spoofed++;
        return;
    }
    const uint8_t *dest = body + (v4 ? 16 : 24);
    if (!accepted(L, dest, e->overlay_len)) { e->misdirected++; return; }
    int group = memcmp(dest, v4 ? L->accept4 : L->accept6, (size_t)e->overlay_len) != 0;  /* not ours */
    if (L->filtering && ((group && body[v4 ? 8 : 7] == 0) || !flow_passes(L, body, length, 0, now))) {
        /* Access rules: a flow the filter has not let in (yet), or a broadcast or multicast out of hops
           (the LAN party counts it): Python judges it. */
        static const struct sockaddr_storage judged = {.ss_family = AF_UNSPEC};
        e->rx_packets++;
        e->rx_bytes += (uint64_t)length;
        queue_push(&L->queue, body, length, -1 - (Py_ssize_t)e->index, &judged);
        return;
    }
    if (group) {  /* the LAN party's */
        if (v4 ? (dest[0] & 0xF0) == 0xE0 : dest[0] == 0xFF) e->rx_multicast++;
        else e->rx_broadcast++;
    }
    e->rx_packets++;
    e->rx_bytes += (uint64_t)length;
    L->packets[*npk] = body;
    L->sizes[*npk] = length;
    (*npk)++;
}

/* One receive (datagrams of seg bytes) on socket via: open what the table knows, hand runs of the rest
   over.  A pinned socket (via > 0) carries a peer's path only: no TURN server and no member of our
   peer relay is heard there, as on the Python path (NodeDaemon._on_mapping_run). */
static void received(Loop *L, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, const struct sockaddr_storage *src,
                     int via, double now, Py_ssize_t *npk) {
    for (Py_ssize_t i = 0; !via && i < L->n_skip; i++)
        if (same_endpoint(src, &L->skip[i])) { queue_push(&L->queue, b, n, seg, src); return; }
    if (n == 0) { queue_push_via(&L->queue, b, 0, 1, src, via); return; }
    Reg *member = via ? NULL : forward_source(&L->fwd, src);  /* registered with us as its peer relay: its envelopes are relayed */
    Batch B;
    if (member != NULL) batch_begin(&B, b, n, seg, now + L->fwd.offset, member);
    Py_ssize_t other = -1;  /* start of the run being handed over */
    for (Py_ssize_t at = 0; at < n; at += seg) {
        Py_ssize_t size = at + seg < n ? seg : n - at;
        uint8_t *p = b + at;
        if (member != NULL && forward_one(&L->fwd, &B, at, p, size)) {
            if (other >= 0) { queue_push(&L->queue, b + other, at - other, seg, src); other = -1; }
            continue;
        }
        Entry *e = NULL;
        Py_ssize_t skip = -1;  /* where the message starts: bare, or inside a relay envelope */
        if (size >= OVERHEAD && p[0] == VERSION && (p[1] == KIND_DATA || p[1] == KIND_KEEPALIVE)) skip = 0;
        else if (size >= RELAY_INNER + OVERHEAD && p[0] == VERSION && p[1] == KIND_RELAY
                 && (p[RELAY_INNER + 1] == KIND_DATA || p[RELAY_INNER + 1] == KIND_KEEPALIVE)) skip = RELAY_INNER;
        if (skip >= 0) {
            e = find_entry(L, get32le(p + skip + 4));
            if (e != NULL && now >= e->expires_at) e = NULL;
        }
        if (e == NULL) {
            if (other < 0) other = at;
            continue;
        }
        if (other >= 0) { queue_push_via(&L->queue, b + other, at - other, seg, src, via); other = -1; }
        open_one(L, e, p, size, skip, src, now, npk);
        COUNT(L->native, 1);
    }
    if (member != NULL) batch_end(&L->fwd, &B);
    if (other >= 0) queue_push_via(&L->queue, b + other, n - other, seg, src, via);
}

/* Coalesce the opened packets and write them to the TUN (fastpath.coalesce_iov + TunDevice.write_packets). */
static void write_tun(Loop *L, Py_ssize_t npk) {
    Py_ssize_t made = coalesce_groups(L->packets, L->sizes, npk, L->groups);
    struct iovec iov[IOV_LIMIT];
    for (Py_ssize_t k = 0; k < made; k++) {
        CoalesceGroup *g = &L->groups[k];
        if (g->count + 1 > IOV_LIMIT) { COUNT(L->tun_errors, 1); continue; }  /* os.writev would refuse it too */
        iov[0].iov_base = g->hdr;
        iov[0].iov_len = sizeof g->hdr;
        iov[1].iov_base = L->packets[g->first];
        iov[1].iov_len = (size_t)L->sizes[g->first];
        for (Py_ssize_t j = 1; j < g->count; j++) {
            iov[j + 1].iov_base = L->packets[g->first + j] + g->hl;
            iov[j + 1].iov_len = (size_t)(L->sizes[g->first + j] - g->hl);
        }
        if (writev(L->tun_fd, iov, (int)g->count + 1) < 0) COUNT(L->tun_errors, 1);
        COUNT(L->tun_writes, 1);
    }
}

/* Receive on fd (socket via) until it is empty, or BURST receives or RECEIVE_SLICE were taken (then 1: more may
   wait), writing the TUN once per area. The receives are counted once the burst is handled (opened,
   counted per entry, written), so counts() never shows a receive whose effects are still to come,
   and then Python is woken if a receive event asked for it (wake_python()).
   With lone, a first receive that is one datagram opened for the TUN is written at once and the
   burst ends there (1: the next turn drains the socket). */
int receive_burst(Loop *L, int fd, int via, int lone) {
    Py_ssize_t at = 0, npk = 0, taken = 0, got = 0;
    int more = 1;
    for (int i = 0; i < BURST && taken < RECEIVE_SLICE; i++) {
        struct sockaddr_storage src;
        Py_ssize_t seg;
        int truncated;
        ssize_t n = gro_receive(fd, L->area + at, RECV_SLOT, &src, &seg, &truncated);
        if (n < 0) { more = 0; break; }
        got++;
        pthread_mutex_lock(&L->table_lock);
        received(L, L->area + at, n, seg, &src, via, monotonic(), &npk);
        pthread_mutex_unlock(&L->table_lock);
        if (lone && i == 0 && n <= seg && npk == 1) break;
        at += n;
        taken += n;
        if (at > AREA - RECV_SLOT || npk + RECV_SLOT / (OVERHEAD + 1) >= MAX_PACKETS) {
            write_tun(L, npk);
            at = npk = 0;
        }
    }
    if (npk) write_tun(L, npk);
    if (got) COUNT(L->receives, (uint64_t)got);
    if (L->wake) {
        L->wake = 0;
        queue_wake(&L->queue);
    }
    return more;
}
