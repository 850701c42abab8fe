/* The native loop's table: what the thread opens (entries, by receiver index) and seals (senders,
   by overlay address), as Python installed it.

   Why: at 10,000 peers a linear scan per packet cost more than the packet's crypto, and
   Loop.replace() parsed and handed over the whole table when one peer changed.  Entries and
   senders are dense arrays (so counts() walks them) with a hash map each from key to position
   (open addressing, linear probing, at most half full, deletion by backward shift); patch()
   removes and installs rows one by one, under the table mutex the thread takes around each
   receive and each TUN read, so a row never changes under it.  Part of meshvpn._fastpath (see
   _fastpath_loop.c). */

#include "_fastpath_loop.h"

static size_t home_of(const KeyMap *m, const uint8_t *key, int len) {
    return (size_t)fnv1a(FNV_OFFSET, key, (size_t)len) & m->mask;
}

/* The slot that holds key, or the free slot where it would go. */
static size_t slot_of(const KeyMap *m, const uint8_t *key, int len) {
    size_t i = home_of(m, key, len);
    while (m->slots[i].len && (m->slots[i].len != len || memcmp(m->slots[i].key, key, (size_t)len)))
        i = (i + 1) & m->mask;
    return i;
}

static Py_ssize_t keymap_find(const KeyMap *m, const uint8_t *key, int len) {
    if (m->slots == NULL) return -1;
    const KeySlot *s = &m->slots[slot_of(m, key, len)];
    return s->len ? s->at : -1;
}

/* Room for `count` keys at most half full (slots moved to a larger array if needed); -1 without memory. */
static int keymap_reserve(KeyMap *m, Py_ssize_t count) {
    size_t size = m->slots == NULL ? 16 : m->mask + 1;
    while ((size_t)count * 2 > size) size *= 2;
    if (m->slots != NULL && size == m->mask + 1) return 0;
    KeySlot *old = m->slots;
    size_t old_size = old == NULL ? 0 : m->mask + 1;
    m->slots = PyMem_Calloc(size, sizeof(KeySlot));
    if (m->slots == NULL) { m->slots = old; return -1; }
    m->mask = size - 1;
    for (size_t i = 0; i < old_size; i++)
        if (old[i].len) m->slots[slot_of(m, old[i].key, old[i].len)] = old[i];
    PyMem_Free(old);
    return 0;
}

static void keymap_put(KeyMap *m, const uint8_t *key, int len, Py_ssize_t at) {
    KeySlot *s = &m->slots[slot_of(m, key, len)];
    memcpy(s->key, key, (size_t)len);
    s->len = len;
    s->at = at;
}

/* Remove key; the slots after it move back so that no probe for another key stops early. */
static void keymap_remove(KeyMap *m, const uint8_t *key, int len) {
    size_t hole = slot_of(m, key, len), j = hole;
    if (!m->slots[hole].len) return;
    for (;;) {
        m->slots[hole].len = 0;
        for (;;) {
            j = (j + 1) & m->mask;
            if (!m->slots[j].len) return;
            size_t home = home_of(m, m->slots[j].key, m->slots[j].len);
            int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (!stays) break;
        }
        m->slots[hole] = m->slots[j];
        hole = j;
    }
}

void keymap_free(KeyMap *m) {
    PyMem_Free(m->slots);
    m->slots = NULL;
}

Entry *find_entry(Loop *L, uint32_t index) {
    Py_ssize_t at = keymap_find(&L->entry_map, (const uint8_t *)&index, 4);
    return at < 0 ? NULL : &L->entries[at];
}

Sender *find_sender(Loop *L, const uint8_t *dst, int len) {
    Py_ssize_t at = keymap_find(&L->sender_map, dst, len);
    return at < 0 ? NULL : &L->senders[at];
}

/* ---- counts ------------------------------------------------------------------------ */

/* Append what the entry counted since the last look to rows (if anything), then reset it; -1 on error. */
static int take_entry(Entry *e, PyObject *rows) {
    e->noted = 0;
    if (!e->rx_packets && !e->failed && !e->spoofed && !e->wrong_key && !e->misdirected && e->last_rx == 0.0
            && e->last_relay_rx == 0.0)
        return 0;
    PyObject *src = e->last_rx == 0.0 ? Py_NewRef(Py_None) : endpoint(&e->last_src);
    PyObject *relay = e->last_relay_rx == 0.0 ? Py_NewRef(Py_None) : endpoint(&e->last_relay_src);
    PyObject *row = src == NULL || relay == NULL ? NULL
        : Py_BuildValue("IKKKKKKdOKKdO", e->index, e->rx_packets, e->rx_bytes, e->failed, e->spoofed, e->wrong_key,
                        e->misdirected, e->last_rx, src, e->rx_broadcast, e->rx_multicast, e->last_relay_rx, relay);
    Py_XDECREF(src);
    Py_XDECREF(relay);
    int failed = row == NULL || PyList_Append(rows, row) < 0;
    Py_XDECREF(row);
    e->rx_packets = e->rx_bytes = e->failed = e->spoofed = e->wrong_key = e->misdirected = 0;
    e->rx_broadcast = e->rx_multicast = 0;
    e->last_rx = e->last_relay_rx = 0.0;
    return failed ? -1 : 0;
}

static int take_sender(Sender *s, PyObject *sends) {
    s->noted = 0;
    if (!s->tx_packets) return 0;
    PyObject *row = Py_BuildValue("y#KKd", (const char *)s->overlay, (Py_ssize_t)s->overlay_len, s->tx_packets,
                                  s->tx_bytes, s->last_tx);
    int failed = row == NULL || PyList_Append(sends, row) < 0;
    Py_XDECREF(row);
    s->tx_packets = s->tx_bytes = 0;
    return failed ? -1 : 0;
}

/* Room on the lists of noted rows: twice the rows the table has room for (an entry that left may
   still be on it); a full list makes counts() look at every row once. */
#define NOTED_ROOM(room) (2 * (room) + 16)

void note_entry(Loop *L, Entry *e) {
    if (e->noted) return;
    e->noted = 1;
    if (L->n_noted_entries < NOTED_ROOM(L->entries_room)) L->noted_entries[L->n_noted_entries++] = e->index;
    else L->noted_all = 1;
}

void note_sender(Loop *L, Sender *s) {
    if (s->noted) return;
    s->noted = 1;
    if (L->n_noted_senders < NOTED_ROOM(L->senders_room)) {
        KeySlot *k = &L->noted_senders[L->n_noted_senders++];
        memcpy(k->key, s->overlay, (size_t)s->overlay_len);
        k->len = s->overlay_len;
    } else {
        L->noted_all = 1;
    }
}

/* What the rows counted since the last look (then reset): (receive rows, send rows).  The rows on
   the lists of noted rows only, unless a list was full. */
PyObject *take_counts(Loop *L) {
    PyObject *rows = PyList_New(0), *sends = PyList_New(0);
    int failed = rows == NULL || sends == NULL;
    Py_ssize_t n_entries = L->noted_all ? L->count : L->n_noted_entries;
    Py_ssize_t n_senders = L->noted_all ? L->n_senders : L->n_noted_senders;
    for (Py_ssize_t i = 0; !failed && i < n_entries; i++) {
        Entry *e = L->noted_all ? &L->entries[i] : find_entry(L, L->noted_entries[i]);
        failed = e != NULL && take_entry(e, rows) < 0;
    }
    for (Py_ssize_t i = 0; !failed && i < n_senders; i++) {
        Sender *s = L->noted_all ? &L->senders[i] : find_sender(L, L->noted_senders[i].key, L->noted_senders[i].len);
        failed = s != NULL && take_sender(s, sends) < 0;
    }
    L->n_noted_entries = L->n_noted_senders = 0;
    L->noted_all = 0;
    if (failed) {
        Py_XDECREF(rows); Py_XDECREF(sends);
        return NULL;
    }
    return Py_BuildValue("NN", rows, sends);
}

/* ---- parsing what Python installs ---------------------------------------------------- */

static int parse_entry(PyObject *row, Entry *e) {
    Py_buffer key, overlay, peer_key;
    PyObject *window;
    if (!PyArg_ParseTuple(row, "Iy*O!y*y*d", &e->index, &key, &NativeWindowType, &window, &overlay, &peer_key,
                          &e->expires_at))
        return -1;
    int ok = key.len == KEY_LEN && (overlay.len == 4 || overlay.len == 16) && peer_key.len == KEY_LEN;
    if (ok) {
        memcpy(e->key, key.buf, KEY_LEN);
        memcpy(e->relay_key, peer_key.buf, KEY_LEN);
        memcpy(e->overlay, overlay.buf, (size_t)overlay.len);
        e->overlay_len = (int)overlay.len;
        e->window = (NativeWindow *)Py_NewRef(window);
    }
    PyBuffer_Release(&key); PyBuffer_Release(&overlay); PyBuffer_Release(&peer_key);
    if (!ok) PyErr_SetString(PyExc_ValueError, "an entry is (index, 32-byte key, NativeWindow, overlay, peer key, expires_at)");
    return ok ? 0 : -1;
}

static int parse_sender(PyObject *row, int family, Sender *s) {
    Py_buffer overlay, key, prefix;
    PyObject *counter, *dest;
    s->sid = 0;
    if (!PyArg_ParseTuple(row, "y*Iy*O!Oy*d|i", &overlay, &s->remote_index, &key, &NativeCounterType, &counter, &dest,
                          &prefix, &s->expires_at, &s->sid))
        return -1;
    int ok = key.len == KEY_LEN && (overlay.len == 4 || overlay.len == 16) && (prefix.len == 0 || prefix.len == RELAY_INNER);
    if (ok) {
        memcpy(s->key, key.buf, KEY_LEN);
        memcpy(s->prefix, prefix.buf, (size_t)prefix.len);
        s->prefix_len = prefix.len;
        memcpy(s->overlay, overlay.buf, (size_t)overlay.len);
        s->overlay_len = (int)overlay.len;
    } else {
        PyErr_SetString(PyExc_ValueError,
                        "a sender is (overlay, remote index, 32-byte key, NativeCounter, endpoint, prefix, expires_at[, sid])");
    }
    PyBuffer_Release(&key); PyBuffer_Release(&overlay); PyBuffer_Release(&prefix);
    if (!ok || parse_endpoint(dest, family, &s->dest, &s->dest_len) < 0) return -1;
    s->counter = (NativeCounter *)Py_NewRef(counter);
    return 0;
}

/* ---- rows in and out ------------------------------------------------------------------ */

/* The Python objects rows held that left the table: released once the table mutex is free. */
typedef struct {
    PyObject **items;
    Py_ssize_t count;
} Released;

static void remove_entry(Loop *L, uint32_t index, PyObject *rows, Released *gone) {
    Py_ssize_t at = keymap_find(&L->entry_map, (const uint8_t *)&index, 4);
    if (at < 0) return;
    if (take_entry(&L->entries[at], rows) < 0) PyErr_Clear();  /* its counts are lost, as on any error there */
    gone->items[gone->count++] = (PyObject *)L->entries[at].window;
    keymap_remove(&L->entry_map, (const uint8_t *)&index, 4);
    if (at != --L->count) {
        L->entries[at] = L->entries[L->count];
        keymap_put(&L->entry_map, (const uint8_t *)&L->entries[at].index, 4, at);
    }
}

static void remove_sender(Loop *L, const uint8_t *overlay, int len, PyObject *sends, Released *gone) {
    Py_ssize_t at = keymap_find(&L->sender_map, overlay, len);
    if (at < 0) return;
    if (take_sender(&L->senders[at], sends) < 0) PyErr_Clear();
    gone->items[gone->count++] = (PyObject *)L->senders[at].counter;
    keymap_remove(&L->sender_map, overlay, len);
    if (at != --L->n_senders) {
        L->senders[at] = L->senders[L->n_senders];
        keymap_put(&L->sender_map, L->senders[at].overlay, L->senders[at].overlay_len, at);
    }
}

/* Install e (its counts zero) in place of the entry of its index, or beside the others (room reserved). */
static void put_entry(Loop *L, const Entry *e, PyObject *rows, Released *gone) {
    remove_entry(L, e->index, rows, gone);
    L->entries[L->count] = *e;
    keymap_put(&L->entry_map, (const uint8_t *)&e->index, 4, L->count++);
}

static void put_sender(Loop *L, const Sender *s, PyObject *sends, Released *gone) {
    remove_sender(L, s->overlay, s->overlay_len, sends, gone);
    L->senders[L->n_senders] = *s;
    keymap_put(&L->sender_map, s->overlay, s->overlay_len, L->n_senders++);
}

/* Room for `want` rows of row_size bytes in *rows, and on their list of noted rows (of noted_size
   bytes each) in *noted; -1 without memory. */
static int grow(void **rows, size_t row_size, void **noted, size_t noted_size, Py_ssize_t *room, Py_ssize_t want) {
    if (want <= *room) return 0;
    Py_ssize_t more = want + want / 2 + 16;
    void *grown = PyMem_Realloc(*rows, row_size * (size_t)more);
    if (grown != NULL) *rows = grown;
    void *listed = PyMem_Realloc(*noted, noted_size * (size_t)NOTED_ROOM(more));
    if (listed != NULL) *noted = listed;
    if (grown == NULL || listed == NULL) return -1;
    *room = more;
    return 0;
}

/* Room for `entries` entries and `senders` senders in the arrays and the maps; -1 without memory. */
static int reserve(Loop *L, Py_ssize_t entries, Py_ssize_t senders) {
    if (grow((void **)&L->entries, sizeof(Entry), (void **)&L->noted_entries, sizeof(uint32_t), &L->entries_room,
             entries) < 0
            || grow((void **)&L->senders, sizeof(Sender), (void **)&L->noted_senders, sizeof(KeySlot),
                    &L->senders_room, senders) < 0)
        return -1;
    return keymap_reserve(&L->entry_map, entries) < 0 || keymap_reserve(&L->sender_map, senders) < 0 ? -1 : 0;
}

/* ---- replace() and patch() ------------------------------------------------------------ */

/* What one call installs, parsed before the table mutex is taken. */
typedef struct {
    Entry *entries;
    Sender *senders;
    Py_ssize_t n_entries, n_senders;  /* parsed so far: each holds a reference */
    uint32_t *gone_indexes;
    KeySlot *gone_overlays;
    Py_ssize_t n_gone_indexes, n_gone_overlays;
    struct sockaddr_storage skip[MAX_SKIP];
    Py_ssize_t n_skip;
} Installs;

static void release_installs(Installs *in) {
    for (Py_ssize_t i = 0; in->entries != NULL && i < in->n_entries; i++) Py_XDECREF(in->entries[i].window);
    for (Py_ssize_t i = 0; in->senders != NULL && i < in->n_senders; i++) Py_XDECREF(in->senders[i].counter);
    PyMem_Free(in->entries); PyMem_Free(in->senders); PyMem_Free(in->gone_indexes); PyMem_Free(in->gone_overlays);
}

static int parse_gone(Installs *in, PyObject *indexes, PyObject *overlays) {
    Py_ssize_t n_i = PyList_GET_SIZE(indexes), n_o = PyList_GET_SIZE(overlays);
    in->gone_indexes = PyMem_Calloc((size_t)(n_i ? n_i : 1), sizeof(uint32_t));
    in->gone_overlays = PyMem_Calloc((size_t)(n_o ? n_o : 1), sizeof(KeySlot));
    if (in->gone_indexes == NULL || in->gone_overlays == NULL) { PyErr_NoMemory(); return -1; }
    for (; in->n_gone_indexes < n_i; in->n_gone_indexes++) {
        unsigned long index = PyLong_AsUnsignedLong(PyList_GET_ITEM(indexes, in->n_gone_indexes));
        if (PyErr_Occurred() || index > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a receiver index is a 32-bit unsigned int");
            return -1;
        }
        in->gone_indexes[in->n_gone_indexes] = (uint32_t)index;
    }
    for (; in->n_gone_overlays < n_o; in->n_gone_overlays++) {
        PyObject *overlay = PyList_GET_ITEM(overlays, in->n_gone_overlays);
        Py_ssize_t len = PyBytes_Check(overlay) ? PyBytes_GET_SIZE(overlay) : 0;
        if (len != 4 && len != 16) { PyErr_SetString(PyExc_ValueError, "an overlay address is 4 or 16 bytes"); return -1; }
        KeySlot *s = &in->gone_overlays[in->n_gone_overlays];
        memcpy(s->key, PyBytes_AS_STRING(overlay), (size_t)len);
        s->len = (int)len;
    }
    return 0;
}

static int parse_installs(Loop *L, Installs *in, PyObject *rows, PyObject *send_rows, Py_buffer *a4, Py_buffer *a6,
                          PyObject *skips) {
    Py_ssize_t n = PyList_GET_SIZE(rows), n_send = PyList_GET_SIZE(send_rows), n_skip = PyList_GET_SIZE(skips);
    socklen_t ignored;
    if (a4->len % 4 || a6->len % 16 || a4->len / 4 > MAX_ACCEPT || a6->len / 16 > MAX_ACCEPT || n_skip > MAX_SKIP) {
        PyErr_SetString(PyExc_ValueError, "too many accepted destinations or skipped endpoints");
        return -1;
    }
    in->entries = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Entry));
    in->senders = PyMem_Calloc((size_t)(n_send ? n_send : 1), sizeof(Sender));
    if (in->entries == NULL || in->senders == NULL) { PyErr_NoMemory(); return -1; }
    for (; in->n_entries < n; in->n_entries++)
        if (parse_entry(PyList_GET_ITEM(rows, in->n_entries), &in->entries[in->n_entries]) < 0) return -1;
    for (; in->n_senders < n_send; in->n_senders++)
        if (parse_sender(PyList_GET_ITEM(send_rows, in->n_senders), L->family, &in->senders[in->n_senders]) < 0) return -1;
    for (; in->n_skip < n_skip; in->n_skip++)
        if (parse_endpoint(PyList_GET_ITEM(skips, in->n_skip), L->family, &in->skip[in->n_skip], &ignored) < 0) return -1;
    return 0;
}

/* Under the table mutex: the rows gone (everything, or those named), then the new rows, accepted
   destinations and skipped endpoints.  (rows, send_rows): what the rows that left or were replaced
   counted (everything's counts, when everything goes). */
static PyObject *install(Loop *L, Installs *in, int everything, Py_buffer *a4, Py_buffer *a6) {
    Released gone = {PyMem_Malloc(sizeof(PyObject *) * (size_t)(L->count + L->n_senders + in->n_entries
                                                                  + in->n_senders + in->n_gone_indexes
                                                                  + in->n_gone_overlays + 1)), 0};
    PyObject *rows = PyList_New(0), *sends = PyList_New(0), *result = NULL;
    if (gone.items == NULL || rows == NULL || sends == NULL) { PyErr_NoMemory(); goto done; }
    pthread_mutex_lock(&L->table_lock);
    Py_ssize_t entries = everything ? in->n_entries : L->count + in->n_entries;
    if (reserve(L, entries, everything ? in->n_senders : L->n_senders + in->n_senders) < 0) {
        pthread_mutex_unlock(&L->table_lock);
        PyErr_NoMemory();
        goto done;
    }
    if (everything) {
        result = take_counts(L);
        for (Py_ssize_t i = 0; i < L->count; i++) gone.items[gone.count++] = (PyObject *)L->entries[i].window;
        for (Py_ssize_t i = 0; i < L->n_senders; i++) gone.items[gone.count++] = (PyObject *)L->senders[i].counter;
        L->count = L->n_senders = 0;
        memset(L->entry_map.slots, 0, sizeof(KeySlot) * (L->entry_map.mask + 1));
        memset(L->sender_map.slots, 0, sizeof(KeySlot) * (L->sender_map.mask + 1));
    }
    for (Py_ssize_t i = 0; i < in->n_gone_indexes; i++) remove_entry(L, in->gone_indexes[i], rows, &gone);
    for (Py_ssize_t i = 0; i < in->n_gone_overlays; i++)
        remove_sender(L, in->gone_overlays[i].key, in->gone_overlays[i].len, sends, &gone);
    for (Py_ssize_t i = 0; i < in->n_entries; i++) put_entry(L, &in->entries[i], rows, &gone);
    for (Py_ssize_t i = 0; i < in->n_senders; i++) put_sender(L, &in->senders[i], sends, &gone);
    in->n_entries = in->n_senders = 0;  /* their references moved into the table */
    memcpy(L->accept4, a4->buf, (size_t)a4->len); L->n_accept4 = a4->len / 4;
    memcpy(L->accept6, a6->buf, (size_t)a6->len); L->n_accept6 = a6->len / 16;
    memcpy(L->skip, in->skip, sizeof(in->skip[0]) * (size_t)in->n_skip); L->n_skip = in->n_skip;
    pthread_mutex_unlock(&L->table_lock);
    if (!everything) result = Py_BuildValue("OO", rows, sends);
done:
    for (Py_ssize_t i = 0; i < gone.count; i++) Py_XDECREF(gone.items[i]);
    PyMem_Free(gone.items);
    Py_XDECREF(rows); Py_XDECREF(sends);
    return result;
}

const char replace_doc[] =
"replace(entries, senders, accept4, accept6, skip) -> (rows, send_rows)\n\n"
"Install new tables.  entries (what the thread opens) are (local index, receive key, NativeWindow,\n"
"peer overlay address, peer key (of its relay envelopes), expires_at on the monotonic clock); senders\n"
"(what it seals) are (peer overlay address, remote index, send key, NativeCounter, (address bytes,\n"
"port), prefix (b'' or the relay envelope), expires_at[, sid: the pinned socket to send from, pin()]);\n"
"accept4/accept6 "
"the accepted destinations back to back (Destinations.accepted); skip the (address bytes, port)\n"
"endpoints whose datagrams always go to Python (TURN servers).  One entry per index and one sender\n"
"per overlay address: a later row replaces an earlier one.  Returns what the old tables counted\n"
"since the last look, as counts() does.";

PyObject *loop_replace(Loop *L, PyObject *args) {
    PyObject *rows, *send_rows, *skips, *result = NULL;
    Py_buffer a4, a6;
    if (!PyArg_ParseTuple(args, "O!O!y*y*O!", &PyList_Type, &rows, &PyList_Type, &send_rows, &a4, &a6,
                          &PyList_Type, &skips))
        return NULL;
    Installs in = {0};
    if (parse_installs(L, &in, rows, send_rows, &a4, &a6, skips) == 0) result = install(L, &in, 1, &a4, &a6);
    release_installs(&in);
    PyBuffer_Release(&a4); PyBuffer_Release(&a6);
    return result;
}

const char patch_doc[] =
"patch(gone_indexes, entries, gone_overlays, senders, accept4, accept6, skip) -> (rows, send_rows)\n\n"
"Change the tables row by row: the entries of gone_indexes and the senders of gone_overlays leave,\n"
"then entries and senders (replace()'s rows) are installed, each in place of the one with its index\n"
"or overlay address if there is one; accept4, accept6 and skip as replace().  Returns what the rows\n"
"that left or were replaced counted since the last look, as counts() does; the others keep theirs.";

PyObject *loop_patch(Loop *L, PyObject *args) {
    PyObject *gone_indexes, *rows, *gone_overlays, *send_rows, *skips, *result = NULL;
    Py_buffer a4, a6;
    if (!PyArg_ParseTuple(args, "O!O!O!O!y*y*O!", &PyList_Type, &gone_indexes, &PyList_Type, &rows, &PyList_Type,
                          &gone_overlays, &PyList_Type, &send_rows, &a4, &a6, &PyList_Type, &skips))
        return NULL;
    Installs in = {0};
    if (parse_gone(&in, gone_indexes, gone_overlays) == 0 && parse_installs(L, &in, rows, send_rows, &a4, &a6, skips) == 0)
        result = install(L, &in, 0, &a4, &a6);
    release_installs(&in);
    PyBuffer_Release(&a4); PyBuffer_Release(&a6);
    return result;
}

const char installed_doc[] =
"installed() -> (indexes, overlays)\n\n"
"The receiver index of every entry and the overlay address of every sender, in table order; None in\n"
"place of one its map does not find where it is (what the tests compare with what Python installed).";

/* The key of a row, or None if its map finds another row (or none) for it. */
static PyObject *checked_key(PyObject *key, int found) {
    if (key == NULL || found) return key;
    Py_DECREF(key);
    return Py_NewRef(Py_None);
}

PyObject *loop_installed(Loop *L, PyObject *unused) {
    PyObject *indexes = PyList_New(0), *overlays = PyList_New(0);
    int failed = indexes == NULL || overlays == NULL;
    pthread_mutex_lock(&L->table_lock);
    for (Py_ssize_t i = 0; !failed && i < L->count; i++) {
        Entry *e = &L->entries[i];
        PyObject *index = checked_key(PyLong_FromUnsignedLong(e->index), find_entry(L, e->index) == e);
        failed = index == NULL || PyList_Append(indexes, index) < 0;
        Py_XDECREF(index);
    }
    for (Py_ssize_t i = 0; !failed && i < L->n_senders; i++) {
        Sender *s = &L->senders[i];
        PyObject *overlay = checked_key(PyBytes_FromStringAndSize((const char *)s->overlay, s->overlay_len),
                                        find_sender(L, s->overlay, s->overlay_len) == s);
        failed = overlay == NULL || PyList_Append(overlays, overlay) < 0;
        Py_XDECREF(overlay);
    }
    pthread_mutex_unlock(&L->table_lock);
    if (failed) { Py_XDECREF(indexes); Py_XDECREF(overlays); return NULL; }
    return Py_BuildValue("NN", indexes, overlays);
}

void free_table(Loop *L) {
    for (Py_ssize_t i = 0; i < L->count; i++) Py_XDECREF(L->entries[i].window);
    for (Py_ssize_t i = 0; i < L->n_senders; i++) Py_XDECREF(L->senders[i].counter);
    PyMem_Free(L->entries); PyMem_Free(L->senders); PyMem_Free(L->noted_entries); PyMem_Free(L->noted_senders);
    keymap_free(&L->entry_map); keymap_free(&L->sender_map);
}
