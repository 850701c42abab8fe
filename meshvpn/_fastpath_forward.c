/* Relay forwarding in C: RelayCore's rules (meshvpn/relay/core.py receive_many, _check,
   _relay_streak, _send_datagram) on the registrations Python installed (see _fastpath_forward.h).

   Per RELAY envelope of a receive from a registered UDP endpoint: the sender's token still good,
   its bucket (a NativeBucket Python's registration shares) spent, the envelope well formed, its
   destination registered on a UDP endpoint, its token still good and in the sender's network;
   the envelope is readdressed in place (relay_prefix of the sender's key) and each run for one
   destination leaves with one sendmsg(UDP_SEGMENT).  Drops are counted by RelayCore's reasons.
   An envelope whose first bytes (header, destination, inner header) equal those of the one
   forwarded just before joins its streak and costs only its token.  Anything else is the owner's.
   Part of meshvpn._fastpath. */

#include <errno.h>
#include <netinet/in.h>

#include "_fastpath_forward.h"

#define ROUTE (RELAY_INNER + 4)  /* RelayCore's _SAME_ROUTE: envelope header, key, inner header */
#define MAX_GSO_BYTES 65507
#define KIND_RELAY_COOKIE 10
#define KIND_LAST 11

static size_t key_hash(const uint8_t *key) { return (size_t)fnv1a(FNV_OFFSET, key, 16); }

static size_t link_hash(const struct sockaddr_storage *a) {
    uint64_t h = FNV_OFFSET;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)a;
        h = fnv1a(h, (const uint8_t *)&v4->sin_addr, 4);
        return (size_t)fnv1a(h, (const uint8_t *)&v4->sin_port, 2);
    }
    const struct sockaddr_in6 *v6 = (const void *)a;
    h = fnv1a(h, (const uint8_t *)&v6->sin6_addr, 16);
    return (size_t)fnv1a(h, (const uint8_t *)&v6->sin6_port, 2);
}

static Reg *find_key(Forwarder *F, const uint8_t *key) {
    if (F->by_key == NULL) return NULL;
    for (size_t i = key_hash(key) & F->mask; F->by_key[i] >= 0; i = (i + 1) & F->mask)
        if (!memcmp(F->regs[F->by_key[i]].key, key, KEY_LEN)) return &F->regs[F->by_key[i]];
    return NULL;
}

Reg *forward_source(Forwarder *F, const struct sockaddr_storage *a) {
    if (F->by_link == NULL) return NULL;
    for (size_t i = link_hash(a) & F->mask; F->by_link[i] >= 0; i = (i + 1) & F->mask)
        if (same_endpoint(&F->regs[F->by_link[i]].link, a)) return &F->regs[F->by_link[i]];
    return NULL;
}

/* ---- sending: RelayCore._send_datagram's runs, BatchUdpSocket._send's rules ---------- */

static void send_iov(Forwarder *F, const Reg *d, struct iovec *iov, Py_ssize_t n, int seg) {
    COUNT(F->sends, 1);
    if (gso_send(F->udp_fd, &d->link, d->link_len, iov, (size_t)n, seg) >= 0) return;
    int refused = errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EOPNOTSUPP;
    if (!seg || !refused) { COUNT(F->send_errors, 1); return; }
    F->no_gso = 1;  /* for good, as BatchUdpSocket.gso */
    for (Py_ssize_t i = 0; i < n; i++) send_iov(F, d, &iov[i], 1, 0);
}

static void send_run(Forwarder *F) {
    Py_ssize_t n = F->run_count;
    if (!n) return;
    if (n == 1) send_iov(F, F->run_dst, F->run_iov, 1, 0);
    else if (!F->no_gso) send_iov(F, F->run_dst, F->run_iov, n, (int)F->run_seg);
    else for (Py_ssize_t i = 0; i < n; i++) send_iov(F, F->run_dst, &F->run_iov[i], 1, 0);
    F->run_count = 0;
}

/* Append p[0:size] for d: a new run where RelayCore would start one (another destination, a longer
   datagram, after a shorter one); a full GSO send (send_contiguous's limits) continues the run. */
static void add_to_run(Forwarder *F, Reg *d, uint8_t *p, Py_ssize_t size) {
    int fresh = !F->run_count || F->run_dst != d || size > F->run_seg || F->run_short;
    Py_ssize_t per_send = F->run_count ? MAX_GSO_BYTES / F->run_seg : 1;
    if (per_send > FWD_MAX_SEGMENTS) per_send = FWD_MAX_SEGMENTS;
    if (fresh || F->run_count >= per_send) {
        Py_ssize_t seg = fresh ? size : F->run_seg;
        send_run(F);
        F->run_dst = d;
        F->run_seg = seg;
        F->run_short = 0;
        if (fresh) COUNT(F->runs, 1);
    }
    F->run_iov[F->run_count].iov_base = p;
    F->run_iov[F->run_count].iov_len = (size_t)size;
    F->run_count++;
    F->run_short = size < F->run_seg;
}

/* ---- the checks: RelayCore.receive_many for the envelopes of one UDP receive ------------- */

/* wire.decode_relay would accept p[0:size] (already a RELAY header): long enough, a relayable inner header. */
static int decodable(const uint8_t *p, Py_ssize_t size) {
    if (size < ROUTE) return 0;
    const uint8_t *inner = p + RELAY_INNER;
    int kind = inner[1];
    return inner[0] == VERSION && !inner[2] && !inner[3] && kind >= 1 && kind <= KIND_LAST
        && (kind < KIND_RELAY || kind > KIND_RELAY_COOKIE);
}

/* RelayCore._relay_streak: the first has its token, the rest take theirs at once; readdress and send. */
static void relay_streak(Forwarder *F, Batch *B) {
    Py_ssize_t count = B->streak_count, allowed = 1;
    if (count > 1) allowed += bucket_take_many(B->src->bucket, count - 1, B->now);
    if (allowed < count) COUNT(F->drops[FWD_RATE_LIMITED], (uint64_t)(count - allowed));
    uint64_t bytes = 0;
    for (Py_ssize_t i = 0, at = B->streak_at; i < allowed; i++, at += B->seg) {
        Py_ssize_t size = at + B->seg < B->n ? B->seg : B->n - at;
        memcpy(B->b + at + 4, B->src->key, KEY_LEN);
        add_to_run(F, B->streak_dst, B->b + at, size);
        bytes += (uint64_t)size;
    }
    COUNT(F->forwarded, (uint64_t)allowed);
    COUNT(F->forwarded_bytes, bytes);
    B->streak_count = 0;
}

void batch_begin(Batch *B, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, double now, Reg *src) {
    *B = (Batch){b, n, seg, now, src, 0, 0, NULL};
}

/* RelayCore._check, in its order, for an envelope from B->src: its destination if it passed. */
static Reg *check(Forwarder *F, Batch *B, int ok, Reg *d) {
    Reg *s = B->src;
    int drop = FWD_N_DROPS;
    if (s->expires <= B->now) drop = FWD_SENDER_EXPIRED;
    else if (s->last_heard = B->now, !bucket_take(s->bucket, B->now, 1.0)) drop = FWD_RATE_LIMITED;
    else if (!ok) drop = FWD_MALFORMED;
    else if (d == NULL) drop = FWD_NOT_REGISTERED;
    else if (d->expires <= B->now) drop = FWD_DESTINATION_EXPIRED;
    else if (d->network != s->network) drop = FWD_OTHER_NETWORK;
    if (drop == FWD_N_DROPS) return d;
    COUNT(F->drops[drop], 1);
    return NULL;
}

int forward_one(Forwarder *F, Batch *B, Py_ssize_t at, uint8_t *p, Py_ssize_t size) {
    if (B->streak_count && size >= ROUTE && !memcmp(p, B->b + B->streak_at, ROUTE)) {
        B->streak_count++;  /* the bytes that decide its fate equal the streak's first */
        return 1;
    }
    if (B->streak_count) relay_streak(F, B);
    int relay = size >= 4 && p[0] == VERSION && p[1] == KIND_RELAY && !p[2] && !p[3];
    int ok = relay && decodable(p, size);
    Reg *d = ok ? find_key(F, p + 4) : NULL;
    if (!relay || (d != NULL && !d->udp)) return 0;  /* a hello, not an envelope, or for a TCP node */
    d = check(F, B, ok, d);
    if (d != NULL) {
        B->streak_at = at;
        B->streak_count = 1;
        B->streak_dst = d;
    }
    return 1;
}

void batch_end(Forwarder *F, Batch *B) {
    if (B->streak_count) relay_streak(F, B);
    send_run(F);
}

/* ---- the table, installed by Python ----------------------------------------------------- */

void forwarder_init(Forwarder *F, int udp_fd, pthread_mutex_t *lock) {
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    F->udp_fd = udp_fd;
    F->lock = lock;
    F->family = getsockname(udp_fd, (struct sockaddr *)&bound, &bound_len) == 0 ? bound.ss_family : AF_INET;
}

static void clear_table(Reg *regs, Py_ssize_t n, int32_t *by_key, int32_t *by_link) {
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(regs[i].bucket);
    PyMem_Free(regs);
    PyMem_Free(by_key);
    PyMem_Free(by_link);
}

void forwarder_free(Forwarder *F) {
    clear_table(F->regs, F->n_regs, F->by_key, F->by_link);
    F->regs = NULL;
    F->by_key = F->by_link = NULL;
    F->n_regs = 0;
}

static PyObject *take_heard(Forwarder *F) {
    PyObject *rows = PyList_New(0);
    for (Py_ssize_t i = 0; rows != NULL && i < F->n_regs; i++) {
        Reg *r = &F->regs[i];
        if (r->last_heard == 0.0) continue;
        PyObject *row = Py_BuildValue("y#d", (const char *)r->key, (Py_ssize_t)KEY_LEN, r->last_heard);
        if (row == NULL || PyList_Append(rows, row) < 0) Py_CLEAR(rows);
        Py_XDECREF(row);
        r->last_heard = 0.0;
    }
    return rows;
}

PyObject *forwarder_heard(Forwarder *F) {
    pthread_mutex_lock(F->lock);
    PyObject *heard = take_heard(F);
    pthread_mutex_unlock(F->lock);
    return heard;
}

static int parse_reg(PyObject *row, int family, Reg *r) {
    Py_buffer key;
    PyObject *link, *bucket;
    if (!PyArg_ParseTuple(row, "y*lOO!d", &key, &r->network, &link, &NativeBucketType, &bucket, &r->expires)) return -1;
    int ok = key.len == KEY_LEN;
    if (ok) memcpy(r->key, key.buf, KEY_LEN);
    PyBuffer_Release(&key);
    if (!ok) { PyErr_SetString(PyExc_ValueError, "a registration's key is 32 bytes"); return -1; }
    r->udp = link != Py_None;
    if (r->udp && parse_endpoint(link, family, &r->link, &r->link_len) < 0) return -1;
    r->bucket = (NativeBucket *)Py_NewRef(bucket);
    return 0;
}

static int32_t *new_index(size_t size) {
    int32_t *index = PyMem_Malloc(size * sizeof(int32_t));
    if (index != NULL) memset(index, 0xFF, size * sizeof(int32_t));
    return index;
}

PyObject *forwarder_replace(Forwarder *F, PyObject *rows, double offset) {
    if (!PyList_Check(rows)) return PyErr_Format(PyExc_TypeError, "replace() takes a list");
    Py_ssize_t n = PyList_GET_SIZE(rows), parsed = 0;
    size_t size = 16;
    while (size < 2 * (size_t)n) size *= 2;
    if (n > INT32_MAX / 2) return PyErr_NoMemory();
    Reg *regs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Reg));
    int32_t *by_key = new_index(size), *by_link = new_index(size);
    PyObject *result = NULL;
    if (regs == NULL || by_key == NULL || by_link == NULL) { PyErr_NoMemory(); goto done; }
    for (; parsed < n; parsed++) {
        Reg *r = &regs[parsed];
        if (parse_reg(PyList_GET_ITEM(rows, parsed), F->family, r) < 0) goto done;
        size_t i = key_hash(r->key) & (size - 1);
        while (by_key[i] >= 0) i = (i + 1) & (size - 1);
        by_key[i] = (int32_t)parsed;
        if (!r->udp) continue;
        for (i = link_hash(&r->link) & (size - 1); by_link[i] >= 0; i = (i + 1) & (size - 1)) {}
        by_link[i] = (int32_t)parsed;
    }
    pthread_mutex_lock(F->lock);
    result = take_heard(F);
    Reg *old = F->regs;
    int32_t *old_key = F->by_key, *old_link = F->by_link;
    Py_ssize_t old_n = F->n_regs;
    F->regs = regs; F->n_regs = n; F->by_key = by_key; F->by_link = by_link; F->mask = size - 1;
    F->offset = offset;
    pthread_mutex_unlock(F->lock);
    regs = old; parsed = old_n; by_key = old_key; by_link = old_link;
done:
    clear_table(regs, parsed, by_key, by_link);
    return result;
}

#define TAKE(field) __atomic_exchange_n(&F->field, 0, __ATOMIC_RELAXED)

PyObject *forwarder_counts(Forwarder *F) {
    PyObject *heard = forwarder_heard(F);
    if (heard == NULL) return NULL;
    PyObject *drops = PyTuple_New(FWD_N_DROPS);
    for (int i = 0; drops != NULL && i < FWD_N_DROPS; i++) {
        PyObject *count = PyLong_FromUnsignedLongLong(TAKE(drops[i]));
        if (count == NULL) Py_CLEAR(drops);
        else PyTuple_SET_ITEM(drops, i, count);
    }
    if (drops == NULL) { Py_DECREF(heard); return NULL; }
    return Py_BuildValue("N(KKKKK)N", heard, TAKE(forwarded), TAKE(forwarded_bytes), TAKE(runs), TAKE(sends),
                         TAKE(send_errors), drops);
}
