/* The native loop's send side: TUN read → split + seal → one sendmsg(UDP_SEGMENT) per run.

   Why: the send half of a ping waited for the asyncio loop as the receive half did.  A read
   for a peer Python installed as a Sender (its current session on a route over the main
   socket or a pinned one the thread serves, direct or through a relay) is sealed here with the rules of DataPlane.seal_super_packet / seal_packets and
   SendBuffer (a run: messages of one size for one destination, back to back, at most 64 and
   65507 bytes, closed by a shorter message); any other read (another destination, a relayed
   route on another transport (TURN, a stream, a pinned socket the thread does not serve), broadcast and multicast, a packet whose checksum must be completed, a session near its
   counter limit, a malformed super-packet, while access rules are active a flow not in the flow cache) goes to Python whole, which seals it as before.
   Counters come from the session's NativeCounter, one atomic add per batch, so the two threads
   never use one twice.  Part of meshvpn._fastpath (see _fastpath_loop.c). */

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/uio.h>
#include <unistd.h>

#include "_fastpath_loop.h"

#define F_NEEDS_CSUM 1
#define MAX_CSUM_START 60

static ssize_t send_one(Loop *L, uint8_t *data, Py_ssize_t size, int seg) {
    struct iovec iov = {data, (size_t)size};
    return gso_send(L->run_fd, &L->run_dest, L->run_dest_len, &iov, 1, seg);
}

/* out[at:at+size] (datagrams of seg bytes): one GSO sendmsg, or one datagram at a time once the
   kernel refused GSO (BatchUdpSocket's rule). */
static void send_chunk(Loop *L, Py_ssize_t at, Py_ssize_t size, Py_ssize_t seg) {
    COUNT(L->sends, 1);
    if (size <= seg || !L->no_gso) {
        if (send_one(L, L->out + at, size, size > seg ? (int)seg : 0) >= 0) return;
        int refused = errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EOPNOTSUPP;
        if (size <= seg || !refused) { COUNT(L->send_errors, 1); return; }
        L->no_gso = 1;
    }
    for (Py_ssize_t end = at + size; at < end; at += seg)
        if (send_one(L, L->out + at, end - at < seg ? end - at : seg, 0) < 0) COUNT(L->send_errors, 1);
}

/* Send the open run in chunks of at most MAX_RUN_SEGMENTS datagrams and MAX_RUN_BYTES (send_contiguous's
   limits: a super-packet sealed with a relay envelope in front can exceed one GSO send). */
void send_run(Loop *L) {
    if (!L->run_count) return;
    Py_ssize_t seg = L->run_seg, per_send = MAX_RUN_BYTES / seg;
    if (per_send > MAX_RUN_SEGMENTS) per_send = MAX_RUN_SEGMENTS;
    if (per_send < 1) per_send = 1;
    for (Py_ssize_t at = 0; at < L->run_at; at += per_send * seg)
        send_chunk(L, at, L->run_at - at < per_send * seg ? L->run_at - at : per_send * seg, seg);
    L->run_at = L->run_count = 0;
}

/* s's destination as the socket `pin` takes it: a sender's endpoint has the main socket's family (IPv4
   mapped on a dual-stack one), and a pinned socket may be plain IPv4 (or IPv6). */
static socklen_t dest_for(const Sender *s, const Pin *pin, struct sockaddr_storage *d) {
    const struct sockaddr_in6 *v6 = (const void *)&s->dest;
    const struct sockaddr_in *v4 = (const void *)&s->dest;
    if (pin->family == AF_INET && s->dest.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
        struct sockaddr_in *out = (void *)d;
        memset(out, 0, sizeof *out);
        out->sin_family = AF_INET;
        out->sin_port = v6->sin6_port;
        memcpy(&out->sin_addr, &v6->sin6_addr.s6_addr[12], 4);
        return sizeof *out;
    }
    if (pin->family == AF_INET6 && s->dest.ss_family == AF_INET) {
        struct sockaddr_in6 *out = (void *)d;
        memset(out, 0, sizeof *out);
        out->sin6_family = AF_INET6;
        out->sin6_port = v4->sin_port;
        out->sin6_addr.s6_addr[10] = out->sin6_addr.s6_addr[11] = 0xFF;
        memcpy(&out->sin6_addr.s6_addr[12], &v4->sin_addr, 4);
        return sizeof *out;
    }
    memcpy(d, &s->dest, s->dest_len);
    return s->dest_len;
}

/* Start a run for s from the socket `pin` (sending the open one first if s cannot join it with a message of size). */
static void place(Loop *L, const Sender *s, const Pin *pin, Py_ssize_t size) {
    struct sockaddr_storage d;
    socklen_t d_len = dest_for(s, pin, &d);
    if (L->run_count) {
        int same = L->run_fd == pin->fd && L->run_dest_len == d_len && !memcmp(&L->run_dest, &d, d_len);
        if (same && size <= L->run_seg && L->run_at + size <= OUT_SIZE) return;
        send_run(L);
    }
    L->run_fd = pin->fd;
    memcpy(&L->run_dest, &d, d_len);
    L->run_dest_len = d_len;
    L->run_seg = size;
}

/* A TUN read of one plain packet p[0:size]: seal it into the run. */
static void seal_packet(Loop *L, Sender *s, const Pin *pin, const uint8_t *p, Py_ssize_t size, double now) {
    Py_ssize_t msg_size = s->prefix_len + OVERHEAD + size;
    place(L, s, pin, msg_size);
    memcpy(L->out + L->run_at, s->prefix, (size_t)s->prefix_len);
    uint8_t *msg = L->out + L->run_at + s->prefix_len;
    memcpy(msg + HEADER_LEN, p, (size_t)size);
    seal_in_place(msg, size, s->remote_index, counter_take(s->counter, 1), s->key);
    L->run_at += msg_size;
    L->run_count++;
    note_sender(L, s);
    s->tx_packets++;
    s->tx_bytes += (uint64_t)size;
    s->last_tx = now;
    COUNT(L->sealed, 1);
    if (msg_size < L->run_seg || L->run_count >= MAX_RUN_SEGMENTS || L->run_at + L->run_seg > MAX_RUN_BYTES)
        send_run(L);
}

/* A TUN super-packet p[0:size]: split and seal it as one run of its own, sent at once. */
static int seal_super_packet(Loop *L, Sender *s, const Pin *pin, const uint8_t *p, Py_ssize_t size,
                             const SplitHeader *v, double now) {
    if (v->gso_size <= 0 || v->csum_start > MAX_CSUM_START || (size + v->gso_size - 1) / v->gso_size > MAX_RUN_SEGMENTS)
        return 0;
    send_run(L);
    uint64_t first = 0;
    Py_ssize_t first_size = 0, written = 0;
    const char *error;
    Py_ssize_t count = seal_segments(p, size, v, s->key, s->remote_index, &first, s->counter, L->out, OUT_SIZE,
                                     s->prefix, s->prefix_len, &first_size, &written, &error);
    if (count <= 0) return 0;
    L->run_fd = pin->fd;
    L->run_dest_len = dest_for(s, pin, &L->run_dest);
    L->run_seg = first_size;
    L->run_at = written;
    L->run_count = count;
    note_sender(L, s);
    s->tx_packets += (uint64_t)count;
    s->tx_bytes += (uint64_t)(written - count * (s->prefix_len + OVERHEAD));
    s->last_tx = now;
    COUNT(L->sealed, (uint64_t)count);
    send_run(L);
    return 1;
}

/* One TUN read (virtio header first): sealed here, or 0 for Python to take it. */
static int seal_read(Loop *L, const uint8_t *b, Py_ssize_t n, double now) {
    if (n < 10 + 20) return 0;
    SplitHeader v;
    uint16_t fields[4];
    memcpy(fields, b + 2, sizeof fields);  /* host byte order */
    v.gso_type = b[1];
    v.gso_size = fields[1];
    v.csum_start = fields[2];
    v.csum_offset = fields[3];
    const uint8_t *p = b + 10;
    Py_ssize_t size = n - 10;
    int version = p[0] >> 4, len = version == 4 ? 4 : 16;
    if (version != 4 && (version != 6 || size < 40)) return 0;
    Sender *s = find_sender(L, p + (version == 4 ? 16 : 24), len);
    if (s == NULL || now >= s->expires_at) return 0;
    const Pin *pin = find_pin(L, s->sid);  /* its pinned socket, while the thread serves it */
    if (pin == NULL) return 0;
    if (__atomic_load_n(&s->counter->value, __ATOMIC_RELAXED) + MAX_RUN_SEGMENTS >= reject_after) return 0;
    if (!flow_passes(L, p, size, 1, now)) return 0;  /* access rules: a flow Python does not track yet */
    if (v.gso_type != GSO_NONE) return seal_super_packet(L, s, pin, p, size, &v, now);
    int start, offset;
    if ((b[0] & F_NEEDS_CSUM) && !partial_at(p, size, &start, &offset)) return 0;
    seal_packet(L, s, pin, p, size, now);
    return 1;
}

/* One TUN read b[0:n]: sealed here, dropped while the fan-out budget is spent (a broadcast or
   multicast), or (after the open run is sent, so Python's sends do not overtake it) handed to Python. */
void take_read(Loop *L, const uint8_t *b, Py_ssize_t n) {
    static const struct sockaddr_storage from_tun = {.ss_family = AF_UNSPEC};
    pthread_mutex_lock(&L->table_lock);
    double now = monotonic();
    int done = seal_read(L, b, n, now) || (n > 10 && fanout_holds(L, b + 10, n - 10, now));
    pthread_mutex_unlock(&L->table_lock);
    if (!done) {
        send_run(L);
        queue_push(&L->queue, b, n, 0, &from_tun);
    }
}
