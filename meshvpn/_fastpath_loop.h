/* The native loop's shared state (see _fastpath_loop.c): its table, queue and buffers. */

#ifndef MESHVPN_FASTPATH_LOOP_H
#define MESHVPN_FASTPATH_LOOP_H

#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include "_fastpath_forward.h"

#define RECV_SLOT 65535
#define AREA (4 * RECV_SLOT)
#define MAX_PACKETS (AREA / (OVERHEAD + 1) + 1)
#define BURST 64
#define HOLD_SLOTS 32  /* TUN reads held for their turn (_fastpath_hold.c): 2 MiB */
#define RECEIVE_SLICE AREA  /* bytes received before the TUN gets a turn */
#define MAX_ACCEPT 64
#define MAX_SKIP 16
#define IOV_LIMIT 1024
#define COUNTS_EVERY 1
#define QUIET_MS 1  /* the counts wait for a quiet spell this long (see run()) */
#define TUN_READ (10 + 65535)
#define OUT_SIZE (2 * 65536 + 64 * 160)
#define MAX_RUN_BYTES 65507
#define MAX_RUN_SEGMENTS 64
#define FLOW_SLOTS 4096  /* the flow cache (_fastpath_flows.c), a power of two */
#define FLOW_PROBE 8
#define FLOW_KEY 24  /* meshvpn.lan.flowcache.KEY */
#define MAX_EXTENSIONS6 8  /* meshvpn.lan.packets6.MAX_EXTENSIONS */
/* Least seconds between two wake-ups of Python for one entry's receive events (_fastpath_recv.c: a
   relayed receive the route does not expect, a direct one from a new source): a roam or a move is
   acted on within a few ms, a flow that keeps moving wakes Python at most 10 times a second. */
#define WAKE_EVERY 0.1
/* Pinned sockets the thread serves besides the main one (_fastpath_pins.c): meshvpn.node.mappings.LIMIT,
   the extra sockets a node holds open at once, so every one a path can end on is served. */
#define MAX_PINS 256

typedef struct {
    uint32_t index;
    uint8_t key[KEY_LEN];
    NativeWindow *window;  /* a reference held by the table */
    uint8_t overlay[16];
    int overlay_len;
    uint8_t relay_key[KEY_LEN];  /* the peer's key, which a relay envelope from it must carry */
    double expires_at;
    /* counted since Python last looked (noted: on the list of entries that did, see note_entry) */
    int noted;
    uint64_t rx_packets, rx_bytes, failed, spoofed, wrong_key, misdirected;
    uint64_t rx_broadcast, rx_multicast;  /* delivered packets not to the node's own address (the first accepted) */
    double last_rx;  /* the last direct (bare) receive, 0.0 if none */
    struct sockaddr_storage last_src;
    double last_relay_rx;  /* the last receive inside a relay envelope, 0.0 if none */
    struct sockaddr_storage last_relay_src;  /* the relay it came through */
    double woke;  /* when a receive event of this entry last woke Python (_fastpath_recv.c) */
    int roamed;  /* a newest direct receive came from a new source since that wake-up */
} Entry;

/* Where the thread seals for one peer: its current session on a route over the main socket or a pinned
   one (direct, or through a relay with the envelope as prefix). */
typedef struct {
    uint8_t overlay[16];
    int overlay_len;
    uint32_t remote_index;
    uint8_t key[KEY_LEN];
    NativeCounter *counter;  /* a reference held by the table */
    uint8_t prefix[RELAY_INNER];  /* the relay envelope in front of each message, on a relayed route */
    Py_ssize_t prefix_len;
    struct sockaddr_storage dest;
    socklen_t dest_len;
    int sid;  /* the socket to send from: 0 the main one, else the pinned socket of this id (Loop.pin) */
    double expires_at;
    /* counted since Python last looked (noted: on the list of senders that did, see note_sender) */
    int noted;
    uint64_t tx_packets, tx_bytes;
    double last_tx;
} Sender;

/* A hash map from a key (a receiver index, an overlay address) to a row's position (_fastpath_table.c). */
typedef struct {
    uint8_t key[16];
    int len;  /* 0: a free slot */
    Py_ssize_t at;
} KeySlot;

typedef struct {
    KeySlot *slots;  /* mask + 1 of them, at most half used */
    size_t mask;
} KeyMap;

/* One flow the access filter decided (_fastpath_flows.c); until 0.0 is a free slot. */
typedef struct {
    uint8_t key[FLOW_KEY];
    int noted;  /* an outbound flow used since Python last looked (its slot is in Loop.noted) */
    double until, used;
} Flow;

/* A pinned socket the thread serves: its id, the loop's own duplicate of its descriptor, its family. */
typedef struct {
    int sid, fd, family;
} Pin;

typedef struct {
    PyObject_HEAD
    int udp_fd, tun_fd, stop_fd, running, family, no_gso;
    /* the pinned sockets (under table_lock); pins_changed: the thread must look again (change_fd wakes
       it), and close the retired duplicates, which no pin holds any more (_fastpath_pins.c) */
    Pin main, pins[MAX_PINS];  /* main: the main socket as a pin (sid 0) */
    int n_pins, pins_changed, change_fd;
    int *retired, n_retired, retired_room;
    pthread_t thread;
    pthread_mutex_t table_lock;
    Entry *entries;  /* count of them, room for entries_room; entry_map finds them by index */
    Py_ssize_t count, entries_room;
    KeyMap entry_map;
    Sender *senders;  /* n_senders of them, room for senders_room; sender_map finds them by overlay address */
    Py_ssize_t n_senders, senders_room;
    KeyMap sender_map;
    /* the rows that counted since Python last looked, by key, so counts() looks at those only;
       noted_all once a list was full (then every row is looked at) */
    uint32_t *noted_entries;
    KeySlot *noted_senders;
    Py_ssize_t n_noted_entries, n_noted_senders;
    int noted_all;
    uint8_t accept4[4 * MAX_ACCEPT], accept6[16 * MAX_ACCEPT];
    Py_ssize_t n_accept4, n_accept6;
    struct sockaddr_storage skip[MAX_SKIP];
    Py_ssize_t n_skip;
    int filtering;  /* access rules are active: only cached flows pass (_fastpath_flows.c) */
    Flow *flows;
    int *noted, n_noted;
    Queue queue;  /* what the thread hands to Python */
    int wake;  /* the thread's own: a receive burst must wake Python when it ends (_fastpath_recv.c) */
    Forwarder fwd;  /* the envelopes of members registered with this node as their peer relay */
    Waiter waiter;  /* its busy poll after traffic */
    /* thread-wide, since Python last looked (see counts()) */
    uint64_t receives, native, tun_errors, tun_writes, tun_reads, sealed, sends, send_errors;
    uint8_t *area;
    uint8_t **packets;
    Py_ssize_t *sizes;
    CoalesceGroup *groups;
    /* the send side: TUN reads held for their turn (a ring of HOLD_SLOTS slots of TUN_READ bytes, with
       each one's size and flow), and the open run of sealed messages for one destination */
    uint8_t *held, *out;
    Py_ssize_t held_size[HOLD_SLOTS];
    uint64_t held_flow[HOLD_SLOTS];
    int held_head, held_count;
    Py_ssize_t run_at, run_seg, run_count;
    int run_fd;
    struct sockaddr_storage run_dest;
    socklen_t run_dest_len;
    /* the fan-out hold (_fastpath_fanout.c): until when, set by Python; reads dropped so, taken by Python */
    double fanout_until;
    uint64_t fanout_held;
} Loop;

static inline double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* _fastpath_table.c: the table's lookups (under table_lock), counts and the Python methods that change it */
Entry *find_entry(Loop *L, uint32_t index);
Sender *find_sender(Loop *L, const uint8_t *dst, int len);
PyObject *take_counts(Loop *L);
/* The row is about to count: counts() will look at it. */
void note_entry(Loop *L, Entry *e);
void note_sender(Loop *L, Sender *s);
PyObject *loop_replace(Loop *L, PyObject *args);
PyObject *loop_patch(Loop *L, PyObject *args);
PyObject *loop_installed(Loop *L, PyObject *unused);
extern const char replace_doc[], patch_doc[], installed_doc[];
void free_table(Loop *L);

/* _fastpath_recv.c: receive on fd (the main socket, or pinned socket `via`); lone (and in send_burst):
   the thread had drained every side before this turn, so a lone first packet is delivered at once
   (see run() in _fastpath_loop.c). */
int receive_burst(Loop *L, int fd, int via, int lone);
/* Under table_lock: whether dest (len bytes) is one of the node's accepted destinations (its own
   address first, then the network's broadcast and the joined groups). */
int accepted(const Loop *L, const uint8_t *dest, int len);

/* _fastpath_pins.c */
/* Under table_lock: the socket to send from for sid (0: the main one), NULL if not pinned. */
const Pin *find_pin(const Loop *L, int sid);
/* The thread, between polls: if the pins changed, their descriptors into fds[0:n] (POLLIN) and their
   ids into vias, the retired ones closed; n, or n_pins (unchanged) if nothing changed. */
int follow_pins(Loop *L, struct pollfd *fds, int *vias, int n_pins);
PyObject *loop_pin(Loop *L, PyObject *args);
extern const char pin_doc[];
void free_pins(Loop *L);

/* _fastpath_send.c */
void send_run(Loop *L);
void take_read(Loop *L, const uint8_t *b, Py_ssize_t n);

/* _fastpath_flows.c */
int flow_key(const uint8_t *p, Py_ssize_t size, int outbound, uint8_t *key);
int flow_passes(Loop *L, const uint8_t *p, Py_ssize_t size, int outbound, double now);
PyObject *loop_flows(Loop *L, PyObject *args);
extern const char flows_doc[];

/* _fastpath_fanout.c: under table_lock, whether the TUN read p[0:size] is a fan-out the thread holds now */
int fanout_holds(Loop *L, const uint8_t *p, Py_ssize_t size, double now);
PyObject *loop_hold_fanout(Loop *L, PyObject *arg);
extern const char hold_fanout_doc[];

/* _fastpath_hold.c */
int send_burst(Loop *L, int lone);

#endif
