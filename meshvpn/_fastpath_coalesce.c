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

static PyObject *vnet_hdr(int flags, int gso_type, int hdr_len, int gso_size, int csum_start, int csum_offset) {
    uint8_t b[10];
    uint16_t fields[4] = {(uint16_t)hdr_len, (uint16_t)gso_size, (uint16_t)csum_start, (uint16_t)csum_offset};
    b[0] = (uint8_t)flags; b[1] = (uint8_t)gso_type;
    memcpy(b + 2, fields, sizeof fields);  /* host byte order, as the TUN reads it */
    return PyBytes_FromStringAndSize((const char *)b, sizeof b);
}

static uint32_t pseudo_sum(const uint8_t *p, int proto, Py_ssize_t length) {
    uint64_t addresses = p[0] >> 4 == 4 ? sum16(p + 12, 8) : sum16(p + 8, 32);
    return fold(addresses + (uint64_t)proto + (uint64_t)length);
}

/* offload.partial_checksum_at: 1 and (start, offset) if p carries a partial TCP/UDP checksum. */
static int partial_at(const uint8_t *p, Py_ssize_t size, int *start, int *offset) {
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
    PyObject *list;     /* [hdr placeholder, head, payload views...] */
    int l3;
    Py_ssize_t hl, gso, total, room;
    uint32_t next_seq;
} Run;

/* offload._close_run: rewrite the head for the merged length and append the iovec to out. */
static int close_run(Run *run, PyObject *out, int psh) {
    PyObject *hdr;
    int l3 = run->l3;
    if (PyList_GET_SIZE(run->list) == 2) {
        hdr = vnet_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, l3, 16);
    } else {
        Py_buffer head;
        if (PyObject_GetBuffer(PyList_GET_ITEM(run->list, 1), &head, PyBUF_WRITABLE) < 0) return -1;
        uint8_t *h = head.buf;
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
        PyBuffer_Release(&head);
        hdr = vnet_hdr(F_NEEDS_CSUM, l3 == 20 ? GSO_TCPV4 : GSO_TCPV6, (int)run->hl, (int)run->gso, l3, 16);
    }
    if (hdr == NULL) return -1;
    PyList_SetItem(run->list, 0, hdr);
    int appended = PyList_Append(out, run->list);
    Py_CLEAR(run->list);
    return appended;
}

/* Append the payload run->hl.. of packet to the run. */
static int extend_run(Run *run, PyObject *packet, Py_ssize_t size) {
    PyObject *payload = PySequence_GetSlice(packet, run->hl, size);
    if (payload == NULL) return -1;
    int appended = PyList_Append(run->list, payload);
    Py_DECREF(payload);
    run->total += size - run->hl;
    return appended;
}

static int append_pair(PyObject *out, PyObject *hdr, PyObject *packet) {
    if (hdr == NULL) return -1;
    PyObject *pair = PyList_New(2);
    if (pair == NULL) { Py_DECREF(hdr); return -1; }
    PyList_SET_ITEM(pair, 0, hdr);
    PyList_SET_ITEM(pair, 1, Py_NewRef(packet));
    int appended = PyList_Append(out, pair);
    Py_DECREF(pair);
    return appended;
}

const char coalesce_iov_doc[] =
"coalesce_iov(packets) -> list of iovecs\n\n"
"offload.coalesce_iov: group writable packet views into TUN writes [virtio_hdr, head, payload...],\n"
"merging adjacent segments of one TCP flow; heads of merged runs are rewritten in place.";

PyObject *coalesce_iov(PyObject *self, PyObject *packets) {
    PyObject *seq = PySequence_Fast(packets, "packets must be a sequence");
    if (seq == NULL) return NULL;
    PyObject *out = PyList_New(0);
    Run run = {NULL, 0, 0, 0, 0, 0, 0};
    const uint8_t *h = NULL;  /* the head's bytes, alive while run.list holds its view */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *packet = PySequence_Fast_GET_ITEM(seq, i);
        Py_buffer view;
        if (PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE) < 0) goto fail;
        const uint8_t *p = view.buf;
        Py_ssize_t size = view.len;
        PyBuffer_Release(&view);
        int l3, flags;
        Py_ssize_t hl;
        uint32_t seq_no;
        if (run.list != NULL) {
            if (size == run.hl + run.gso) {
                if (same_headers(h, p, run.l3, run.hl, 0) && get32(p + run.l3 + 4) == run.next_seq
                        && (run.l3 != 20 || fold(sum16(p, 20)) == 0xFFFF) && run.room >= run.gso) {
                    if (extend_run(&run, packet, size) < 0) goto fail;
                    run.room -= run.gso;
                    run.next_seq += (uint32_t)run.gso;
                    if (p[run.l3 + 13] & TCP_PSH && close_run(&run, out, 1) < 0) goto fail;
                    continue;
                }
            } else if (size < run.hl + run.gso && size - run.hl <= run.room) {
                if (tcp_candidate(p, size, &l3, &hl, &seq_no, &flags) && l3 == run.l3 && hl == run.hl
                        && seq_no == run.next_seq && same_headers(h, p, run.l3, run.hl, 1)) {
                    if (extend_run(&run, packet, size) < 0 || close_run(&run, out, flags & TCP_PSH) < 0) goto fail;
                    continue;
                }
            }
            if (close_run(&run, out, 0) < 0) goto fail;
        }
        if (!tcp_candidate(p, size, &l3, &hl, &seq_no, &flags)) {
            int start, offset;
            PyObject *hdr = partial_at(p, size, &start, &offset) ? vnet_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, offset)
                                                                 : vnet_hdr(0, GSO_NONE, 0, 0, 0, 0);
            if (append_pair(out, hdr, packet) < 0) goto fail;
            continue;
        }
        if (flags & TCP_PSH) {
            if (append_pair(out, vnet_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, l3, 16), packet) < 0) goto fail;
            continue;
        }
        run.list = PyList_New(2);
        if (run.list == NULL) goto fail;
        PyList_SET_ITEM(run.list, 0, Py_NewRef(Py_None));
        PyList_SET_ITEM(run.list, 1, Py_NewRef(packet));
        h = p;
        run.l3 = l3;
        run.hl = hl;
        run.gso = size - hl;
        run.total = size;
        run.next_seq = seq_no + (uint32_t)run.gso;
        run.room = MAX_IP_PACKET - size;
    }
    if (run.list != NULL && close_run(&run, out, 0) < 0) goto fail;
    Py_DECREF(seq);
    return out;
fail:
    Py_XDECREF(run.list);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}
