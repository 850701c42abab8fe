/* Relay forwarding in C (_fastpath_forward.c): the registrations Python installed, RelayCore's
   checks on the RELAY envelopes of one UDP receive, and the runs they leave in.

   Why one piece: the server relay's thread (_fastpath_relay.c) and a node relaying for its network
   on its main socket (the native loop, _fastpath_recv.c) forward by the same rules; each owns a
   Forwarder, takes its owner's table mutex around a receive, and hands what the Forwarder does not
   take on its own way (Python's queue, or the node's open path).
   Part of meshvpn._fastpath. */

#ifndef MESHVPN_FASTPATH_FORWARD_H
#define MESHVPN_FASTPATH_FORWARD_H

#include <sys/socket.h>

#include "_fastpath.h"

#define FWD_MAX_SEGMENTS 64

enum { FWD_RATE_LIMITED, FWD_MALFORMED, FWD_NOT_REGISTERED, FWD_OTHER_NETWORK, FWD_SENDER_EXPIRED,
       FWD_DESTINATION_EXPIRED, FWD_N_DROPS };

typedef struct {
    uint8_t key[KEY_LEN];
    long network;  /* Python's number for the registration's network */
    int udp;  /* on a UDP endpoint (the thread forwards to it); else on a TCP stream, which Python serves */
    struct sockaddr_storage link;
    socklen_t link_len;
    NativeBucket *bucket;  /* a reference held by the table */
    double expires;  /* when its token runs out, on the relay's clock */
    double last_heard;  /* of the last envelope the thread checked, 0.0 if none since Python looked */
} Reg;

typedef struct {
    int udp_fd, family, no_gso;
    pthread_mutex_t *lock;  /* the owner's table mutex, held by its thread around each receive */
    Reg *regs;
    Py_ssize_t n_regs;
    int32_t *by_key, *by_link;  /* open addressing, -1 empty */
    size_t mask;
    double offset;  /* added to the owner's clock for the relay's (the node's wall offset) */
    /* the open run: datagrams for one destination, run_seg bytes each but a shorter last */
    Reg *run_dst;
    Py_ssize_t run_seg, run_count;
    int run_short;
    struct iovec run_iov[FWD_MAX_SEGMENTS];
    /* counted since Python last looked (COUNT; taken with an exchange) */
    uint64_t forwarded, forwarded_bytes, runs, sends, send_errors, drops[FWD_N_DROPS];
} Forwarder;

/* The envelopes of one receive b[0:n] (datagrams of seg bytes) from the registered src. */
typedef struct {
    uint8_t *b;
    Py_ssize_t n, seg;
    double now;
    Reg *src;
    Py_ssize_t streak_at, streak_count;  /* envelopes that passed the checks and those with their first bytes */
    Reg *streak_dst;
} Batch;

void forwarder_init(Forwarder *F, int udp_fd, pthread_mutex_t *lock);
void forwarder_free(Forwarder *F);
/* The registration on UDP endpoint a, if any (under the table mutex). */
Reg *forward_source(Forwarder *F, const struct sockaddr_storage *a);
void batch_begin(Batch *B, uint8_t *b, Py_ssize_t n, Py_ssize_t seg, double now, Reg *src);
/* Whether the datagram p[0:size] at offset at is the Forwarder's (forwarded, or dropped and counted):
   a RELAY envelope to no node on a stream.  Otherwise its owner's. */
int forward_one(Forwarder *F, Batch *B, Py_ssize_t at, uint8_t *p, Py_ssize_t size);
/* After the receive's last datagram: forward the open streak and send the runs. */
void batch_end(Forwarder *F, Batch *B);

/* replace(rows[, offset]) and the counts of the Python types that own a Forwarder. */
PyObject *forwarder_replace(Forwarder *F, PyObject *rows, double offset);
/* [(key, last_heard), ...] since the last look (then reset); under the table mutex. */
PyObject *forwarder_heard(Forwarder *F);
/* (heard, (forwarded, forwarded bytes, runs, UDP sends, failed UDP sends), drops by reason). */
PyObject *forwarder_counts(Forwarder *F);

#endif
