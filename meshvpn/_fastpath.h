/* Helpers shared by the native data path's sources (see _fastpath.c). */

#ifndef MESHVPN_FASTPATH_H
#define MESHVPN_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <poll.h>

#define HEADER_LEN 16
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define VERSION 1
#define KIND_DATA 3
#define KIND_KEEPALIVE 4
#define KIND_RELAY 7
#define KEY_LEN 32
#define RELAY_INNER (4 + KEY_LEN)
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80


static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t get32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64le(const uint8_t *p) { return (uint64_t)get32le(p) | (uint64_t)get32le(p + 4) << 32; }
static inline void put64le(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* Sum of big-endian 16-bit words; an odd last byte is padded with zero. */
static inline uint64_t sum16(const uint8_t *p, Py_ssize_t n) {
    uint64_t s = 0;
    for (Py_ssize_t i = 0; i + 1 < n; i += 2) s += get16(p + i);
    if (n & 1) s += (uint64_t)p[n - 1] << 8;
    return s;
}

/* FNV-1a over p[0:len], from h (FNV_OFFSET to start): the hash of the native tables' keys. */
#define FNV_OFFSET 0xcbf29ce484222325ULL
static inline uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* End-around-carry fold: 1..0xFFFF, 0 only for a zero sum (offload.fold). */
static inline uint32_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

PyObject *coalesce_iov(PyObject *self, PyObject *packets);
extern const char coalesce_iov_doc[];
PyObject *flow_key_of(PyObject *self, PyObject *args);  /* _fastpath_flows.c */
extern const char flow_key_doc[];

/* One TUN write of coalesce_groups: packets first..first+count-1, the head whole and the others
   from hl on, behind the virtio header hdr. */
typedef struct {
    uint8_t hdr[10];
    Py_ssize_t first, count, hl;
} CoalesceGroup;

/* offload.coalesce_iov on raw packets (heads of merged runs rewritten in place): the number of
   groups written to groups (at most n).  Touches no Python object, so it runs without the GIL. */
Py_ssize_t coalesce_groups(uint8_t *const *packets, const Py_ssize_t *sizes, Py_ssize_t n, CoalesceGroup *groups);

/* The protocol constants given to configure() (_fastpath.c). */
extern unsigned long long reject_after;
extern uint64_t window_size;
extern Py_ssize_t window_blocks;
extern PyObject *remote_error, *local_error;

/* meshvpn.replay.ReplayWindow in C, shared by the asyncio thread and the native loop's thread
   (_fastpath_window.c): one mutex per window. */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    uint64_t greatest1;  /* greatest + 1; 0 before the first counter */
    uint64_t *blocks;
} NativeWindow;
extern PyTypeObject NativeWindowType;

/* A window as the open loops see it: a Python ReplayWindow's list of blocks (blocks, GIL held),
   raw blocks, or a NativeWindow (native, locked around each check and update). */
typedef struct {
    PyObject *blocks;
    uint64_t *raw;
    uint64_t greatest1;
    NativeWindow *native;
    int newest;  /* the last update moved greatest forward: the newest counter so far, which alone may roam */
} Window;

int window_check(Window *w, uint64_t counter);
int window_update(Window *w, uint64_t counter);

/* Session.open_into for b[msg:end]: plaintext length, -1 to drop, -2 on a Python error (only
   with a list window). */
Py_ssize_t open_message(uint8_t *b, Py_ssize_t msg, Py_ssize_t end, uint32_t local_index,
                        const uint8_t *key, Window *w);

/* A session's send counter shared by both threads (_fastpath_window.c): one atomic add per batch. */
typedef struct {
    PyObject_HEAD
    uint64_t value;  /* the next counter; only ever advanced, with __atomic_fetch_add */
} NativeCounter;
extern PyTypeObject NativeCounterType;

static inline uint64_t counter_take(NativeCounter *c, uint64_t n) {
    return __atomic_fetch_add(&c->value, n, __ATOMIC_RELAXED);
}

/* The virtio header fields seal_segments needs. */
typedef struct {
    int gso_type, gso_size, csum_start, csum_offset;
} SplitHeader;

/* offload.split_in_place + Session.seal_into for the super-packet head[0:size], into o[0:room], each
   message behind prefix: the number of messages (counters from *counter, or taken from shared when
   given; *counter is set to the first), -1 for a malformed packet (*error says why), -2 when o is
   too small.  Touches no Python object. */
Py_ssize_t seal_segments(const uint8_t *head, Py_ssize_t size, const SplitHeader *v, const uint8_t *key,
                         uint32_t remote_index, uint64_t *counter, NativeCounter *shared, uint8_t *o,
                         Py_ssize_t room, const uint8_t *prefix, Py_ssize_t prefix_len, Py_ssize_t *first_size,
                         Py_ssize_t *written, const char **error);

/* Seal the plaintext msg[16:16+length] in place as the DATA message of counter. */
void seal_in_place(uint8_t *msg, Py_ssize_t length, uint32_t remote_index, uint64_t counter, const uint8_t *key);

/* offload.partial_checksum_at: 1 (and where) if p carries a partial TCP/UDP checksum (_fastpath_coalesce.c). */
int partial_at(const uint8_t *p, Py_ssize_t size, int *start, int *offset);

/* meshvpn.ratelimit.TokenBucket shared by Python and the relay's thread (_fastpath_bucket.c). */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    double rate, burst, tokens, refilled;
} NativeBucket;

/* TokenBucket.take(now, cost) and take_many(count, now), under the bucket's mutex. */
int bucket_take(NativeBucket *b, double now, double cost);
Py_ssize_t bucket_take_many(NativeBucket *b, Py_ssize_t count, double now);

/* The native loop's type (_fastpath_loop.c), the relay's (_fastpath_relay.c) and the token bucket they
   share with Python (_fastpath_bucket.c). */
extern PyTypeObject LoopType, RelayLoopType, NativeBucketType;

/* Counts a native thread adds to and Python takes (exchanged with 0) from the other thread. */
#define COUNT(field, n) __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)

/* What the native threads share (_fastpath_threads.c): the hand-over queue, endpoints, UDP batches. */
#define QUEUE_LIMIT (4 << 20)

typedef struct Item {
    struct Item *next;
    Py_ssize_t size, seg;
    int via;  /* the socket it came from: 0 the main one, else a pinned one's id (Loop.pin) */
    struct sockaddr_storage src;
    uint8_t data[];
} Item;

typedef struct {
    pthread_mutex_t lock;
    Item *head, **tail;
    Py_ssize_t queued;
    int wake_fd;  /* an eventfd, readable while items wait */
    uint64_t handed, full;  /* items queued, items dropped as the queue was full (COUNT) */
} Queue;

int queue_init(Queue *q);
void queue_free(Queue *q);
void queue_wake(Queue *q);
/* Copy b[0:size] (datagrams of seg bytes) from src to the queue; wake Python if it was empty. */
void queue_push(Queue *q, const uint8_t *b, Py_ssize_t size, Py_ssize_t seg, const struct sockaddr_storage *src);
/* queue_push for what arrived on socket `via` (0: the main one). */
void queue_push_via(Queue *q, const uint8_t *b, Py_ssize_t size, Py_ssize_t seg, const struct sockaddr_storage *src,
                    int via);
/* [(data, (host, port) or None, seg), ...]: everything queued, in order; clears the wake-up.  With
   with_via each item is (data, source, seg, via). */
PyObject *queue_take(Queue *q, int with_via);
PyObject *endpoint(const struct sockaddr_storage *a);
int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
int parse_endpoint(PyObject *row, int family, struct sockaddr_storage *a, socklen_t *len);
/* One recvmsg with UDP_GRO into into[0:room]: its size (or -1, errno set), the segment size in *seg
   (the size itself without GRO), and whether the kernel cut it (MSG_TRUNC). */
ssize_t gro_receive(int fd, uint8_t *into, size_t room, struct sockaddr_storage *src, Py_ssize_t *seg, int *truncated);
/* One sendmsg of iov[0:n] to dest: with seg, one UDP_SEGMENT send of datagrams of seg bytes. */
ssize_t gso_send(int fd, const struct sockaddr_storage *dest, socklen_t dest_len, struct iovec *iov, size_t n, int seg);

/* How a native thread waits (_fastpath_wait.c): poll() after a busy poll of spin_ns after its last traffic. */
#define MAX_BUSY_POLL_US 1000
typedef struct {
    int64_t spin_ns;  /* 0: a plain poll() */
    int64_t spin_until;  /* CLOCK_MONOTONIC ns: the busy poll of the last traffic ends then */
    uint64_t spins;  /* looks that found nothing (COUNT), since the start */
} Waiter;
/* The thread just served traffic: the next wait busy-polls until spin_ns from now. */
void waiter_traffic(Waiter *w);
/* poll(fds, n, timeout_ms), busy-polling first (without waiting, yielding between looks) while the
   spell of the last traffic lasts. */
int waiter_poll(Waiter *w, struct pollfd *fds, nfds_t n, int timeout_ms);
/* A busy_poll_us argument (0 to MAX_BUSY_POLL_US) into w; -1 with a ValueError otherwise. */
int waiter_init(Waiter *w, int busy_poll_us);

#endif
