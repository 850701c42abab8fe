/* The native loop: a pthread, without the GIL, that owns the node's main UDP socket's receives.

   Why: with the loops of _fastpath.c the per-packet work is native, but every receive still
   waits for the asyncio loop to wake, dispatch and run Python around it (most of the round
   trip the tunnel adds).  This thread blocks in poll() on the socket, opens bare transport
   messages to the receiver indexes Python installed (replay window, inner source and
   destination checks, the rules of fastpath.open_run), coalesces them and writes them to the
   TUN, as wireguard-go's receive routine does.  Anything else (handshakes, probes, relay
   envelopes, unknown indexes, datagrams from TURN servers) is copied to a queue for Python,
   which an eventfd wakes.  Python keeps every decision: Loop.replace() swaps the whole table
   under the table mutex and returns what the thread counted since the last look; the thread
   takes the same mutex around each receive, so an entry never changes under it.
   Part of meshvpn._fastpath (see _fastpath.c). */

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_fastpath.h"

#define RECV_SLOT 65535
#define AREA (4 * RECV_SLOT)
#define MAX_PACKETS (AREA / (OVERHEAD + 1) + 1)
#define BURST 64
#define QUEUE_LIMIT (4 << 20)
#define MAX_ACCEPT 64
#define MAX_SKIP 16
#define IOV_LIMIT 1024
#define COUNTS_EVERY 1
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

typedef struct {
    uint32_t index;
    uint8_t key[KEY_LEN];
    NativeWindow *window;  /* a reference held by the table */
    uint8_t overlay[16];
    int overlay_len;
    double expires_at;
    /* counted since Python last looked */
    uint64_t rx_packets, rx_bytes, failed, spoofed, misdirected;
    double last_rx;
    struct sockaddr_storage last_src;
} Entry;

typedef struct Item {
    struct Item *next;
    Py_ssize_t size, seg;
    struct sockaddr_storage src;
    uint8_t data[];
} Item;

typedef struct {
    PyObject_HEAD
    int udp_fd, tun_fd, wake_fd, stop_fd, running;
    pthread_t thread;
    pthread_mutex_t table_lock, queue_lock;
    Entry *entries;
    Py_ssize_t count, last_hit;
    uint8_t accept4[4 * MAX_ACCEPT], accept6[16 * MAX_ACCEPT];
    Py_ssize_t n_accept4, n_accept6;
    struct sockaddr_storage skip[MAX_SKIP];
    Py_ssize_t n_skip;
    Item *head, **tail;
    Py_ssize_t queued;
    /* thread-wide, since Python last looked: receives, datagrams opened here, handed over, dropped */
    uint64_t receives, native, handed, queue_full, tun_errors, tun_writes;
    uint8_t *area;
    uint8_t **packets;
    Py_ssize_t *sizes;
    CoalesceGroup *groups;
} Loop;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
}

static Entry *find(Loop *L, uint32_t index) {
    if (L->last_hit < L->count && L->entries[L->last_hit].index == index) return &L->entries[L->last_hit];
    for (Py_ssize_t i = 0; i < L->count; i++)
        if (L->entries[i].index == index) { L->last_hit = i; return &L->entries[i]; }
    return NULL;
}

static void wake(Loop *L) {
    uint64_t one = 1;
    ssize_t ignored = write(L->wake_fd, &one, sizeof one);
    (void)ignored;
}

/* Copy b[0:size] (datagrams of seg bytes) to Python's queue; wake it if the queue was empty. */
static void hand_over(Loop *L, const uint8_t *b, Py_ssize_t size, Py_ssize_t seg, const struct sockaddr_storage *src) {
    pthread_mutex_lock(&L->queue_lock);
    if (L->queued + size > QUEUE_LIMIT) {
        L->queue_full++;
        pthread_mutex_unlock(&L->queue_lock);
        return;
    }
    Item *item = malloc(sizeof(Item) + (size_t)size);
    if (item == NULL) { L->queue_full++; pthread_mutex_unlock(&L->queue_lock); return; }
    item->next = NULL;
    item->size = size;
    item->seg = seg;
    item->src = *src;
    memcpy(item->data, b, (size_t)size);
    int was_empty = L->head == NULL;
    *L->tail = item;
    L->tail = &item->next;
    L->queued += size;
    L->handed++;
    pthread_mutex_unlock(&L->queue_lock);
    if (was_empty) wake(L);
}

static int accepted(const Loop *L, const uint8_t *dest, int len) {
    const uint8_t *list = len == 4 ? L->accept4 : L->accept6;
    Py_ssize_t n = len == 4 ? L->n_accept4 : L->n_accept6;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!memcmp(dest, list + i * len, (size_t)len)) return 1;
    return 0;
}

/* fastpath.open_run for one bare message p[0:size] of entry e; the plaintext joins the TUN batch. */
static void open_one(Loop *L, Entry *e, uint8_t *p, Py_ssize_t size, const struct sockaddr_storage *src,
                     double now, Py_ssize_t *npk) {
    Window w = {NULL, NULL, 0, e->window};
    Py_ssize_t length = open_message(p, 0, size, e->index, e->key, &w);
    if (length < 0) { e->failed++; return; }
    e->last_rx = now;
    e->last_src = *src;
    if (length == 0) return;
    uint8_t *body = p + HEADER_LEN;
    int v4 = e->overlay_len == 4;
    if (body[0] >> 4 != (v4 ? 4 : 6) || length < (v4 ? 20 : 40) || memcmp(body + (v4 ? 12 : 8), e->overlay, (size_t)e->overlay_len)) {
        e->spoofed++;
        return;
    }
    if (!accepted(L, body + (v4 ? 16 : 24), e->overlay_len)) { e->misdirected++; return; }
    e->rx_packets++;
    e->rx_bytes += (uint64_t)length;
    L->packets[*npk] = body;
    L->sizes[*npk] = length;
    (*npk)++;
}

/* One receive (datagrams of seg bytes): open what the table knows, hand runs of the rest over. */
static void received(Loop *L, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, const struct sockaddr_storage *src,
                     double now, Py_ssize_t *npk) {
    for (Py_ssize_t i = 0; i < L->n_skip; i++)
        if (same_endpoint(src, &L->skip[i])) { hand_over(L, b, n, seg, src); return; }
    if (n == 0) { hand_over(L, b, 0, 1, src); return; }
    Py_ssize_t other = -1;  /* start of the run being handed over */
    for (Py_ssize_t at = 0; at < n; at += seg) {
        Py_ssize_t size = at + seg < n ? seg : n - at;
        uint8_t *p = b + at;
        Entry *e = NULL;
        if (size >= OVERHEAD && p[0] == VERSION && (p[1] == KIND_DATA || p[1] == KIND_KEEPALIVE)) {
            e = find(L, get32le(p + 4));
            if (e != NULL && now >= e->expires_at) e = NULL;
        }
        if (e == NULL) {
            if (other < 0) other = at;
            continue;
        }
        if (other >= 0) { hand_over(L, b + other, at - other, seg, src); other = -1; }
        open_one(L, e, p, size, src, now, npk);
        L->native++;
    }
    if (other >= 0) hand_over(L, b + other, n - other, seg, src);
}

/* Coalesce the opened packets and write them to the TUN (fastpath.coalesce_iov + TunDevice.write_packets). */
static void write_tun(Loop *L, Py_ssize_t npk) {
    Py_ssize_t made = coalesce_groups(L->packets, L->sizes, npk, L->groups);
    struct iovec iov[IOV_LIMIT];
    for (Py_ssize_t k = 0; k < made; k++) {
        CoalesceGroup *g = &L->groups[k];
        if (g->count + 1 > IOV_LIMIT) { L->tun_errors++; continue; }  /* os.writev would refuse it too */
        iov[0].iov_base = g->hdr;
        iov[0].iov_len = sizeof g->hdr;
        iov[1].iov_base = L->packets[g->first];
        iov[1].iov_len = (size_t)L->sizes[g->first];
        for (Py_ssize_t j = 1; j < g->count; j++) {
            iov[j + 1].iov_base = L->packets[g->first + j] + g->hl;
            iov[j + 1].iov_len = (size_t)(L->sizes[g->first + j] - g->hl);
        }
        if (writev(L->tun_fd, iov, (int)g->count + 1) < 0) L->tun_errors++;
        L->tun_writes++;
    }
}

/* Receive until the socket is empty or BURST receives were taken, then write the TUN once. */
static void burst(Loop *L) {
    Py_ssize_t at = 0, npk = 0;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    for (int i = 0; i < BURST; i++) {
        struct sockaddr_storage src;
        struct iovec iov = {L->area + at, RECV_SLOT};
        struct msghdr mh = {&src, sizeof src, &iov, 1, control.buf, sizeof control.buf, 0};
        ssize_t n = recvmsg(L->udp_fd, &mh, MSG_DONTWAIT);
        if (n < 0) break;
        Py_ssize_t seg = n;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int size;
                memcpy(&size, CMSG_DATA(c), sizeof size);
                if (size > 0) seg = size;
            }
        L->receives++;
        pthread_mutex_lock(&L->table_lock);
        received(L, L->area + at, n, seg, &src, monotonic(), &npk);
        pthread_mutex_unlock(&L->table_lock);
        at += n;
        if (at > AREA - RECV_SLOT || npk + RECV_SLOT / (OVERHEAD + 1) >= MAX_PACKETS) {
            write_tun(L, npk);
            at = npk = 0;
        }
    }
    if (npk) write_tun(L, npk);
}

/* Poll the socket until stopped; Python is woken at least every COUNTS_EVERY seconds while
   the thread has counted something, so status and metrics stay current. */
static void *run(void *arg) {
    Loop *L = arg;
    struct pollfd fds[2] = {{L->udp_fd, POLLIN, 0}, {L->stop_fd, POLLIN, 0}};
    double reported = monotonic();
    int unreported = 0;
    for (;;) {
        int ready = poll(fds, 2, COUNTS_EVERY * 1000);
        if (ready < 0 && errno != EINTR) break;
        if (ready > 0) {
            if (fds[1].revents || (fds[0].revents & POLLNVAL)) break;
            burst(L);
            unreported = 1;
        }
        if (unreported && monotonic() - reported >= COUNTS_EVERY) {
            wake(L);
            reported = monotonic();
            unreported = 0;
        }
    }
    return NULL;
}

/* ---- the Python type ---------------------------------------------------------------- */

static void clear_entries(Loop *L, Entry *entries, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(entries[i].window);
    PyMem_Free(entries);
}

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    int udp_fd, tun_fd;
    if (!PyArg_ParseTuple(args, "ii:Loop", &udp_fd, &tun_fd)) return NULL;
    Loop *L = (Loop *)type->tp_alloc(type, 0);
    if (L == NULL) return NULL;
    L->udp_fd = udp_fd;
    L->tun_fd = tun_fd;
    L->tail = &L->head;
    L->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&L->table_lock, NULL);
    pthread_mutex_init(&L->queue_lock, NULL);
    L->area = PyMem_Malloc(AREA);
    L->packets = PyMem_Malloc(sizeof(uint8_t *) * MAX_PACKETS);
    L->sizes = PyMem_Malloc(sizeof(Py_ssize_t) * MAX_PACKETS);
    L->groups = PyMem_Malloc(sizeof(CoalesceGroup) * MAX_PACKETS);
    if (L->wake_fd < 0 || L->stop_fd < 0) { Py_DECREF(L); return PyErr_SetFromErrno(PyExc_OSError); }
    if (!L->area || !L->packets || !L->sizes || !L->groups) { Py_DECREF(L); return PyErr_NoMemory(); }
    return (PyObject *)L;
}

static PyObject *loop_stop(Loop *L, PyObject *unused) {
    if (L->running) {
        uint64_t one = 1;
        ssize_t ignored = write(L->stop_fd, &one, sizeof one);
        (void)ignored;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(L->thread, NULL);
        Py_END_ALLOW_THREADS
        L->running = 0;
    }
    Py_RETURN_NONE;
}

static void loop_dealloc(Loop *L) {
    Py_XDECREF(loop_stop(L, NULL));
    clear_entries(L, L->entries, L->count);
    for (Item *item = L->head, *next; item != NULL; item = next) { next = item->next; free(item); }
    if (L->wake_fd >= 0) close(L->wake_fd);
    if (L->stop_fd >= 0) close(L->stop_fd);
    PyMem_Free(L->area); PyMem_Free(L->packets); PyMem_Free(L->sizes); PyMem_Free(L->groups);
    pthread_mutex_destroy(&L->table_lock);
    pthread_mutex_destroy(&L->queue_lock);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static PyObject *loop_start(Loop *L, PyObject *unused) {
    if (L->running) Py_RETURN_NONE;
    int error = pthread_create(&L->thread, NULL, run, L);
    if (error) { errno = error; return PyErr_SetFromErrno(PyExc_OSError); }
    L->running = 1;
    Py_RETURN_NONE;
}

/* (host, port) as socket.recvfrom gives it, or None. */
static PyObject *endpoint(const struct sockaddr_storage *a) {
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr_in *v4 = (const void *)a;
    const struct sockaddr_in6 *v6 = (const void *)a;
    if (a->ss_family == AF_INET && inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host) != NULL)
        return Py_BuildValue("si", host, ntohs(v4->sin_port));
    if (a->ss_family == AF_INET6 && inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host) != NULL)
        return Py_BuildValue("si", host, ntohs(v6->sin6_port));
    Py_RETURN_NONE;
}

/* What the table counted since the last look, one tuple per entry that counted anything; resets it. */
static PyObject *take_counts(Loop *L) {
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < L->count; i++) {
        Entry *e = &L->entries[i];
        if (!e->rx_packets && !e->failed && !e->spoofed && !e->misdirected && e->last_rx == 0.0) continue;
        PyObject *src = e->last_rx == 0.0 ? Py_NewRef(Py_None) : endpoint(&e->last_src);
        PyObject *row = src == NULL ? NULL : Py_BuildValue("IKKKKKdN", e->index, e->rx_packets, e->rx_bytes,
                                                           e->failed, e->spoofed, e->misdirected, e->last_rx, src);
        if (row == NULL || PyList_Append(out, row) < 0) Py_CLEAR(out);
        Py_XDECREF(row);
        e->rx_packets = e->rx_bytes = e->failed = e->spoofed = e->misdirected = 0;
        e->last_rx = 0.0;
    }
    return out;
}

static int parse_entry(PyObject *row, Entry *e) {
    Py_buffer key, overlay;
    PyObject *window;
    if (!PyArg_ParseTuple(row, "Iy*O!y*d", &e->index, &key, &NativeWindowType, &window, &overlay, &e->expires_at))
        return -1;
    int ok = key.len == KEY_LEN && (overlay.len == 4 || overlay.len == 16);
    if (ok) {
        memcpy(e->key, key.buf, KEY_LEN);
        memcpy(e->overlay, overlay.buf, (size_t)overlay.len);
        e->overlay_len = (int)overlay.len;
        e->window = (NativeWindow *)Py_NewRef(window);
    }
    PyBuffer_Release(&key); PyBuffer_Release(&overlay);
    if (!ok) PyErr_SetString(PyExc_ValueError, "an entry is (index, 32-byte key, NativeWindow, overlay, expires_at)");
    return ok ? 0 : -1;
}

static int parse_skip(PyObject *row, struct sockaddr_storage *a) {
    Py_buffer host;
    int port;
    if (!PyArg_ParseTuple(row, "y*i", &host, &port)) return -1;
    memset(a, 0, sizeof *a);
    int ok = host.len == 4 || host.len == 16;
    if (host.len == 4) {
        struct sockaddr_in *v4 = (void *)a;
        v4->sin_family = AF_INET; v4->sin_port = htons((uint16_t)port);
        memcpy(&v4->sin_addr, host.buf, 4);
    } else if (host.len == 16) {
        struct sockaddr_in6 *v6 = (void *)a;
        v6->sin6_family = AF_INET6; v6->sin6_port = htons((uint16_t)port);
        memcpy(&v6->sin6_addr, host.buf, 16);
    }
    PyBuffer_Release(&host);
    if (!ok) PyErr_SetString(PyExc_ValueError, "an endpoint is (4 or 16 address bytes, port)");
    return ok ? 0 : -1;
}

PyDoc_STRVAR(replace_doc,
"replace(entries, accept4, accept6, skip) -> counts\n\n"
"Install a new table: entries are (local index, receive key, NativeWindow, peer overlay address,\n"
"expires_at on the monotonic clock); accept4/accept6 the accepted destinations back to back\n"
"(Destinations.accepted); skip the (address bytes, port) endpoints whose datagrams always go to\n"
"Python (TURN servers).  Returns what the old table counted since the last look, as counts() does.");

static PyObject *loop_replace(Loop *L, PyObject *args) {
    PyObject *rows, *skips;
    Py_buffer a4, a6;
    if (!PyArg_ParseTuple(args, "O!y*y*O!", &PyList_Type, &rows, &a4, &a6, &PyList_Type, &skips)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows), n_skip = PyList_GET_SIZE(skips);
    struct sockaddr_storage skip[MAX_SKIP];
    Entry *entries = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Entry));
    Py_ssize_t parsed = 0;
    if (entries == NULL) { PyErr_NoMemory(); goto done; }
    if (a4.len % 4 || a6.len % 16 || a4.len / 4 > MAX_ACCEPT || a6.len / 16 > MAX_ACCEPT || n_skip > MAX_SKIP) {
        PyErr_SetString(PyExc_ValueError, "too many accepted destinations or skipped endpoints");
        goto done;
    }
    for (; parsed < n; parsed++)
        if (parse_entry(PyList_GET_ITEM(rows, parsed), &entries[parsed]) < 0) goto done;
    for (Py_ssize_t i = 0; i < n_skip; i++)
        if (parse_skip(PyList_GET_ITEM(skips, i), &skip[i]) < 0) goto done;
    pthread_mutex_lock(&L->table_lock);
    result = take_counts(L);
    Entry *old = L->entries;
    Py_ssize_t old_count = L->count;
    L->entries = entries;
    L->count = n;
    L->last_hit = 0;
    memcpy(L->accept4, a4.buf, (size_t)a4.len); L->n_accept4 = a4.len / 4;
    memcpy(L->accept6, a6.buf, (size_t)a6.len); L->n_accept6 = a6.len / 16;
    memcpy(L->skip, skip, sizeof(skip[0]) * (size_t)n_skip); L->n_skip = n_skip;
    pthread_mutex_unlock(&L->table_lock);
    entries = old;
    parsed = old_count;
done:
    if (entries != NULL) clear_entries(L, entries, parsed);
    PyBuffer_Release(&a4); PyBuffer_Release(&a6);
    return result;
}

PyDoc_STRVAR(counts_doc,
"counts() -> (rows, totals)\n\n"
"What the thread counted since the last look (then reset): rows of (local index, packets and bytes\n"
"to the TUN, failed to open, spoofed, not for us, last receive time or 0.0, its source endpoint as\n"
"(host, port) or None) for entries that counted anything; totals (receives, datagrams\n"
"opened here, runs handed over, dropped as the queue was full, TUN writes, failed TUN writes).");

static PyObject *loop_counts(Loop *L, PyObject *unused) {
    pthread_mutex_lock(&L->table_lock);
    PyObject *rows = take_counts(L);
    pthread_mutex_unlock(&L->table_lock);
    pthread_mutex_lock(&L->queue_lock);
    PyObject *totals = Py_BuildValue("KKKKKK", L->receives, L->native, L->handed, L->queue_full, L->tun_writes,
                                     L->tun_errors);
    L->receives = L->native = L->handed = L->queue_full = L->tun_writes = L->tun_errors = 0;
    pthread_mutex_unlock(&L->queue_lock);
    return rows == NULL || totals == NULL ? (Py_XDECREF(rows), Py_XDECREF(totals), NULL) : Py_BuildValue("NN", rows, totals);
}

PyDoc_STRVAR(take_doc,
"take() -> [(data, (host, port), seg_size), ...]\n\n"
"The datagrams handed over since the last call (each item one or more of seg_size bytes); clears the wake-up.");

static PyObject *loop_take(Loop *L, PyObject *unused) {
    uint64_t value;
    ssize_t ignored = read(L->wake_fd, &value, sizeof value);
    (void)ignored;
    pthread_mutex_lock(&L->queue_lock);
    Item *item = L->head;
    L->head = NULL;
    L->tail = &L->head;
    L->queued = 0;
    pthread_mutex_unlock(&L->queue_lock);
    PyObject *out = PyList_New(0);
    for (Item *next; item != NULL; item = next) {
        next = item->next;
        PyObject *src = out == NULL ? NULL : endpoint(&item->src);
        PyObject *row = src == NULL ? NULL : Py_BuildValue("y#Nn", (const char *)item->data, item->size, src, item->seg);
        if (row == NULL || PyList_Append(out, row) < 0) Py_CLEAR(out);
        Py_XDECREF(row);
        free(item);
    }
    return out;
}

static PyObject *loop_fileno(Loop *L, PyObject *unused) { return PyLong_FromLong(L->wake_fd); }

static PyMethodDef loop_methods[] = {
    {"start", (PyCFunction)loop_start, METH_NOARGS, "Start the thread."},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, "Stop the thread and wait for it (idempotent)."},
    {"replace", (PyCFunction)loop_replace, METH_VARARGS, replace_doc},
    {"counts", (PyCFunction)loop_counts, METH_NOARGS, counts_doc},
    {"take", (PyCFunction)loop_take, METH_NOARGS, take_doc},
    {"fileno", (PyCFunction)loop_fileno, METH_NOARGS, "The eventfd that is readable while datagrams wait in take()."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loop(udp_fd, tun_fd): the native receive thread over a UDP socket (UDP_GRO on) and a TUN with a virtio header.",
    .tp_new = loop_new,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_methods = loop_methods,
};
