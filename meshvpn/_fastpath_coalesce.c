/* Native coalescing of opened TCP segments into TUN super-packets: offload.coalesce_iov, rule for rule.

   Why: in Python the per-segment header comparisons cost about 1 µs per packet, as much as the
   rest of the receive loop once it is native.  Part of meshvpn._fastpath (see _fastpath.c). */

#include "_fastpath.h"

#define TCP_ACK 0x10
#define F_NEEDS_CSUM 1
#define MAX_IP_PACKET 0xFFFF

static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void vnet_hdr(uint8_t *b, int flags, int gso_type, int hdr_len, int gso_size, int csum_start, int csum_offset) {
    uint16_t fields[4] = {(uint16_t)hdr_len, (uint16_t)gso_size, (uint16_t)csum_start, (uint16_t)csum_offset};
    b[0] = (uint8_t)flags; b[1] = (uint8_t)gso_type;
    memcpy(b + 2, fields, sizeof fields);  /* host byte order, as the TUN reads it */
}

static uint32_t pseudo_sum(const uint8_t *p, int proto, Py_ssize_t length) {
    uint64_t addresses = p[0] >> 4 == 4 ? sum16(p + 12, 8) : sum16(p + 8, 32);
    return fold(addresses + (uint64_t)proto + (uint64_t)length);
}

/* offload.partial_checksum_at: 1 and (start, offset) if p carries a partial TCP/UDP checksum. */
int partial_at(const uint8_t *p, Py_ssize_t size, int *start, int *offset) {
    int proto;
    if (size < 20) return 0;
    int version = p[0] >> 4;
    if (version == 4) {
        *start = (p[0] & 0x0F) * 4;
        proto = p[9];
        if (*start < 20 || (p[6] & 0x3F) || p[7] || get16(p + 2) != size) return 0;
    } else if (version == 6 && size >= 40) {
        *start = 40;
        proto = p[6];
        if (get16(p + 4) + 40 != size) return 0;
    } else {
        return 0;
    }
    if (proto == PROTO_TCP && size >= *start + 20) *offset = 16;
    else if (proto == PROTO_UDP && size >= *start + 8) *offset = 6;
    else return 0;
    return get16(p + *start + *offset) == pseudo_sum(p, proto, size - *start);
}

/* offload._tcp_candidate: may p start or end a coalesced run? */
static int tcp_candidate(const uint8_t *p, Py_ssize_t size, int *l3, Py_ssize_t *hl, uint32_t *seq, int *flags) {
    int start, offset;
    if (size < 40) return 0;
    if (p[0] >> 4 == 4) {
        if (p[0] != 0x45 || p[9] != PROTO_TCP || get16(p + 2) != size) return 0;
        if ((p[6] & 0x3F) || p[7] || fold(sum16(p, 20)) != 0xFFFF) return 0;
        *l3 = 20;
    } else if (p[0] >> 4 == 6) {
        if (size < 60 || p[6] != PROTO_TCP || get16(p + 4) + 40 != size) return 0;
        *l3 = 40;
    } else {
        return 0;
    }
    *hl = *l3 + (p[*l3 + 12] >> 4) * 4;
    *flags = p[*l3 + 13];
    if (*hl < *l3 + 20 || size <= *hl || (*flags != TCP_ACK && *flags != (TCP_ACK | TCP_PSH))) return 0;
    if (!partial_at(p, size, &start, &offset)) return 0;
    *seq = get32(p + *l3 + 4);
    return 1;
}

/* Headers equal but for what may change between segments (offload._Shape masks). */
static int same_headers(const uint8_t *h, const uint8_t *p, int l3, Py_ssize_t hl, int any_size) {
    for (Py_ssize_t i = 0; i < hl; i++) {
        uint8_t x = h[i] ^ p[i];
        if (!x || (i >= l3 + 4 && i < l3 + 8)) continue;
        if (i == l3 + 13) {
            if (x & ~TCP_PSH) return 0;
            continue;
        }
        if (l3 == 20 && (i == 4 || i == 5 || i == 10 || i == 11)) continue;
        if (any_size && ((l3 == 20 ? (i == 2 || i == 3) : (i == 4 || i == 5)) || i == l3 + 16 || i == l3 + 17)) continue;
        return 0;
    }
    return 1;
}

typedef struct {
    CoalesceGroup *group;  /* the open run's group, NULL when none is open */
    int l3;
    Py_ssize_t gso, total, room;
    uint32_t next_seq;
} Run;

/* offload._close_run: rewrite the head for the merged length and set the group's header. */
static void close_run(Run *run, uint8_t *h, int psh) {
    CoalesceGroup *g = run->group;
    int l3 = run->l3;
    run->group = NULL;
    if (g->count == 1) {
        vnet_hdr(g->hdr, F_NEEDS_CSUM, GSO_NONE, 0, 0, l3, 16);
        return;
    }
    Py_ssize_t total = run->total;
    if (l3 == 20) {
        put16(h + 2, (uint32_t)total);
        put16(h + 10, 0);
        put16(h + 10, ~fold(sum16(h, 20)) & 0xFFFF);
    } else {
        put16(h + 4, (uint32_t)(total - 40));
    }
    if (psh) h[l3 + 13] |= TCP_PSH;
    put16(h + l3 + 16, pseudo_sum(h, PROTO_TCP, total - l3));
    vnet_hdr(g->hdr, F_NEEDS_CSUM, l3 == 20 ? GSO_TCPV4 : GSO_TCPV6, (int)g->hl, (int)run->gso, l3, 16);
}

static CoalesceGroup *single(CoalesceGroup *groups, Py_ssize_t *n, Py_ssize_t i) {
    CoalesceGroup *g = &groups[(*n)++];
    g->first = i;
    g->count = 1;
    g->hl = 0;
    return g;
}

Py_ssize_t coalesce_groups(uint8_t *const *packets, const Py_ssize_t *sizes, Py_ssize_t n, CoalesceGroup *groups) {
    Run run = {NULL, 0, 0, 0, 0, 0};
    uint8_t *h = NULL;  /* the open run's head */
    Py_ssize_t made = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *p = packets[i];
        Py_ssize_t size = sizes[i];
        int l3, flags;
        Py_ssize_t hl;
        uint32_t seq_no;
        if (run.group != NULL) {
            Py_ssize_t rhl = run.group->hl;
            if (size == rhl + run.gso) {
                if (same_headers(h, p, run.l3, rhl, 0) && get32(p + run.l3 + 4) == run.next_seq
                        && (run.l3 != 20 || fold(sum16(p, 20)) == 0xFFFF) && run.room >= run.gso) {
                    run.group->count++;
                    run.total += size - rhl;
                    run.room -= run.gso;
                    run.next_seq += (uint32_t)run.gso;
                    if (p[run.l3 + 13] & TCP_PSH) close_run(&run, h, 1);
                    continue;
                }
            } else if (size < rhl + run.gso && size - rhl <= run.room) {
                if (tcp_candidate(p, size, &l3, &hl, &seq_no, &flags) && l3 == run.l3 && hl == rhl
                        && seq_no == run.next_seq && same_headers(h, p, run.l3, rhl, 1)) {
                    run.group->count++;
                    run.total += size - rhl;
                    close_run(&run, h, flags & TCP_PSH);
                    continue;
                }
            }
            close_run(&run, h, 0);
        }
        if (!tcp_candidate(p, size, &l3, &hl, &seq_no, &flags)) {
            int start, offset;
            CoalesceGroup *g = single(groups, &made, i);
            if (partial_at(p, size, &start, &offset)) vnet_hdr(g->hdr, F_NEEDS_CSUM, GSO_NONE, 0, 0, start, offset);
            else vnet_hdr(g->hdr, 0, GSO_NONE, 0, 0, 0, 0);
            continue;
        }
        if (flags & TCP_PSH) {
            vnet_hdr(single(groups, &made, i)->hdr, F_NEEDS_CSUM, GSO_NONE, 0, 0, l3, 16);
            continue;
        }
        run.group = single(groups, &made, i);
        run.group->hl = hl;
        h = packets[i];
        run.l3 = l3;
        run.gso = size - hl;
        run.total = size;
        run.next_seq = seq_no + (uint32_t)run.gso;
        run.room = MAX_IP_PACKET - size;
    }
    if (run.group != NULL) close_run(&run, h, 0);
    return made;
}

/* The iovec [virtio_hdr, head, payload views...] of one group. */
static PyObject *group_iov(PyObject *seq, const CoalesceGroup *g) {
    PyObject *iov = PyList_New(g->count + 1);
    if (iov == NULL) return NULL;
    PyObject *hdr = PyBytes_FromStringAndSize((const char *)g->hdr, sizeof g->hdr);
    if (hdr == NULL) { Py_DECREF(iov); return NULL; }
    PyList_SET_ITEM(iov, 0, hdr);
    PyList_SET_ITEM(iov, 1, Py_NewRef(PySequence_Fast_GET_ITEM(seq, g->first)));
    for (Py_ssize_t j = 1; j < g->count; j++) {
        PyObject *packet = PySequence_Fast_GET_ITEM(seq, g->first + j);
        Py_ssize_t size = PyObject_Length(packet);
        PyObject *payload = size < 0 ? NULL : PySequence_GetSlice(packet, g->hl, size);
        if (payload == NULL) { Py_DECREF(iov); return NULL; }
        PyList_SET_ITEM(iov, j + 1, payload);
    }
    return iov;
}

const char coalesce_iov_doc[] =
"coalesce_iov(packets) -> list of iovecs\n\n"
"offload.coalesce_iov: group writable packet views into TUN writes [virtio_hdr, head, payload...],\n"
"merging adjacent segments of one TCP flow; heads of merged runs are rewritten in place.";

PyObject *coalesce_iov(PyObject *self, PyObject *packets) {
    PyObject *seq = PySequence_Fast(packets, "packets must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = NULL;
    uint8_t **pointers = PyMem_Malloc(sizeof(uint8_t *) * (size_t)(n ? n : 1));
    Py_ssize_t *sizes = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    CoalesceGroup *groups = PyMem_Malloc(sizeof(CoalesceGroup) * (size_t)(n ? n : 1));
    if (pointers == NULL || sizes == NULL || groups == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer view;  /* the packet object keeps its memory alive after the release */
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_WRITABLE) < 0) goto done;
        pointers[i] = view.buf;
        sizes[i] = view.len;
        PyBuffer_Release(&view);
    }
    Py_ssize_t made = coalesce_groups(pointers, sizes, n, groups);
    out = PyList_New(made);
    for (Py_ssize_t k = 0; out != NULL && k < made; k++) {
        PyObject *iov = group_iov(seq, &groups[k]);
        if (iov == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, k, iov);
    }
done:
    PyMem_Free(pointers); PyMem_Free(sizes); PyMem_Free(groups);
    Py_DECREF(seq);
    return out;
}
