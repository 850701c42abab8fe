/* The relay's native thread: it owns the reads of the relay's UDP socket and forwards, without
   the GIL, the RELAY envelopes from one registered UDP endpoint to another of its network.

   Why: per datagram the relay was an epoll wake-up of the asyncio loop, a GRO receive, the
   checks in Python and a GSO send; the wake-up and the dispatch were most of what a relayed
   ping paid over a direct one.  This thread blocks in poll() on the socket and applies
   RelayCore's rules (meshvpn/relay/core.py receive_many, _check, _relay_streak, _send_datagram)
   to the registrations Python installed: the sender registered on the datagram's source, its
   token bucket (a NativeBucket Python's registration shares) spent per envelope, the envelope
   well formed, its destination registered on a UDP endpoint and in the sender's network; it
   readdresses the envelope in place (relay_prefix of the sender's key) and sends each run with
   one sendmsg(UDP_SEGMENT).  Drops are counted by RelayCore's reasons.  Anything else (hellos,
   anything that is not a RELAY envelope, a datagram from an endpoint nobody registered, an
   envelope to a node on a TCP stream) is handed to Python unchanged through the queue
   (_fastpath_threads.c), where RelayCore treats it as before.  Python keeps every registration:
   RelayLoop.replace() swaps the table (key, network, endpoint, bucket) under the table mutex,
   which the thread holds for one receive, and counts() returns what the thread counted
   (forwarded, drops, each node's last_heard) for Python to fold into the core.
   Part of meshvpn._fastpath. */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_fastpath.h"

#define SLOT 65535
#define BURST 64
#define ROUTE (RELAY_INNER + 4)  /* RelayCore's _SAME_ROUTE: envelope header, key, inner header */
#define MAX_SEGMENTS 64
#define MAX_GSO_BYTES 65507
#define KIND_RELAY_HELLO 8
#define KIND_RELAY_COOKIE 10
#define KIND_LAST 11

enum { RATE_LIMITED, MALFORMED, NOT_REGISTERED, OTHER_NETWORK, N_DROPS };

typedef struct {
    uint8_t key[KEY_LEN];
    long network;  /* Python's number for the registration's network */
    int udp;  /* on a UDP endpoint (the thread forwards to it); else on a TCP stream, which Python serves */
    struct sockaddr_storage link;
    socklen_t link_len;
    NativeBucket *bucket;  /* a reference held by the table */
    double last_heard;  /* of the last envelope the thread checked, 0.0 if none since Python looked */
} Reg;

typedef struct {
    PyObject_HEAD
    int udp_fd, stop_fd, running, family, no_gso;
    pthread_t thread;
    pthread_mutex_t table_lock;
    Reg *regs;
    Py_ssize_t n_regs;
    int32_t *by_key, *by_link;  /* open addressing, -1 empty */
    size_t mask;
    Queue queue;
    Waiter waiter;  /* its busy poll after traffic */
    uint8_t *area;
    /* the open run: datagrams for one destination, run_seg bytes each but a shorter last */
    Reg *run_dst;
    Py_ssize_t run_seg, run_count;
    int run_short;
    struct iovec run_iov[MAX_SEGMENTS];
    /* counted since Python last looked (COUNT; taken with an exchange) */
    uint64_t receives, forwarded, forwarded_bytes, runs, sends, send_errors, drops[N_DROPS];
} RelayLoop;

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static size_t key_hash(const uint8_t *key) { return (size_t)fnv1a(0xcbf29ce484222325ULL, key, 16); }

static size_t link_hash(const struct sockaddr_storage *a) {
    uint64_t h = 0xcbf29ce484222325ULL;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)a;
        h = fnv1a(h, (const uint8_t *)&v4->sin_addr, 4);
        return (size_t)fnv1a(h, (const uint8_t *)&v4->sin_port, 2);
    }
    const struct sockaddr_in6 *v6 = (const void *)a;
    h = fnv1a(h, (const uint8_t *)&v6->sin6_addr, 16);
    return (size_t)fnv1a(h, (const uint8_t *)&v6->sin6_port, 2);
}

static Reg *find_key(RelayLoop *R, const uint8_t *key) {
    if (R->by_key == NULL) return NULL;
    for (size_t i = key_hash(key) & R->mask; R->by_key[i] >= 0; i = (i + 1) & R->mask)
        if (!memcmp(R->regs[R->by_key[i]].key, key, KEY_LEN)) return &R->regs[R->by_key[i]];
    return NULL;
}

static Reg *find_link(RelayLoop *R, const struct sockaddr_storage *a) {
    if (R->by_link == NULL) return NULL;
    for (size_t i = link_hash(a) & R->mask; R->by_link[i] >= 0; i = (i + 1) & R->mask)
        if (same_endpoint(&R->regs[R->by_link[i]].link, a)) return &R->regs[R->by_link[i]];
    return NULL;
}

static double wall_clock(void) {  /* time.time(): tokens, hellos and the core's clock are Unix seconds */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- sending: RelayCore._send_datagram's runs, BatchUdpSocket._send's rules ---------- */

static void send_iov(RelayLoop *R, const Reg *d, struct iovec *iov, Py_ssize_t n, int seg) {
    COUNT(R->sends, 1);
    if (gso_send(R->udp_fd, &d->link, d->link_len, iov, (size_t)n, seg) >= 0) return;
    int refused = errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EOPNOTSUPP;
    if (!seg || !refused) { COUNT(R->send_errors, 1); return; }
    R->no_gso = 1;  /* for good, as BatchUdpSocket.gso */
    for (Py_ssize_t i = 0; i < n; i++) send_iov(R, d, &iov[i], 1, 0);
}

static void send_run(RelayLoop *R) {
    Py_ssize_t n = R->run_count;
    if (!n) return;
    if (n == 1) send_iov(R, R->run_dst, R->run_iov, 1, 0);
    else if (!R->no_gso) send_iov(R, R->run_dst, R->run_iov, n, (int)R->run_seg);
    else for (Py_ssize_t i = 0; i < n; i++) send_iov(R, R->run_dst, &R->run_iov[i], 1, 0);
    R->run_count = 0;
}

/* Append p[0:size] for d: a new run where RelayCore would start one (another destination, a longer
   datagram, after a shorter one); a full GSO send (send_contiguous's limits) continues the run. */
static void add_to_run(RelayLoop *R, Reg *d, uint8_t *p, Py_ssize_t size) {
    int fresh = !R->run_count || R->run_dst != d || size > R->run_seg || R->run_short;
    Py_ssize_t per_send = R->run_count ? MAX_GSO_BYTES / R->run_seg : 1;
    if (per_send > MAX_SEGMENTS) per_send = MAX_SEGMENTS;
    if (fresh || R->run_count >= per_send) {
        Py_ssize_t seg = fresh ? size : R->run_seg;
        send_run(R);
        R->run_dst = d;
        R->run_seg = seg;
        R->run_short = 0;
        if (fresh) COUNT(R->runs, 1);
    }
    R->run_iov[R->run_count].iov_base = p;
    R->run_iov[R->run_count].iov_len = (size_t)size;
    R->run_count++;
    R->run_short = size < R->run_seg;
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

typedef struct {
    uint8_t *b;
    Py_ssize_t n, seg;
    double now;
    Reg *src;
    const struct sockaddr_storage *from;
    Py_ssize_t other;  /* start of the datagrams being handed over, -1 if none */
    Py_ssize_t streak_at, streak_count;  /* envelopes that passed the checks and those with their first ROUTE bytes */
    Reg *streak_dst;
} Batch;

/* RelayCore._relay_streak: the first has its token, the rest take theirs at once; readdress and send. */
static void relay_streak(RelayLoop *R, Batch *B) {
    Py_ssize_t count = B->streak_count, allowed = 1;
    if (count > 1) allowed += bucket_take_many(B->src->bucket, count - 1, B->now);
    if (allowed < count) COUNT(R->drops[RATE_LIMITED], (uint64_t)(count - allowed));
    uint64_t bytes = 0;
    for (Py_ssize_t i = 0, at = B->streak_at; i < allowed; i++, at += B->seg) {
        Py_ssize_t size = at + B->seg < B->n ? B->seg : B->n - at;
        memcpy(B->b + at + 4, B->src->key, KEY_LEN);
        add_to_run(R, B->streak_dst, B->b + at, size);
        bytes += (uint64_t)size;
    }
    COUNT(R->forwarded, (uint64_t)allowed);
    COUNT(R->forwarded_bytes, bytes);
    B->streak_count = 0;
}

static void hand_over_pending(RelayLoop *R, Batch *B, Py_ssize_t end) {
    if (B->other >= 0) queue_push(&R->queue, B->b + B->other, end - B->other, B->seg, B->from);
    B->other = -1;
}

/* One datagram p[0:size] at offset at of a receive from the registered B->src. */
static void check_one(RelayLoop *R, Batch *B, Py_ssize_t at, uint8_t *p, Py_ssize_t size) {
    if (B->streak_count && size >= ROUTE && !memcmp(p, B->b + B->streak_at, ROUTE)) {
        B->streak_count++;  /* the bytes that decide its fate equal the streak's first */
        return;
    }
    if (B->streak_count) relay_streak(R, B);
    int relay = size >= 4 && p[0] == VERSION && p[1] == KIND_RELAY && !p[2] && !p[3];
    int ok = relay && decodable(p, size);
    Reg *d = ok ? find_key(R, p + 4) : NULL;
    if (!relay || (d != NULL && !d->udp)) {  /* a hello, not an envelope, or for a TCP node: Python's */
        if (B->other < 0) B->other = at;
        return;
    }
    hand_over_pending(R, B, at);
    B->src->last_heard = B->now;
    if (!bucket_take(B->src->bucket, B->now, 1.0)) COUNT(R->drops[RATE_LIMITED], 1);
    else if (!ok) COUNT(R->drops[MALFORMED], 1);
    else if (d == NULL) COUNT(R->drops[NOT_REGISTERED], 1);
    else if (d->network != B->src->network) COUNT(R->drops[OTHER_NETWORK], 1);
    else {
        B->streak_at = at;
        B->streak_count = 1;
        B->streak_dst = d;
    }
}

/* One receive b[0:n] (datagrams of seg bytes) from src, under the table mutex. */
static void received(RelayLoop *R, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, const struct sockaddr_storage *src) {
    Reg *s = n > 0 ? find_link(R, src) : NULL;
    if (s == NULL || !s->udp) {  /* an empty datagram, or from nobody registered here: all Python's */
        queue_push(&R->queue, b, n, n ? seg : 1, src);
        return;
    }
    Batch B = {b, n, seg, wall_clock(), s, src, -1, 0, 0, NULL};
    for (Py_ssize_t at = 0; at < n; at += seg)
        check_one(R, &B, at, b + at, at + seg < n ? seg : n - at);
    if (B.streak_count) relay_streak(R, &B);
    hand_over_pending(R, &B, n);
    send_run(R);
}

/* One recvmsg (GRO): 0 once the socket is empty. */
static int receive_one(RelayLoop *R) {
    struct sockaddr_storage src;
    Py_ssize_t seg;
    int truncated;
    ssize_t n = gro_receive(R->udp_fd, R->area, SLOT, &src, &seg, &truncated);
    if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;  /* another error: the next receive */
    if (truncated) n = 0;  /* as BatchUdpSocket.recv_into: an empty receive */
    pthread_mutex_lock(&R->table_lock);
    received(R, R->area, n, seg ? seg : 1, &src);
    pthread_mutex_unlock(&R->table_lock);
    COUNT(R->receives, 1);  /* after its sends and hand-overs: a receive counted is a receive done */
    return 1;
}

static void *run(void *arg) {
    RelayLoop *R = arg;
    struct pollfd fds[2] = {{R->udp_fd, POLLIN, 0}, {R->stop_fd, POLLIN, 0}};
    for (;;) {
        int ready = waiter_poll(&R->waiter, fds, 2, -1);
        if (ready < 0 && errno != EINTR) break;
        if (ready <= 0) continue;
        if (fds[1].revents || (fds[0].revents & POLLNVAL)) break;
        for (int i = 0; i < BURST && receive_one(R); i++) {}
        waiter_traffic(&R->waiter);
    }
    return NULL;
}

/* ---- the Python type ------------------------------------------------------------------ */

static void clear_table(Reg *regs, Py_ssize_t n, int32_t *by_key, int32_t *by_link) {
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(regs[i].bucket);
    PyMem_Free(regs);
    PyMem_Free(by_key);
    PyMem_Free(by_link);
}

static PyObject *relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    int udp_fd, busy_poll_us = 0;
    static char *names[] = {"udp_fd", "busy_poll_us", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|i:RelayLoop", names, &udp_fd, &busy_poll_us)) return NULL;
    Waiter waiter;
    if (waiter_init(&waiter, busy_poll_us) < 0) return NULL;
    RelayLoop *R = (RelayLoop *)type->tp_alloc(type, 0);
    if (R == NULL) return NULL;
    R->waiter = waiter;
    R->udp_fd = udp_fd;
    int queued = queue_init(&R->queue);
    R->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&R->table_lock, NULL);
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    R->family = getsockname(udp_fd, (struct sockaddr *)&bound, &bound_len) == 0 ? bound.ss_family : AF_INET;
    R->area = PyMem_Malloc(SLOT);
    if (queued < 0 || R->stop_fd < 0 || fcntl(udp_fd, F_SETFL, fcntl(udp_fd, F_GETFL) | O_NONBLOCK) < 0) {
        Py_DECREF(R);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (R->area == NULL) { Py_DECREF(R); return PyErr_NoMemory(); }
    return (PyObject *)R;
}

static PyObject *relay_stop(RelayLoop *R, PyObject *unused) {
    if (R->running) {
        uint64_t one = 1;
        ssize_t ignored = write(R->stop_fd, &one, sizeof one);
        (void)ignored;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(R->thread, NULL);
        Py_END_ALLOW_THREADS
        R->running = 0;
    }
    Py_RETURN_NONE;
}

static void relay_dealloc(RelayLoop *R) {
    Py_XDECREF(relay_stop(R, NULL));
    clear_table(R->regs, R->n_regs, R->by_key, R->by_link);
    queue_free(&R->queue);
    if (R->stop_fd > 0) close(R->stop_fd);
    PyMem_Free(R->area);
    pthread_mutex_destroy(&R->table_lock);
    Py_TYPE(R)->tp_free((PyObject *)R);
}

static PyObject *relay_start(RelayLoop *R, PyObject *unused) {
    if (R->running) Py_RETURN_NONE;
    int error = pthread_create(&R->thread, NULL, run, R);
    if (error) { errno = error; return PyErr_SetFromErrno(PyExc_OSError); }
    R->running = 1;
    Py_RETURN_NONE;
}

/* [(key, last_heard), ...] of the registrations the thread heard from since the last look (then reset). */
static PyObject *take_heard(RelayLoop *R) {
    PyObject *rows = PyList_New(0);
    for (Py_ssize_t i = 0; rows != NULL && i < R->n_regs; i++) {
        Reg *r = &R->regs[i];
        if (r->last_heard == 0.0) continue;
        PyObject *row = Py_BuildValue("y#d", (const char *)r->key, (Py_ssize_t)KEY_LEN, r->last_heard);
        if (row == NULL || PyList_Append(rows, row) < 0) Py_CLEAR(rows);
        Py_XDECREF(row);
        r->last_heard = 0.0;
    }
    return rows;
}

static int parse_reg(PyObject *row, int family, Reg *r) {
    Py_buffer key;
    PyObject *link, *bucket;
    if (!PyArg_ParseTuple(row, "y*lOO!", &key, &r->network, &link, &NativeBucketType, &bucket)) return -1;
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

PyDoc_STRVAR(replace_doc,
"replace(registrations) -> [(key, last_heard), ...]\n\n"
"Install the registrations: (node key, network number, (address bytes, port) of its UDP endpoint\n"
"or None for a TCP stream, NativeBucket).  Returns the last_heard of the old table, as counts() does.");

static PyObject *relay_replace(RelayLoop *R, PyObject *rows) {
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
        if (parse_reg(PyList_GET_ITEM(rows, parsed), R->family, r) < 0) goto done;
        size_t i = key_hash(r->key) & (size - 1);
        while (by_key[i] >= 0) i = (i + 1) & (size - 1);
        by_key[i] = (int32_t)parsed;
        if (!r->udp) continue;
        for (i = link_hash(&r->link) & (size - 1); by_link[i] >= 0; i = (i + 1) & (size - 1)) {}
        by_link[i] = (int32_t)parsed;
    }
    pthread_mutex_lock(&R->table_lock);
    result = take_heard(R);
    Reg *old = R->regs;
    int32_t *old_key = R->by_key, *old_link = R->by_link;
    Py_ssize_t old_n = R->n_regs;
    R->regs = regs; R->n_regs = n; R->by_key = by_key; R->by_link = by_link; R->mask = size - 1;
    pthread_mutex_unlock(&R->table_lock);
    regs = old; parsed = old_n; by_key = old_key; by_link = old_link;
done:
    clear_table(regs, parsed, by_key, by_link);
    return result;
}

#define TAKE(field) __atomic_exchange_n(&R->field, 0, __ATOMIC_RELAXED)

PyDoc_STRVAR(counts_doc,
"counts() -> (heard, totals, drops)\n\n"
"What the thread counted since the last look (then reset): heard, [(key, last_heard)] of the nodes\n"
"whose envelopes it checked; totals (receives, forwarded, forwarded bytes, runs, UDP sends, failed\n"
"UDP sends, receives handed to Python, hand-overs dropped as the queue was full); drops (rate limited,\n"
"malformed, destination not registered, destination in another network).");

static PyObject *relay_counts(RelayLoop *R, PyObject *unused) {
    pthread_mutex_lock(&R->table_lock);
    PyObject *heard = take_heard(R);
    pthread_mutex_unlock(&R->table_lock);
    if (heard == NULL) return NULL;
    return Py_BuildValue("N(KKKKKKKK)(KKKK)", heard, TAKE(receives), TAKE(forwarded), TAKE(forwarded_bytes),
                         TAKE(runs), TAKE(sends), TAKE(send_errors), TAKE(queue.handed), TAKE(queue.full),
                         TAKE(drops[RATE_LIMITED]), TAKE(drops[MALFORMED]), TAKE(drops[NOT_REGISTERED]),
                         TAKE(drops[OTHER_NETWORK]));
}

static PyObject *relay_take(RelayLoop *R, PyObject *unused) { return queue_take(&R->queue); }

static PyObject *relay_fileno(RelayLoop *R, PyObject *unused) { return PyLong_FromLong(R->queue.wake_fd); }

static PyObject *relay_spins(RelayLoop *R, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&R->waiter.spins, __ATOMIC_RELAXED));
}

static PyMethodDef relay_methods[] = {
    {"start", (PyCFunction)relay_start, METH_NOARGS, "Start the thread."},
    {"stop", (PyCFunction)relay_stop, METH_NOARGS, "Stop the thread and wait for it (idempotent)."},
    {"replace", (PyCFunction)relay_replace, METH_O, replace_doc},
    {"counts", (PyCFunction)relay_counts, METH_NOARGS, counts_doc},
    {"take", (PyCFunction)relay_take, METH_NOARGS,
     "take() -> [(data, (host, port), seg_size), ...]: the receives handed to Python since the last call."},
    {"fileno", (PyCFunction)relay_fileno, METH_NOARGS, "The eventfd that is readable while receives wait in take()."},
    {"spins", (PyCFunction)relay_spins, METH_NOARGS, "Busy-poll looks that found nothing, since the start."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RelayLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.RelayLoop",
    .tp_basicsize = sizeof(RelayLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RelayLoop(udp_fd, busy_poll_us=0): the relay's forwarding thread over its UDP socket (UDP_GRO on).",
    .tp_new = relay_new,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_methods = relay_methods,
};
