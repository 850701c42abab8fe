/* Native loops of the data path: split + seal a TSO super-packet, open a run of datagrams
   (and, in _fastpath_coalesce.c, coalesce the opened segments for the TUN write).

   Why: per packet, the Python data path spends more time around libsodium than in it (header
   rewrites of the split, the seal/open wrappers, the loops).  These functions do a whole
   super-packet or a whole GRO run per call, with the exact rules of the pure-Python code
   (meshvpn/node/datapath/offload.py split_in_place, meshvpn/session.py
   Session.seal_into/open_into, meshvpn/replay.py, the source and destination checks of
   meshvpn/node/datapath/fastpath.py open_run), so both produce the same bytes.
   meshvpn/node/datapath/fastpath.py is the Python face; it falls back to the pure-Python code when
   this module is not built.  Lengths from the wire are never trusted: every offset is checked
   against its buffer before use. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sodium.h>

#include "_fastpath.h"

PyObject *remote_error, *local_error;
unsigned long long reject_after;
uint64_t window_size;
Py_ssize_t window_blocks;

static void write_header(uint8_t *p, int kind, uint32_t index, uint64_t counter) {
    p[0] = VERSION; p[1] = (uint8_t)kind; p[2] = p[3] = 0;
    p[4] = (uint8_t)index; p[5] = (uint8_t)(index >> 8); p[6] = (uint8_t)(index >> 16); p[7] = (uint8_t)(index >> 24);
    put64le(p + 8, counter);
}

PyDoc_STRVAR(configure_doc,
"configure(remote_error, local_error, reject_after, window_bits)\n\n"
"The error classes and protocol constants, given once by meshvpn.node.datapath.fastpath.");

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *remote, *local;
    unsigned long long reject;
    Py_ssize_t bits;
    if (!PyArg_ParseTuple(args, "OOKn", &remote, &local, &reject, &bits)) return NULL;
    if (bits < 128 || bits % 64) return PyErr_Format(PyExc_ValueError, "window_bits must be a multiple of 64");
    Py_XSETREF(remote_error, Py_NewRef(remote));
    Py_XSETREF(local_error, Py_NewRef(local));
    reject_after = reject;
    window_blocks = bits / 64;
    window_size = (uint64_t)bits - 64;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(seal_split_doc,
"seal_split(key, remote_index, counter, src, start, end, gso_type, gso_size, csum_start, csum_offset,"
" out, at, prefix) -> (count, end_at, first_size)\n\n"
"Cut the super-packet src[start:end] into segments as offload.split_in_place does and seal each\n"
"as a DATA message (prefix in front) back to back at out[at:].  count messages were written,\n"
"counters counter..counter+count-1 (counter is an int, or a NativeCounter to take them from);\n"
"first_size is the size of the first (the others are equal,\n"
"the last may be shorter).  src is not modified.");

/* The DATA message for counter at msg (header, then the plaintext already at msg + 16, sealed in place). */
void seal_in_place(uint8_t *msg, Py_ssize_t length, uint32_t remote_index, uint64_t counter, const uint8_t *key) {
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    uint8_t *p = msg + HEADER_LEN;
    write_header(msg, KIND_DATA, remote_index, counter);
    put64le(nonce + 4, counter);
    crypto_aead_chacha20poly1305_ietf_encrypt(p, NULL, p, (unsigned long long)length, msg, HEADER_LEN, NULL, nonce, key);
}

Py_ssize_t seal_segments(const uint8_t *head, Py_ssize_t size, const SplitHeader *v, const uint8_t *key,
                         uint32_t remote_index, uint64_t *counter, NativeCounter *shared, uint8_t *o,
                         Py_ssize_t room, const uint8_t *prefix, Py_ssize_t prefix_len, Py_ssize_t *first_size,
                         Py_ssize_t *written, const char **error) {
    int kind = v->gso_type & ~GSO_ECN, l3 = v->csum_start, csum_offset = v->csum_offset;
    int is_tcp = kind == GSO_TCPV4 || kind == GSO_TCPV6;
    if (kind == GSO_NONE || l3 < 0 || size < l3 + (is_tcp ? 20 : 8) || v->gso_size <= 0) {
        *error = "GSO packet shorter than its headers"; return -1;
    }
    int version = head[0] >> 4;
    if ((version != 4 && version != 6) || (kind == GSO_TCPV4 && version != 4) || (kind == GSO_TCPV6 && version != 6)) {
        *error = "GSO type does not match the IP header"; return -1;
    }
    int is_v4 = version == 4;
    int proto = is_tcp ? PROTO_TCP : PROTO_UDP;
    if (is_v4 ? (l3 < 20 || (head[0] & 0x0F) * 4 != l3 || head[9] != proto) : l3 < 40) {
        *error = "GSO packet's IP header does not match its checksum start"; return -1;
    }
    if (csum_offset != (is_tcp ? 16 : 6)) { *error = "GSO checksum offset does not match the transport"; return -1; }
    Py_ssize_t hl = l3 + (is_tcp ? (head[l3 + 12] >> 4) * 4 : 8);
    Py_ssize_t payload = size - hl;
    if ((is_tcp && hl < l3 + 20) || payload <= 0) { *error = "GSO packet has a bad transport header or no payload"; return -1; }

    Py_ssize_t gso = v->gso_size;
    Py_ssize_t count = (payload + gso - 1) / gso;
    Py_ssize_t last_payload = payload - (count - 1) * gso;
    Py_ssize_t per_msg = prefix_len + OVERHEAD + hl;
    if (count * per_msg + payload > room) { *error = NULL; return -2; }
    uint64_t first = shared != NULL ? counter_take(shared, (uint64_t)count) : *counter;
    uint64_t addr_sum = is_v4 ? sum16(head + 12, 8) : sum16(head + 8, 32);
    uint32_t id0 = is_v4 ? get16(head + 4) : 0;
    uint32_t seq0 = is_tcp ? (uint32_t)head[l3 + 4] << 24 | (uint32_t)head[l3 + 5] << 16 | (uint32_t)head[l3 + 6] << 8 | head[l3 + 7] : 0;
    int flags = is_tcp ? head[l3 + 13] : 0;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t seg_payload = i < count - 1 ? gso : last_payload;
        Py_ssize_t seg_len = hl + seg_payload;
        uint8_t *msg = o + at + prefix_len;
        uint8_t *p = msg + HEADER_LEN;
        memcpy(o + at, prefix, (size_t)prefix_len);
        memcpy(p, head, (size_t)hl);
        memcpy(p + hl, head + hl + i * gso, (size_t)seg_payload);
        if (is_v4) {
            put16(p + 2, (uint32_t)seg_len);
            put16(p + 4, (id0 + (uint32_t)i) & 0xFFFF);
            put16(p + 10, 0);
        } else {
            put16(p + 4, (uint32_t)(seg_len - 40));
        }
        if (is_tcp) {
            uint32_t seq = seq0 + (uint32_t)(i * gso);
            p[l3 + 4] = (uint8_t)(seq >> 24); p[l3 + 5] = (uint8_t)(seq >> 16);
            p[l3 + 6] = (uint8_t)(seq >> 8); p[l3 + 7] = (uint8_t)seq;
            int seg_flags = count == 1 ? flags
                : i == 0 ? flags & ~(TCP_FIN | TCP_PSH)
                : i == count - 1 ? flags & ~TCP_CWR
                : flags & ~(TCP_FIN | TCP_PSH | TCP_CWR);
            p[l3 + 13] = (uint8_t)seg_flags;
        } else {
            put16(p + l3 + 4, (uint32_t)(seg_len - l3));
        }
        put16(p + l3 + csum_offset, fold(addr_sum + (uint64_t)proto + (uint64_t)(seg_len - l3)));
        if (is_v4) put16(p + 10, ~fold(sum16(p, l3)) & 0xFFFF);
        seal_in_place(msg, seg_len, remote_index, first + (uint64_t)i, key);
        Py_ssize_t msg_size = prefix_len + OVERHEAD + seg_len;
        if (i == 0) *first_size = msg_size;
        at += msg_size;
    }
    *counter = first;
    *written = at;
    return count;
}

static PyObject *seal_split(PyObject *self, PyObject *args) {
    Py_buffer key, src, out, prefix;
    unsigned int remote_index;
    PyObject *counter;
    Py_ssize_t start, end, at;
    SplitHeader v;
    if (!PyArg_ParseTuple(args, "y*IOy*nniiiiw*ny*", &key, &remote_index, &counter, &src, &start, &end,
                          &v.gso_type, &v.gso_size, &v.csum_start, &v.csum_offset, &out, &at, &prefix))
        return NULL;
    PyObject *result = NULL;
    const char *error = NULL;
    Py_ssize_t first_size = 0, written = 0, count;
    NativeCounter *shared = PyObject_TypeCheck(counter, &NativeCounterType) ? (NativeCounter *)counter : NULL;
    uint64_t first = shared != NULL ? 0 : PyLong_AsUnsignedLongLong(counter);
    if (PyErr_Occurred()) goto done;
    if (key.len != crypto_aead_chacha20poly1305_ietf_KEYBYTES) { PyErr_SetString(PyExc_ValueError, "key must be 32 bytes"); goto done; }
    if (start < 0 || end > src.len || start > end) { PyErr_SetString(remote_error, "GSO packet shorter than its headers"); goto done; }
    if (at < 0 || at > out.len) { PyErr_SetString(local_error, "seal_split: out has no room for the sealed segments"); goto done; }
    count = seal_segments((const uint8_t *)src.buf + start, end - start, &v, key.buf, remote_index, &first, shared,
                          (uint8_t *)out.buf + at, out.len - at, prefix.buf, prefix.len, &first_size, &written, &error);
    if (count == -1) PyErr_SetString(remote_error, error);
    else if (count == -2) PyErr_SetString(local_error, "seal_split: out has no room for the sealed segments");
    else result = Py_BuildValue("nnn", count, at + written, first_size);
done:
    PyBuffer_Release(&key); PyBuffer_Release(&src); PyBuffer_Release(&out); PyBuffer_Release(&prefix);
    return result;
}

PyDoc_STRVAR(open_run_doc,
"open_run(key, local_index, window, relay_key, overlay, accept, buf, view, at, stop, seg_size, to_tun)\n"
"-> (next_at, authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected, casts)\n\n"
"Open the datagrams of buf[at:stop] (seg_size each, the last may be shorter) in place while each\n"
"is a transport message to local_index (inside a relay envelope from relay_key when that is not\n"
"None); next_at is where the first one that is not starts.  Plaintexts whose source is the\n"
"overlay address and whose destination is one of accept (addresses of the overlay's length back\n"
"to back) are appended to to_tun as slices of view; the rest are counted by reason.  casts counts\n"
"the appended ones whose destination is not accept's first address (a broadcast or a group).");

/* Which of accept's addresses (n of size bytes) the address at p is, from 1; 0 for none.  Ours, the
   first, is the usual hit. */
static Py_ssize_t accepted_destination(const uint8_t *p, const uint8_t *accept, Py_ssize_t n, Py_ssize_t size) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (memcmp(p, accept + i * size, (size_t)size) == 0) return i + 1;
    return 0;
}

/* w reads and writes a ReplayWindow's list of blocks; *greatest is its greatest (a new reference). */
static int list_window(PyObject *window, Window *w, PyObject **greatest) {
    w->blocks = PyObject_GetAttrString(window, "_blocks");
    *greatest = PyObject_GetAttrString(window, "greatest");
    if (w->blocks == NULL || *greatest == NULL) return -1;
    if (!PyList_CheckExact(w->blocks) || PyList_GET_SIZE(w->blocks) != window_blocks) {
        PyErr_SetString(PyExc_TypeError, "window blocks do not match");
        return -1;
    }
    long long g = PyLong_AsLongLong(*greatest);
    if (g == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        w->greatest1 = PyLong_AsUnsignedLongLong(*greatest) + 1;
        if (PyErr_Occurred()) return -1;
    } else {
        w->greatest1 = (uint64_t)(g + 1);
    }
    return 0;
}

static PyObject *open_run(PyObject *self, PyObject *args) {
    Py_buffer key, overlay, accept, buf;
    unsigned int local_index;
    PyObject *window, *relay_key, *view, *to_tun;
    Py_ssize_t at, stop, seg_size;
    if (!PyArg_ParseTuple(args, "y*IOOy*y*w*OnnnO!", &key, &local_index, &window, &relay_key, &overlay, &accept,
                          &buf, &view, &at, &stop, &seg_size, &PyList_Type, &to_tun))
        return NULL;
    PyObject *result = NULL, *greatest = NULL;
    Window w = {NULL, NULL, 0, NULL, 0};
    Py_ssize_t authentic = 0, opened = 0, opened_bytes = 0, failed = 0, spoofed = 0, wrong_key = 0, misdirected = 0;
    Py_ssize_t casts = 0;
    const uint8_t *relay = NULL;
    if (key.len != crypto_aead_chacha20poly1305_ietf_KEYBYTES) { PyErr_SetString(PyExc_ValueError, "key must be 32 bytes"); goto done; }
    if (at < 0 || stop > buf.len || seg_size <= 0) { PyErr_SetString(local_error, "open_run: range outside its buffer"); goto done; }
    if (relay_key != Py_None) {
        if (!PyBytes_Check(relay_key) || PyBytes_GET_SIZE(relay_key) != KEY_LEN) { PyErr_SetString(PyExc_ValueError, "relay_key must be 32 bytes"); goto done; }
        relay = (const uint8_t *)PyBytes_AS_STRING(relay_key);
    }
    if (PyObject_TypeCheck(window, &NativeWindowType)) {
        w.native = (NativeWindow *)window;
    } else if (list_window(window, &w, &greatest) < 0) {
        goto done;
    }
    uint64_t initial = w.greatest1;
    int is_v4 = overlay.len == 4;
    int ip_version = is_v4 ? 4 : 6;
    Py_ssize_t source_at = is_v4 ? 12 : 8, dest_at = is_v4 ? 16 : 24, min_length = is_v4 ? 20 : 40;
    Py_ssize_t accepted = overlay.len && accept.len % overlay.len == 0 ? accept.len / overlay.len : 0;
    uint8_t *b = buf.buf;
    for (; at < stop; at += seg_size) {
        Py_ssize_t end = at + seg_size < stop ? at + seg_size : stop;
        Py_ssize_t msg = at;
        if (relay == NULL) {
            if (end - at < OVERHEAD || b[at] != VERSION || (b[at + 1] != KIND_DATA && b[at + 1] != KIND_KEEPALIVE)) break;
        } else {
            if (end - at < RELAY_INNER + OVERHEAD || b[at] != VERSION || b[at + 1] != KIND_RELAY) break;
            msg = at + RELAY_INNER;
            if (b[msg + 1] != KIND_DATA && b[msg + 1] != KIND_KEEPALIVE) break;
        }
        if (get32le(b + msg + 4) != local_index) break;
        if (relay != NULL && memcmp(b + at + 4, relay, KEY_LEN) != 0) { wrong_key++; continue; }
        Py_ssize_t length = open_message(b, msg, end, local_index, key.buf, &w);
        if (length == -2) goto store;
        if (length < 0) { failed++; continue; }
        authentic++;
        if (length == 0) continue;
        Py_ssize_t body = msg + HEADER_LEN;
        if (b[body] >> 4 != ip_version || length < min_length || memcmp(b + body + source_at, overlay.buf, overlay.len) != 0) {
            spoofed++;
            continue;
        }
        Py_ssize_t which = accepted_destination(b + body + dest_at, accept.buf, accepted, overlay.len);
        if (!which) {
            misdirected++;
            continue;
        }
        PyObject *slice = PySequence_GetSlice(view, body, body + length);
        if (slice == NULL) goto store;
        int appended = PyList_Append(to_tun, slice);
        Py_DECREF(slice);
        if (appended < 0) goto store;
        opened++;
        opened_bytes += length;
        casts += which > 1;
    }
    if (at > stop) at = stop;
    result = Py_BuildValue("nnnnnnnnn", at, authentic, opened, opened_bytes, failed, spoofed, wrong_key, misdirected,
                           casts);
store:
    if (w.native == NULL && w.greatest1 != initial) {
        PyObject *value = w.greatest1 ? PyLong_FromUnsignedLongLong(w.greatest1 - 1) : PyLong_FromLong(-1);
        if (value == NULL || PyObject_SetAttrString(window, "greatest", value) < 0) Py_CLEAR(result);
        Py_XDECREF(value);
    }
done:
    Py_XDECREF(w.blocks); Py_XDECREF(greatest);
    PyBuffer_Release(&key); PyBuffer_Release(&overlay); PyBuffer_Release(&accept); PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, configure_doc},
    {"seal_split", seal_split, METH_VARARGS, seal_split_doc},
    {"open_run", open_run, METH_VARARGS, open_run_doc},
    {"coalesce_iov", coalesce_iov, METH_O, coalesce_iov_doc},
    {"flow_key", flow_key_of, METH_VARARGS, flow_key_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshvpn._fastpath",
    "Native split+seal and open loops of the data path (see meshvpn.node.datapath.fastpath).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (sodium_init() < 0) {
        PyErr_SetString(PyExc_ImportError, "libsodium failed to initialise");
        return NULL;
    }
    if (PyType_Ready(&NativeWindowType) < 0 || PyType_Ready(&NativeCounterType) < 0 || PyType_Ready(&LoopType) < 0
            || PyType_Ready(&RelayLoopType) < 0 || PyType_Ready(&NativeBucketType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "NativeWindow", (PyObject *)&NativeWindowType) < 0
            || PyModule_AddObjectRef(m, "NativeCounter", (PyObject *)&NativeCounterType) < 0
            || PyModule_AddObjectRef(m, "Loop", (PyObject *)&LoopType) < 0
            || PyModule_AddObjectRef(m, "RelayLoop", (PyObject *)&RelayLoopType) < 0
            || PyModule_AddObjectRef(m, "NativeBucket", (PyObject *)&NativeBucketType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
