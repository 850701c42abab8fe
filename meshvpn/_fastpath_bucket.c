/* meshvpn.ratelimit.TokenBucket in C, shared by the asyncio thread and the relay's native thread.

   Why: a relay registration's bucket is spent by whichever thread checks an envelope of its
   node: the native thread for envelopes to UDP destinations, Python for the rest (envelopes to
   TCP streams, and any the thread handed over before it knew the registration).  One bucket
   behind one mutex keeps the node's rate and burst one allowance, as in the pure-Python relay.
   The arithmetic is TokenBucket's, operation for operation, so both give the same answers.
   Part of meshvpn._fastpath. */

#include "_fastpath.h"

#include <structmember.h>

/* TokenBucket's refill: the level at now (not stored). */
static double refilled(const NativeBucket *b, double now) {
    double since = now - b->refilled;
    double tokens = b->tokens + (since > 0.0 ? since : 0.0) * b->rate;
    return b->burst < tokens ? b->burst : tokens;
}

static void refill(NativeBucket *b, double now, double tokens) {
    b->tokens = tokens;
    if (now > b->refilled) b->refilled = now;
}

Py_ssize_t bucket_take_many(NativeBucket *b, Py_ssize_t count, double now) {
    pthread_mutex_lock(&b->lock);
    double tokens = refilled(b, now);
    Py_ssize_t taken = 0;
    if (count > 0) taken = tokens < (double)count ? (Py_ssize_t)tokens : count;
    if (taken < 0) taken = 0;
    refill(b, now, tokens - (double)taken);
    pthread_mutex_unlock(&b->lock);
    return taken;
}

int bucket_take(NativeBucket *b, double now, double cost) {
    pthread_mutex_lock(&b->lock);
    double tokens = refilled(b, now);
    int ok = !(tokens < cost);
    refill(b, now, ok ? tokens - cost : tokens);
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static PyObject *bucket_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    double rate, burst, now;
    static char *names[] = {"rate", "burst", "now", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ddd:NativeBucket", names, &rate, &burst, &now)) return NULL;
    NativeBucket *b = (NativeBucket *)type->tp_alloc(type, 0);
    if (b == NULL) return NULL;
    pthread_mutex_init(&b->lock, NULL);
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->refilled = now;
    return (PyObject *)b;
}

static void bucket_dealloc(NativeBucket *b) {
    pthread_mutex_destroy(&b->lock);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *py_take(NativeBucket *b, PyObject *args) {
    double now, cost = 1.0;
    if (!PyArg_ParseTuple(args, "d|d:take", &now, &cost)) return NULL;
    return PyBool_FromLong(bucket_take(b, now, cost));
}

static PyObject *py_take_many(NativeBucket *b, PyObject *args) {
    Py_ssize_t count;
    double now;
    if (!PyArg_ParseTuple(args, "nd:take_many", &count, &now)) return NULL;
    return PyLong_FromSsize_t(bucket_take_many(b, count, now));
}

static PyObject *py_full(NativeBucket *b, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    pthread_mutex_lock(&b->lock);
    double since = now - b->refilled;
    int full = b->tokens + (since > 0.0 ? since : 0.0) * b->rate >= b->burst;
    pthread_mutex_unlock(&b->lock);
    return PyBool_FromLong(full);
}

/* rate, burst, tokens, refilled: read and written under the mutex (a reload sets rate and burst). */
static PyObject *get_field(NativeBucket *b, void *offset) {
    pthread_mutex_lock(&b->lock);
    double value = *(double *)((char *)b + (size_t)offset);
    pthread_mutex_unlock(&b->lock);
    return PyFloat_FromDouble(value);
}

static int set_field(NativeBucket *b, PyObject *value, void *offset) {
    double v = value == NULL ? -1.0 : PyFloat_AsDouble(value);
    if (value == NULL) { PyErr_SetString(PyExc_AttributeError, "cannot delete"); return -1; }
    if (v == -1.0 && PyErr_Occurred()) return -1;
    pthread_mutex_lock(&b->lock);
    *(double *)((char *)b + (size_t)offset) = v;
    pthread_mutex_unlock(&b->lock);
    return 0;
}

#define FIELD(name) {#name, (getter)get_field, (setter)set_field, NULL, (void *)offsetof(NativeBucket, name)}

static PyGetSetDef bucket_fields[] = {FIELD(rate), FIELD(burst), FIELD(tokens), FIELD(refilled), {NULL}};

static PyMethodDef bucket_methods[] = {
    {"take", (PyCFunction)py_take, METH_VARARGS, "take(now, cost=1.0) -> bool, as TokenBucket.take."},
    {"take_many", (PyCFunction)py_take_many, METH_VARARGS, "take_many(count, now) -> int, as TokenBucket.take_many."},
    {"full", (PyCFunction)py_full, METH_O, "full(now) -> bool, as TokenBucket.full."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject NativeBucketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshvpn._fastpath.NativeBucket",
    .tp_basicsize = sizeof(NativeBucket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NativeBucket(rate, burst, now): meshvpn.ratelimit.TokenBucket behind a mutex, for two threads.",
    .tp_new = bucket_new,
    .tp_dealloc = (destructor)bucket_dealloc,
    .tp_methods = bucket_methods,
    .tp_getset = bucket_fields,
};
