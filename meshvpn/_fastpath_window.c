/* Session state both threads share: the replay window in C (meshvpn.replay.ReplayWindow, rule for
   rule), the open of one message, and the send counter (NativeCounter, one atomic add per batch).

   Why: the native loop's thread opens datagrams without the GIL, while the asyncio thread may
   open messages of the same session (relayed, from a side socket).  A session the native loop
   serves therefore gets a NativeWindow in place of its ReplayWindow: one window per session, a
   pthread mutex around each check and each update, so a counter is accepted at most once
   whichever thread sees it.  Python calls it as it calls a ReplayWindow (check,
   check_and_update, greatest).  Part of meshvpn._fastpath (see _fastpath.c). */

#include <sodium.h>

#include "_fastpath.h"

static int block_get(Window *w, uint64_t counter, uint64_t *word) {
    Py_ssize_t index = (Py_ssize_t)((counter >> 6) % (uint64_t)window_blocks);
    if (w->raw != NULL) {
        *word = w->raw[index];
        return 0;
    }
    *word = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(w->blocks, index));
    return (*word == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int block_set(Window *w, Py_ssize_t index, uint64_t word) {
    if (w->raw != NULL) {
        w->raw[index] = word;
        return 0;
    }
    PyObject *value = PyLong_FromUnsignedLongLong(word);
    if (value == NULL) return -1;
    PyList_SetItem(w->blocks, index, value);
    return 0;
}

static int check_unlocked(Window *w, uint64_t counter) {
    if (counter >= reject_after) return 0;
    if (w->greatest1 == 0 || counter > w->greatest1 - 1) return 1;
    if (w->greatest1 - 1 - counter >= window_size) return 0;
    uint64_t word;
    if (block_get(w, counter, &word) < 0) return -1;
    return !((word >> (counter & 63)) & 1);
}

static int update_unlocked(Window *w, uint64_t counter) {
    w->newest = 0;
    if (counter >= reject_after) return 0;
    if (w->greatest1 == 0 || counter > w->greatest1 - 1) {
        int64_t current = w->greatest1 ? (int64_t)((w->greatest1 - 1) >> 6) : -1;
        int64_t target = (int64_t)(counter >> 6);
        if (target != current) {
            if (target - current >= window_blocks) {
                for (Py_ssize_t b = 0; b < window_blocks; b++) if (block_set(w, b, 0) < 0) return -1;
            } else {
                for (int64_t b = current + 1; b <= target; b++)
                    if (block_set(w, (Py_ssize_t)(b % window_blocks), 0) < 0) return -1;
            }
        }
        w->greatest1 = counter + 1;
        w->newest = 1;
    } else if (w->greatest1 - 1 - counter >= window_size) {
        return 0;
    }
    uint64_t word;
    if (block_get(w, counter, &word) < 0) return -1;
    uint64_t bit = (uint64_t)1 << (counter & 63);
    if (word & bit) return 0;
    return block_set(w, (Py_ssize_t)((counter >> 6) % (uint64_t)window_blocks), word | bit) < 0 ? -1 : 1;
}

/* Run op on w; a NativeWindow is locked and its state read and written back around it. */
static int locked(Window *w, uint64_t counter, int (*op)(Window *, uint64_t)) {
    NativeWindow *native = w->native;
    if (native == NULL) return op(w, counter);
    pthread_mutex_lock(&native->lock);
    Window raw = {NULL, native->blocks, native->greatest1, NULL, 0};
    int result = op(&raw, counter);
    native->greatest1 = raw.greatest1;
    w->newest = raw.newest;
    pthread_mutex_unlock(&native->lock);
    return result;
}

/* 1 if counter would be accepted, 0 if not, -1 on error (ReplayWindow.check). */
int window_check(Window *w, uint64_t counter) { return locked(w, counter, check_unlocked); }

/* ReplayWindow.check_and_update. */
int window_update(Window *w, uint64_t counter) { return locked(w, counter, update_unlocked); }

Py_ssize_t open_message(uint8_t *b, Py_ssize_t msg, Py_ssize_t end, uint32_t local_index,
                        const uint8_t *key, Window *w) {
    Py_ssize_t size = end - msg;
    if (size < OVERHEAD) return -1;
    const uint8_t *h = b + msg;
    int kind = h[1];
    if (get32le(h + 4) != local_index || h[0] != VERSION || h[2] || h[3]) return -1;
    if (kind == KIND_DATA) {
        if (size == OVERHEAD) return -1;
    } else if (kind != KIND_KEEPALIVE || size != OVERHEAD) {
        return -1;
    }
    uint64_t counter = get64le(h + 8);
    int ok = window_check(w, counter);
    if (ok <= 0) return ok < 0 ? -2 : -1;
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    put64le(nonce + 4, counter);
    uint8_t *body = b + msg + HEADER_LEN;
    if (crypto_aead_chacha20poly1305_ietf_decrypt(body, NULL, NULL, body, (unsigned long long)(size - HEADER_LEN),
                                                  h, HEADER_LEN, nonce, key) != 0)
        return -1;
    ok = window_update(w, counter);
    if (ok <= 0) return ok < 0 ? -2 : -1;
    return size - OVERHEAD;
}

/* ---- the Python type ---------------------------------------------------------------- */

/* 1 if the int x is below zero, 0 if not, -1 with an exception (public API only: PyLong_GetSign
   is Python 3.14's). */
static int below_zero(PyObject *x) {
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(x, &overflow);
    if (value == -1 && !overflow && PyErr_Occurred()) return -1;
    return overflow < 0 || (!overflow && value < 0);
}

static PyObject *window_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *source = NULL;
    if (!PyArg_ParseTuple(args, "|O:NativeWindow", &source)) return NULL;
    if (window_blocks <= 0) return PyErr_Format(PyExc_RuntimeError, "configure() first");
    NativeWindow *self = (NativeWindow *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->blocks = PyMem_Calloc((size_t)window_blocks, sizeof(uint64_t));
    if (self->blocks == NULL) { Py_DECREF(self); return PyErr_NoMemory(); }
    pthread_mutex_init(&self->lock, NULL);
    if (source == NULL || source == Py_None) return (PyObject *)self;
    /* A copy of a ReplayWindow: its greatest and its list of blocks. */
    PyObject *blocks = PyObject_GetAttrString(source, "_blocks");
    PyObject *greatest = PyObject_GetAttrString(source, "greatest");
    int ok = blocks != NULL && greatest != NULL && PyList_Check(blocks) && PyList_GET_SIZE(blocks) == window_blocks;
    for (Py_ssize_t i = 0; ok && i < window_blocks; i++) {
        self->blocks[i] = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(blocks, i));
        ok = !PyErr_Occurred();
    }
    if (ok) {  /* -1 before the first counter, else up to 2**64 - 1 */
        int negative = below_zero(greatest);
        uint64_t g = negative ? 0 : PyLong_AsUnsignedLongLong(greatest);
        ok = negative >= 0 && !PyErr_Occurred() && (!negative || PyLong_AsLong(greatest) == -1);
        self->greatest1 = negative ? 0 : g + 1;
    }
    Py_XDECREF(blocks); Py_XDECREF(greatest);
    if (!ok) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "NativeWindow copies a ReplayWindow");
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void window_dealloc(NativeWindow *self) {
    if (self->blocks != NULL) {
        pthread_mutex_destroy(&self->lock);
        PyMem_Free(self->blocks);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *counter_call(NativeWindow *self, PyObject *arg, int (*op)(Window *, uint64_t)) {
    if (PyLong_Check(arg) && below_zero(arg) == 1) Py_RETURN_FALSE;
    uint64_t counter = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    Window w = {NULL, NULL, 0, self, 0};
    return PyBool_FromLong(op(&w, counter));
}

static PyObject *window_check_method(NativeWindow *self, PyObject *arg) { return counter_call(self, arg, window_check); }
static PyObject *window_update_method(NativeWindow *self, PyObject *arg) { return counter_call(self, arg, window_update); }

static PyObject *window_greatest(NativeWindow *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    uint64_t greatest1 = self->greatest1;
    pthread_mutex_unlock(&self->lock);
    return greatest1 ? PyLong_FromUnsignedLongLong(greatest1 - 1) : PyLong_FromLong(-1);
}

static PyObject *window_blocks_copy(NativeWindow *self, void *closure) {
    PyObject *list = PyList_New(window_blocks);
    if (list == NULL) return NULL;
    pthread_mutex_lock(&self->lock);
    for (Py_ssize_t i = 0; i < window_blocks; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(self->blocks[i]);
        if (value == NULL) { pthread_mutex_unlock(&self->lock); Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, value);
    }
    pthread_mutex_unlock(&self->lock);
    return list;
}

static PyMethodDef window_methods[] = {
    {"check", (PyCFunction)window_check_method, METH_O, "Would counter be accepted?  Does not record it."},
    {"check_and_update", (PyCFunction)window_update_method, METH_O,
     "Record counter if it is new and inside the window; False if it must be dropped."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef window_getset[] = {
    {"greatest", (getter)window_greatest, NULL, "The greatest counter accepted so far (-1 before the first).", NULL},
    {"_blocks", (getter)window_blocks_copy, NULL, "A copy of the bitmap's blocks, as ReplayWindow holds them.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject NativeWindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.NativeWindow",
    .tp_basicsize = sizeof(NativeWindow),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NativeWindow(replay_window=None): a ReplayWindow (copied) that both threads may use.",
    .tp_new = window_new,
    .tp_dealloc = (destructor)window_dealloc,
    .tp_methods = window_methods,
    .tp_getset = window_getset,
};

/* ---- NativeCounter: a session's send counter --------------------------------------------- */

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "K:NativeCounter", &value)) return NULL;
    NativeCounter *self = (NativeCounter *)type->tp_alloc(type, 0);
    if (self != NULL) self->value = value;
    return (PyObject *)self;
}

static PyObject *counter_take_method(NativeCounter *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(counter_take(self, n));
}

static PyObject *counter_value(NativeCounter *self, void *closure) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->value, __ATOMIC_RELAXED));
}

static PyMethodDef counter_methods[] = {
    {"take", (PyCFunction)counter_take_method, METH_O, "take(n): the first of n counters no other caller gets."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef counter_getset[] = {
    {"value", (getter)counter_value, NULL, "The next counter (= counters taken so far).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject NativeCounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.NativeCounter",
    .tp_basicsize = sizeof(NativeCounter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NativeCounter(value): a send counter both threads take from atomically.",
    .tp_new = counter_new,
    .tp_methods = counter_methods,
    .tp_getset = counter_getset,
};
