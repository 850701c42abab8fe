/* The native loop: a pthread, without the GIL, that owns the receives of the node's main UDP socket
   (and of the pinned sockets a current path uses, _fastpath_pins.c).

   Why: with the loops of _fastpath.c the per-packet work is native, but every receive still
   waits for the asyncio loop to wake, dispatch and run Python around it (most of the round
   trip the tunnel adds).  This thread blocks in poll() on the socket, opens bare transport
   messages to the receiver indexes Python installed (replay window, inner source and
   destination checks, the rules of fastpath.open_run), coalesces them and writes them to the
   TUN, as wireguard-go's receive routine does.  Anything else (handshakes, probes, relay
   envelopes, unknown indexes, datagrams from TURN servers) is copied to a queue for Python,
   which an eventfd wakes.  Python keeps every decision: Loop.patch() changes the rows of the
   peers that changed (Loop.replace() the whole table; _fastpath_table.c) under the table mutex
   and returns what the rows that left counted since the last look; the thread takes the same
   mutex around each receive, so an entry never changes under it.
   Part of meshvpn._fastpath (see _fastpath.c). */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "_fastpath_loop.h"

/* The poll() timeout: none while reads are held; while counts wait for Python, until they are due,
   then QUIET_MS; else COUNTS_EVERY. */
static int poll_timeout(const Loop *L, int unreported, double reported, double now) {
    if (L->held_count) return 0;
    if (!unreported) return COUNTS_EVERY * 1000;
    int due_ms = (int)((reported + COUNTS_EVERY - now) * 1000) + 1;
    return due_ms > QUIET_MS ? due_ms : QUIET_MS;
}

/* Poll the socket and the TUN until stopped.  Python is woken at least every COUNTS_EVERY seconds
   while the thread has counted something, so status and metrics stay current, but only once the
   thread has been quiet for QUIET_MS (or the counts are COUNTS_EVERY overdue): woken between a
   datagram and its reply, Python would compete with the reply for a CPU. */
static void *run(void *arg) {
    Loop *L = arg;
    struct pollfd fds[4 + MAX_PINS] = {{L->udp_fd, POLLIN, 0}, {L->tun_fd, POLLIN, 0}, {L->stop_fd, POLLIN, 0},
                                       {L->change_fd, POLLIN, 0}};
    int vias[MAX_PINS], n_pins = 0;
    double reported = monotonic();
    int unreported = 0, drained = 0;  /* both sides found empty when the turns last ended (none yet) */
    __atomic_store_n(&L->pins_changed, 1, __ATOMIC_RELEASE);  /* the pins installed before the start */
    for (;;) {
        n_pins = follow_pins(L, fds + 4, vias, n_pins);
        int ready = waiter_poll(&L->waiter, fds, 4 + (nfds_t)n_pins, poll_timeout(L, unreported, reported, monotonic()));
        if (ready < 0 && errno != EINTR) break;
        if (ready > 0 || L->held_count) {
            if (fds[2].revents || ((fds[0].revents | fds[1].revents) & POLLNVAL)) break;
            /* Turns until both sides are empty: a turn seals every sparse TUN read and one held
               super-packet (_fastpath_hold.c), then receives at most RECEIVE_SLICE bytes from each
               socket, so a reply or an ACK waits behind one slice of the other direction's bulk, not
               behind a whole burst (64 super-packets, about 10 ms).  After BURST turns poll() looks
               at the stop eventfd (without waiting while reads are held).  Latency first: when all
               sides were drained before this wake-up, a lone packet in the first two turns is sent
               or written before the read that would find its descriptor empty, and the other side's
               turn comes before that read: at the far end of a ping the reply is in the TUN as soon
               as the request is written, and leaves in the second turn.  A burst still drains in
               the turns after. */
            int tun = fds[1].revents != 0 || L->held_count, udp = fds[0].revents != 0, more = 1;
            for (int turn = 0; more && turn < BURST; turn++) {  /* a pinned socket's revents: it may have more */
                int lone = drained && turn < 2;
                more = (tun && send_burst(L, lone)) | (udp && receive_burst(L, L->udp_fd, 0, lone));
                for (struct pollfd *pin = fds + 4; pin < fds + 4 + n_pins; pin++)
                    if (pin->revents && !receive_burst(L, pin->fd, vias[pin - fds - 4], lone)) pin->revents = 0;
                    else more |= pin->revents != 0;
                tun = udp = 1;
            }
            drained = !more;
            waiter_traffic(&L->waiter);
            unreported = 1;
        }
        double since = monotonic() - reported;
        if (unreported && (ready == 0 ? since >= COUNTS_EVERY : since >= 2 * COUNTS_EVERY)) {
            queue_wake(&L->queue);
            reported = monotonic();
            unreported = 0;
        }
    }
    return NULL;
}

/* ---- the Python type ---------------------------------------------------------------- */

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    int udp_fd, tun_fd, busy_poll_us = 0;
    static char *names[] = {"udp_fd", "tun_fd", "busy_poll_us", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii|i:Loop", names, &udp_fd, &tun_fd, &busy_poll_us)) return NULL;
    Waiter waiter;
    if (waiter_init(&waiter, busy_poll_us) < 0) return NULL;
    Loop *L = (Loop *)type->tp_alloc(type, 0);
    if (L == NULL) return NULL;
    L->waiter = waiter;
    L->change_fd = -1;
    L->udp_fd = udp_fd;
    L->tun_fd = tun_fd;
    int queued = queue_init(&L->queue);
    L->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->change_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&L->table_lock, NULL);
    forwarder_init(&L->fwd, udp_fd, &L->table_lock);
    /* The thread reads until EAGAIN: both descriptors must not block (the TUN's and the socket's already do not). */
    if (fcntl(udp_fd, F_SETFL, fcntl(udp_fd, F_GETFL) | O_NONBLOCK) < 0
            || fcntl(tun_fd, F_SETFL, fcntl(tun_fd, F_GETFL) | O_NONBLOCK) < 0) {
        Py_DECREF(L);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    L->area = PyMem_Malloc(AREA);
    L->packets = PyMem_Malloc(sizeof(uint8_t *) * MAX_PACKETS);
    L->sizes = PyMem_Malloc(sizeof(Py_ssize_t) * MAX_PACKETS);
    L->groups = PyMem_Malloc(sizeof(CoalesceGroup) * MAX_PACKETS);
    L->held = PyMem_Malloc((size_t)HOLD_SLOTS * TUN_READ);
    L->out = PyMem_Malloc(OUT_SIZE);
    L->flows = PyMem_Calloc(FLOW_SLOTS, sizeof(Flow));
    L->noted = PyMem_Malloc(sizeof(int) * FLOW_SLOTS);
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    L->family = getsockname(udp_fd, (struct sockaddr *)&bound, &bound_len) == 0 ? bound.ss_family : AF_INET;
    L->main = (Pin){0, udp_fd, L->family};
    if (queued < 0 || L->stop_fd < 0 || L->change_fd < 0) { Py_DECREF(L); return PyErr_SetFromErrno(PyExc_OSError); }
    if (!L->area || !L->packets || !L->sizes || !L->groups || !L->held || !L->out || !L->flows || !L->noted) { Py_DECREF(L); return PyErr_NoMemory(); }
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
    free_table(L);
    free_pins(L);
    forwarder_free(&L->fwd);
    queue_free(&L->queue);
    if (L->stop_fd >= 0) close(L->stop_fd);
    PyMem_Free(L->area); PyMem_Free(L->packets); PyMem_Free(L->sizes); PyMem_Free(L->groups);
    PyMem_Free(L->held); PyMem_Free(L->out); PyMem_Free(L->flows); PyMem_Free(L->noted);
    pthread_mutex_destroy(&L->table_lock);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static PyObject *loop_start(Loop *L, PyObject *unused) {
    if (L->running) Py_RETURN_NONE;
    int error = pthread_create(&L->thread, NULL, run, L);
    if (error) { errno = error; return PyErr_SetFromErrno(PyExc_OSError); }
    L->running = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(counts_doc,
"counts() -> (rows, send_rows, totals)\n\n"
"What the thread counted since the last look (then reset): rows of (local index, packets and bytes\n"
"to the TUN, failed to open, spoofed, relayed under another key, not for us, last direct receive\n"
"time or 0.0, its source endpoint as (host, port) or None, packets delivered to a broadcast and to a multicast\n"
"destination, last receive inside a relay envelope or 0.0, the relay's endpoint or None) for entries that\n"
"counted anything; send_rows of (peer overlay address,\n"
"packets and bytes sealed, last send time); totals (receives, datagrams opened here, reads and\n"
"receives handed over, dropped as the queue was full, TUN writes, failed TUN writes, TUN reads,\n"
"packets sealed here, UDP sends, failed UDP sends).");

#define TAKE(field) __atomic_exchange_n(&L->field, 0, __ATOMIC_RELAXED)

static PyObject *loop_counts(Loop *L, PyObject *unused) {
    /* The totals are taken under the table lock: a burst's receives are counted only after its
       entries' counts (receive_burst), so no receive shows here before its effects do. */
    pthread_mutex_lock(&L->table_lock);
    PyObject *tables = take_counts(L);
    uint64_t t[10] = {TAKE(receives), TAKE(native), TAKE(queue.handed), TAKE(queue.full), TAKE(tun_writes),
                      TAKE(tun_errors), TAKE(tun_reads), TAKE(sealed), TAKE(sends), TAKE(send_errors)};
    pthread_mutex_unlock(&L->table_lock);
    if (tables == NULL) return NULL;  /* the totals are lost with it, as the counts would be on any error here */
    PyObject *totals = Py_BuildValue("KKKKKKKKKK", t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]);
    PyObject *result = totals == NULL ? NULL : Py_BuildValue("OON", PyTuple_GET_ITEM(tables, 0),
                                                             PyTuple_GET_ITEM(tables, 1), totals);
    Py_DECREF(tables);
    return result;
}

PyDoc_STRVAR(take_doc,
"take() -> [(data, (host, port), seg_size, sid), ...]\n\n"
"The datagrams handed over since the last call (each item one or more of seg_size bytes, received on the\n"
"main socket (sid 0) or the pinned socket sid); clears the wake-up.\n"
"A TUN read comes as (read, None, 0, 0); a packet opened for entry i that the access filter must judge\n"
"(see flows()) as (plaintext, None, -1 - i, 0).");

static PyObject *loop_take(Loop *L, PyObject *unused) { return queue_take(&L->queue, 1); }

static PyObject *loop_fileno(Loop *L, PyObject *unused) { return PyLong_FromLong(L->queue.wake_fd); }

PyDoc_STRVAR(relay_replace_doc,
"relay_replace(registrations, offset) -> [(key, last_heard), ...]\n\n"
"Install the registrations of this node's peer relay (RelayLoop.replace's rows) with the offset of the\n"
"relay's clock (Unix seconds) from the monotonic clock; an empty list forwards nothing.");

static PyObject *loop_relay_replace(Loop *L, PyObject *args) {
    PyObject *rows;
    double offset;
    if (!PyArg_ParseTuple(args, "O!d", &PyList_Type, &rows, &offset)) return NULL;
    return forwarder_replace(&L->fwd, rows, offset);
}

static PyObject *loop_relay_counts(Loop *L, PyObject *unused) { return forwarder_counts(&L->fwd); }

static PyObject *loop_spins(Loop *L, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&L->waiter.spins, __ATOMIC_RELAXED));
}

static PyMethodDef loop_methods[] = {
    {"start", (PyCFunction)loop_start, METH_NOARGS, "Start the thread."},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, "Stop the thread and wait for it (idempotent)."},
    {"replace", (PyCFunction)loop_replace, METH_VARARGS, replace_doc},
    {"patch", (PyCFunction)loop_patch, METH_VARARGS, patch_doc},
    {"pin", (PyCFunction)loop_pin, METH_VARARGS, pin_doc},
    {"installed", (PyCFunction)loop_installed, METH_NOARGS, installed_doc},
    {"flows", (PyCFunction)loop_flows, METH_VARARGS, flows_doc},
    {"hold_fanout", (PyCFunction)loop_hold_fanout, METH_O, hold_fanout_doc},
    {"counts", (PyCFunction)loop_counts, METH_NOARGS, counts_doc},
    {"take", (PyCFunction)loop_take, METH_NOARGS, take_doc},
    {"relay_replace", (PyCFunction)loop_relay_replace, METH_VARARGS, relay_replace_doc},
    {"relay_counts", (PyCFunction)loop_relay_counts, METH_NOARGS,
     "relay_counts() -> (heard, (forwarded, forwarded bytes, runs, UDP sends, failed UDP sends), drops):\n"
     "what the peer relay forwarded and dropped since the last look (RelayLoop.counts' reasons)."},
    {"fileno", (PyCFunction)loop_fileno, METH_NOARGS, "The eventfd that is readable while datagrams wait in take()."},
    {"spins", (PyCFunction)loop_spins, METH_NOARGS, "Busy-poll looks that found nothing, since the start."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loop(udp_fd, tun_fd, busy_poll_us=0): the native receive thread over a UDP socket (UDP_GRO on) and a TUN with a virtio header.",
    .tp_new = loop_new,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_methods = loop_methods,
};
