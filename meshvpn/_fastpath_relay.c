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
   one sendmsg(UDP_SEGMENT): the Forwarder of _fastpath_forward.c, which a node relaying for its
   network runs in its own native loop too.  Drops are counted by RelayCore's reasons.  Anything else (hellos,
   anything that is not a RELAY envelope, a datagram from an endpoint nobody registered, an
   envelope to a node on a TCP stream) is handed to Python unchanged through the queue
   (_fastpath_threads.c), where RelayCore treats it as before.  Python keeps every registration:
   RelayLoop.replace() swaps the table (key, network, endpoint, bucket) under the table mutex,
   which the thread holds for one receive, and counts() returns what the thread counted
   (forwarded, drops, each node's last_heard) for Python to fold into the core.
   Part of meshvpn._fastpath. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "_fastpath_forward.h"

#define SLOT 65535
#define BURST 64

typedef struct {
    PyObject_HEAD
    int udp_fd, stop_fd, running;
    pthread_t thread;
    pthread_mutex_t table_lock;
    Forwarder fwd;
    Queue queue;
    Waiter waiter;  /* its busy poll after traffic */
    uint8_t *area;
    uint64_t receives;  /* counted since Python last looked (COUNT; taken with an exchange) */
} RelayLoop;

static double wall_clock(void) {  /* time.time(): tokens, hellos and the core's clock are Unix seconds */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One receive b[0:n] (datagrams of seg bytes) from src, under the table mutex: what the Forwarder
   does not take goes to Python, in runs, in order. */
static void received(RelayLoop *R, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, const struct sockaddr_storage *src) {
    Reg *s = n > 0 ? forward_source(&R->fwd, src) : NULL;
    if (s == NULL) {  /* an empty datagram, or from nobody registered here: all Python's */
        queue_push(&R->queue, b, n, n ? seg : 1, src);
        return;
    }
    Batch B;
    batch_begin(&B, b, n, seg, wall_clock(), s);
    Py_ssize_t other = -1;  /* start of the datagrams being handed over */
    for (Py_ssize_t at = 0; at < n; at += seg) {
        if (!forward_one(&R->fwd, &B, at, b + at, at + seg < n ? seg : n - at)) {
            if (other < 0) other = at;
        } else if (other >= 0) {
            queue_push(&R->queue, b + other, at - other, seg, src);
            other = -1;
        }
    }
    batch_end(&R->fwd, &B);
    if (other >= 0) queue_push(&R->queue, b + other, n - other, seg, src);
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
    forwarder_init(&R->fwd, udp_fd, &R->table_lock);
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
    forwarder_free(&R->fwd);
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

PyDoc_STRVAR(replace_doc,
"replace(registrations) -> [(key, last_heard), ...]\n\n"
"Install the registrations: (node key, network number, (address bytes, port) of its UDP endpoint\n"
"or None for a TCP stream, NativeBucket, token expiry).  Returns the last_heard of the old table, as\n"
"counts() does.");

static PyObject *relay_replace(RelayLoop *R, PyObject *rows) { return forwarder_replace(&R->fwd, rows, 0.0); }

PyDoc_STRVAR(counts_doc,
"counts() -> (heard, totals, drops)\n\n"
"What the thread counted since the last look (then reset): heard, [(key, last_heard)] of the nodes\n"
"whose envelopes it checked; totals (receives, forwarded, forwarded bytes, runs, UDP sends, failed\n"
"UDP sends, receives handed to Python, hand-overs dropped as the queue was full); drops (rate limited,\n"
"malformed, destination not registered, destination in another network, sender's token expired,\n"
"destination's token expired).");

static PyObject *relay_counts(RelayLoop *R, PyObject *unused) {
    PyObject *counts = forwarder_counts(&R->fwd);
    if (counts == NULL) return NULL;
    PyObject *own = PyTuple_GET_ITEM(counts, 1);
    PyObject *result = Py_BuildValue("O(KOOOOOKK)O", PyTuple_GET_ITEM(counts, 0),
                                     __atomic_exchange_n(&R->receives, 0, __ATOMIC_RELAXED),
                                     PyTuple_GET_ITEM(own, 0), PyTuple_GET_ITEM(own, 1), PyTuple_GET_ITEM(own, 2),
                                     PyTuple_GET_ITEM(own, 3), PyTuple_GET_ITEM(own, 4),
                                     __atomic_exchange_n(&R->queue.handed, 0, __ATOMIC_RELAXED),
                                     __atomic_exchange_n(&R->queue.full, 0, __ATOMIC_RELAXED),
                                     PyTuple_GET_ITEM(counts, 2));
    Py_DECREF(counts);
    return result;
}

static PyObject *relay_take(RelayLoop *R, PyObject *unused) { return queue_take(&R->queue, 0); }

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
