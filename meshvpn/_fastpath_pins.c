/* The pinned sockets the native loop serves besides the main one.

   Why: a pair whose path ends on a birthday socket (meshvpn.node.mappings: the peer's NAT lets in
   only that socket's mapping) sent and received every packet through Python, at a fraction of the
   main socket's throughput and twice its round trip.  Loop.pin() installs the whole set of such
   sockets, (id, descriptor) each, as Python computes it from the current paths; the thread polls
   and receives on them as on the main socket (GRO runs, the same table), hands what it does not
   open to Python tagged with the socket's id, and seals a Sender whose sid names one from it.

   Hand-over: the loop keeps its own duplicate of each descriptor, so Python may close its socket at
   any time without the thread ever polling, reading or sending on a descriptor number that was
   closed (and perhaps reused).  A duplicate that leaves the set is retired under the table mutex;
   the thread, woken by change_fd, rebuilds its poll set between polls (its open run sent) and only
   then closes the retired duplicates, so none is closed while the thread may still use it.
   Without a running thread pin() closes them itself.  Part of meshvpn._fastpath (see
   _fastpath_loop.c). */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_fastpath_loop.h"

const Pin *find_pin(const Loop *L, int sid) {
    if (sid == 0) return &L->main;
    for (int i = 0; i < L->n_pins; i++)
        if (L->pins[i].sid == sid) return &L->pins[i];
    return NULL;
}

static int family_of(int fd) {
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    return getsockname(fd, (struct sockaddr *)&bound, &bound_len) == 0 ? bound.ss_family : AF_INET;
}

static void close_retired(Loop *L) {
    for (int i = 0; i < L->n_retired; i++) close(L->retired[i]);
    L->n_retired = 0;
}

int follow_pins(Loop *L, struct pollfd *fds, int *vias, int n_pins) {
    if (!__atomic_load_n(&L->pins_changed, __ATOMIC_ACQUIRE)) return n_pins;
    uint64_t value;
    ssize_t ignored = read(L->change_fd, &value, sizeof value);
    (void)ignored;
    send_run(L);  /* (sent already at each turn's end) no run may go out on a duplicate closed below */
    pthread_mutex_lock(&L->table_lock);
    for (int i = 0; i < L->n_pins; i++) {
        fds[i] = (struct pollfd){L->pins[i].fd, POLLIN, 0};
        vias[i] = L->pins[i].sid;
    }
    n_pins = L->n_pins;
    close_retired(L);
    L->pins_changed = 0;
    pthread_mutex_unlock(&L->table_lock);
    return n_pins;
}

/* Room for `more` retired descriptors; -1 without memory. */
static int retire_room(Loop *L, int more) {
    if (L->n_retired + more <= L->retired_room) return 0;
    int room = L->n_retired + more + MAX_PINS;
    int *grown = realloc(L->retired, sizeof(int) * (size_t)room);
    if (grown == NULL) return -1;
    L->retired = grown;
    L->retired_room = room;
    return 0;
}

/* The (id, descriptor) pairs of `rows`, at most MAX_PINS, into sids and fds; their count, -1 on error. */
static int parse_pins(PyObject *rows, int *sids, int *fds) {
    Py_ssize_t n = PyList_GET_SIZE(rows);
    int count = 0;
    for (Py_ssize_t i = 0; i < n && count < MAX_PINS; i++) {
        if (!PyArg_ParseTuple(PyList_GET_ITEM(rows, i), "ii", &sids[count], &fds[count])) return -1;
        if (sids[count] <= 0 || fds[count] < 0) {
            PyErr_SetString(PyExc_ValueError, "a pin is (socket id > 0, descriptor)");
            return -1;
        }
        int seen = 0;
        for (int j = 0; j < count; j++) seen |= sids[j] == sids[count];
        if (!seen) count++;
    }
    return count;
}

const char pin_doc[] =
"pin(pins) -> [sid, ...]\n\n"
"Serve these pinned sockets besides the main one: pins are (socket id > 0, descriptor), the whole set\n"
"(a socket not in it is dropped).  The loop keeps its own duplicate of each descriptor, so the caller\n"
"may close its socket whenever it likes.  A sender whose row names a sid sends from that socket; one\n"
"whose sid is not served leaves its reads to Python.  Returns the ids served: the first 256 given, as\n"
"many as meshvpn.node.mappings.LIMIT lets a node hold open.";

PyObject *loop_pin(Loop *L, PyObject *args) {
    PyObject *rows;
    int sids[MAX_PINS], fds[MAX_PINS];
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &rows)) return NULL;
    int n = parse_pins(rows, sids, fds);
    if (n < 0) return NULL;
    Pin next[MAX_PINS];
    int n_next = 0, failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        const Pin *pinned = sids[i] ? find_pin(L, sids[i]) : NULL;  /* only Python changes the pins: no mutex */
        if (pinned != NULL) {
            next[n_next++] = *pinned;
            continue;
        }
        next[n_next] = (Pin){sids[i], fcntl(fds[i], F_DUPFD_CLOEXEC, 0), 0};
        if (next[n_next].fd < 0) failed = 1;
        else next[n_next++].family = family_of(fds[i]);
    }
    pthread_mutex_lock(&L->table_lock);
    if (failed || retire_room(L, L->n_pins) < 0) {  /* the new duplicates go, the installed pins stay */
        for (int i = 0; i < n_next; i++)
            if (find_pin(L, next[i].sid) == NULL) close(next[i].fd);
        pthread_mutex_unlock(&L->table_lock);
        return failed ? PyErr_SetFromErrno(PyExc_OSError) : PyErr_NoMemory();
    }
    for (int j = 0; j < L->n_pins; j++) {
        int kept = 0;
        for (int i = 0; i < n_next; i++) kept |= next[i].sid == L->pins[j].sid;
        if (!kept) L->retired[L->n_retired++] = L->pins[j].fd;
    }
    memcpy(L->pins, next, sizeof(Pin) * (size_t)n_next);
    L->n_pins = n_next;
    if (!L->running) close_retired(L);
    __atomic_store_n(&L->pins_changed, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&L->table_lock);
    uint64_t one = 1;
    ssize_t ignored = write(L->change_fd, &one, sizeof one);
    (void)ignored;
    PyObject *served = PyList_New(0);
    for (int i = 0; served != NULL && i < n_next; i++) {
        PyObject *sid = PyLong_FromLong(next[i].sid);
        if (sid == NULL || PyList_Append(served, sid) < 0) Py_CLEAR(served);
        Py_XDECREF(sid);
    }
    return served;
}

void free_pins(Loop *L) {
    for (int i = 0; i < L->n_pins; i++) close(L->pins[i].fd);
    L->n_pins = 0;
    close_retired(L);
    free(L->retired);
    L->retired = NULL;
    if (L->change_fd >= 0) close(L->change_fd);
}
