/* The native loop's flow cache: the access filter's decisions, by flow, for the thread to serve.

   Why: with access rules active every packet must pass the node's stateful filter
   (meshvpn.lan.access), which lives in Python; handing every packet over cost the native loop's
   speed and latency to exactly the networks that set rules.  As a kernel's or OVS's fast-path
   cache, the thread only serves what Python already decided: Python installs a flow key (see
   meshvpn.lan.flowcache for its layout, the same bytes flow_key makes here) with the time its
   verdict holds until.  An inbound key is a flow Python let in; an outbound key is a flow
   Python tracks, and the thread notes each use for Python to fold into its flow table.  Anything
   else, fragments and broadcasts included, goes to Python, which decides and installs.
   Python clears the cache whenever the rules or the peer map change.  Open addressing, at most
   FLOW_PROBE slots looked at; a key that finds no free slot stays with Python.
   Part of meshvpn._fastpath (see _fastpath_loop.c). */

#include "_fastpath_loop.h"

static uint32_t flow_hash(const uint8_t *key) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < FLOW_KEY; i++) h = (h ^ key[i]) * 16777619u;
    return h;
}

/* The key's last part: TCP/UDP ports, or ICMP/ICMPv6 type and code, of the upper-layer header at
   p[at:length] (the checks of meshvpn.lan.packets.parse and packets6.parse6).  0 when it has none. */
static int flow_ports(const uint8_t *p, Py_ssize_t at, Py_ssize_t length, int proto, int icmp, uint8_t *key) {
    if ((proto == 6 || proto == 17) && length >= at + 4) {
        memcpy(key + 20, p + at, 4);
    } else if (proto == icmp && length >= at + 2) {
        key[21] = p[at];
        key[23] = p[at + 1];
    } else {
        return 0;
    }
    key[1] = (uint8_t)proto;
    return 1;
}

/* The IPv6 packet's upper-layer header, after the extension headers as meshvpn.lan.packets6.parse6
   walks them: its offset, and its protocol in *proto; -1 for a packet Python finds malformed or a
   fragment (which the cache never serves). */
static Py_ssize_t upper_layer6(const uint8_t *p, Py_ssize_t length, int *proto) {
    Py_ssize_t at = 40;
    int next = p[6];
    for (int walked = 0; next == 0 || next == 43 || next == 60 || next == 44; walked++) {
        if (walked == MAX_EXTENSIONS6 || at + 8 > length) return -1;
        if (next == 44) {
            if ((p[at + 2] << 8 | p[at + 3]) & 0xFFF9) return -1;  /* a fragment (offset or more to come) */
            next = p[at];
            at += 8;
        } else {
            next = p[at];
            at += (p[at + 1] + 1) * 8;
            if (at > length) return -1;
        }
    }
    *proto = next;
    return at;
}

/* The flow key of the IP packet p[0:size] (after the checks of meshvpn.lan.packets.parse, or of
   packets6.parse6 for IPv6), seen from this node: direction, protocol, IP version, the peer's
   address, then TCP/UDP ports or ICMP (ICMPv6) type and code.  0 when it has none the cache may
   serve: malformed, a fragment, another protocol. */
int flow_key(const uint8_t *p, Py_ssize_t size, int outbound, uint8_t *key) {
    if (size < 20) return 0;
    memset(key, 0, FLOW_KEY);
    key[0] = (uint8_t)outbound;
    if (p[0] >> 4 == 6) {
        if (size < 40) return 0;
        Py_ssize_t length = 40 + (p[4] << 8 | p[5]);
        int proto;
        if (length > size) return 0;
        Py_ssize_t at = upper_layer6(p, length, &proto);
        if (at < 0) return 0;
        key[2] = 6;
        memcpy(key + 4, p + (outbound ? 24 : 8), 16);
        return flow_ports(p, at, length, proto, 58, key);
    }
    if (p[0] >> 4 != 4) return 0;
    Py_ssize_t ihl = (p[0] & 0x0F) * 4, length = p[2] << 8 | p[3];
    if (ihl < 20 || length < ihl || length > size || ((p[6] << 8 | p[7]) & 0x3FFF)) return 0;
    key[2] = 4;
    memcpy(key + 4, p + (outbound ? 16 : 12), 4);
    return flow_ports(p, ihl, length, p[9], 1, key);
}

const char flow_key_doc[] =
"flow_key(packet, outbound) -> bytes or None\n\n"
"The flow cache's key of an IPv4 or IPv6 packet (meshvpn.lan.flowcache.flow_key of its parsed header), or None.";

PyObject *flow_key_of(PyObject *self, PyObject *args) {
    Py_buffer packet;
    int outbound;
    if (!PyArg_ParseTuple(args, "y*p", &packet, &outbound)) return NULL;
    uint8_t key[FLOW_KEY];
    int made = flow_key(packet.buf, packet.len, outbound, key);
    PyBuffer_Release(&packet);
    if (!made) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)key, FLOW_KEY);
}

static Flow *flow_slot(Loop *L, const uint8_t *key, double now, int for_install) {
    uint32_t at = flow_hash(key);
    Flow *free_slot = NULL;
    for (int i = 0; i < FLOW_PROBE; i++) {
        Flow *f = &L->flows[(at + (uint32_t)i) & (FLOW_SLOTS - 1)];
        if (f->until != 0.0 && !memcmp(f->key, key, FLOW_KEY)) return f;
        if (free_slot == NULL && (f->until == 0.0 || (now >= f->until && !f->noted))) free_slot = f;
    }
    return for_install ? free_slot : NULL;
}

/* Whether the thread may pass the packet p[0:size] (direction outbound) without asking Python:
   always while no rules are active, else only a flow Python installed, before its time ran out.
   An outbound flow's use is noted for Python's flow table. */
int flow_passes(Loop *L, const uint8_t *p, Py_ssize_t size, int outbound, double now) {
    if (!L->filtering) return 1;
    uint8_t key[FLOW_KEY];
    if (!flow_key(p, size, outbound, key)) return 0;
    Flow *f = flow_slot(L, key, now, 0);
    if (f == NULL || now >= f->until) return 0;
    if (outbound) {
        f->used = now;
        if (!f->noted && L->n_noted < FLOW_SLOTS) {
            f->noted = 1;
            L->noted[L->n_noted++] = (int)(f - L->flows);
        }
    }
    return 1;
}

/* The outbound flows used since the last look, as [(key, last use)]; then forgotten.  Under the table lock. */
static PyObject *take_notes(Loop *L) {
    PyObject *notes = PyList_New(0);
    for (int i = 0; notes != NULL && i < L->n_noted; i++) {
        Flow *f = &L->flows[L->noted[i]];
        PyObject *row = Py_BuildValue("y#d", (const char *)f->key, (Py_ssize_t)FLOW_KEY, f->used);
        if (row == NULL || PyList_Append(notes, row) < 0) Py_CLEAR(notes);
        Py_XDECREF(row);
    }
    for (int i = 0; i < L->n_noted; i++) L->flows[L->noted[i]].noted = 0;
    L->n_noted = 0;
    return notes;
}

const char flows_doc[] =
"flows(active, reset, installs) -> notes\n\n"
"The access filter's side of the thread.  active: rules are in force, so the thread passes only the\n"
"flows installed here (else everything, as without rules); reset: forget every flow first (the rules\n"
"or the peer map changed); installs: [(24-byte flow key, until on the monotonic clock)].  Returns the\n"
"outbound flows the thread used since the last call, [(key, last use)], taken before a reset.";

PyObject *loop_flows(Loop *L, PyObject *args) {
    int active, reset;
    PyObject *installs;
    if (!PyArg_ParseTuple(args, "ppO!", &active, &reset, &PyList_Type, &installs)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(installs);
    Flow *rows = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Flow));
    if (rows == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer key;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(installs, i), "y*d", &key, &rows[i].until)) { PyMem_Free(rows); return NULL; }
        int ok = key.len == FLOW_KEY && rows[i].until > 0.0;
        if (ok) memcpy(rows[i].key, key.buf, FLOW_KEY);
        PyBuffer_Release(&key);
        if (!ok) {
            PyMem_Free(rows);
            PyErr_SetString(PyExc_ValueError, "a flow is (24-byte key, until > 0)");
            return NULL;
        }
    }
    double now = monotonic();
    pthread_mutex_lock(&L->table_lock);
    PyObject *notes = take_notes(L);
    if (reset) memset(L->flows, 0, sizeof(Flow) * FLOW_SLOTS);
    for (Py_ssize_t i = 0; i < n; i++) {
        Flow *f = flow_slot(L, rows[i].key, now, 1);
        if (f == NULL) continue;
        memcpy(f->key, rows[i].key, FLOW_KEY);
        f->until = rows[i].until;
    }
    L->filtering = active;
    pthread_mutex_unlock(&L->table_lock);
    PyMem_Free(rows);
    return notes;
}
