/* What the native threads share: the hand-over queue, endpoints, GRO receives and GSO sends.

   The queue, why: the node's loop (_fastpath_loop.c) and the relay's (_fastpath_relay.c) both leave every
   message they do not own (handshakes, hellos, anything unknown) to the Python core, in order,
   without taking the GIL: a copy goes on this queue and an eventfd wakes the asyncio loop,
   written only when the queue goes from empty to non-empty.  At most QUEUE_LIMIT bytes wait;
   beyond that a hand-over is dropped and counted.  Part of meshvpn._fastpath. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "_fastpath.h"

int queue_init(Queue *q) {
    q->head = NULL;
    q->tail = &q->head;
    q->queued = 0;
    q->handed = q->full = 0;
    pthread_mutex_init(&q->lock, NULL);
    q->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return q->wake_fd < 0 ? -1 : 0;
}

static void free_items(Item *item) {
    for (Item *next; item != NULL; item = next) { next = item->next; free(item); }
}

void queue_free(Queue *q) {
    free_items(q->head);
    q->head = NULL;
    if (q->wake_fd >= 0) close(q->wake_fd);
    q->wake_fd = -1;
    pthread_mutex_destroy(&q->lock);
}

void queue_wake(Queue *q) {
    uint64_t one = 1;
    ssize_t ignored = write(q->wake_fd, &one, sizeof one);
    (void)ignored;
}

void queue_push(Queue *q, const uint8_t *b, Py_ssize_t size, Py_ssize_t seg, const struct sockaddr_storage *src) {
    queue_push_via(q, b, size, seg, src, 0);
}

void queue_push_via(Queue *q, const uint8_t *b, Py_ssize_t size, Py_ssize_t seg, const struct sockaddr_storage *src,
                    int via) {
    pthread_mutex_lock(&q->lock);
    Item *item = q->queued + size > QUEUE_LIMIT ? NULL : malloc(sizeof(Item) + (size_t)size);
    if (item == NULL) {
        COUNT(q->full, 1);
        pthread_mutex_unlock(&q->lock);
        return;
    }
    item->next = NULL;
    item->size = size;
    item->seg = seg;
    item->via = via;
    item->src = *src;
    memcpy(item->data, b, (size_t)size);
    int was_empty = q->head == NULL;
    *q->tail = item;
    q->tail = &item->next;
    q->queued += size;
    COUNT(q->handed, 1);
    pthread_mutex_unlock(&q->lock);
    if (was_empty) queue_wake(q);
}

/* (host, port) as socket.recvfrom gives it, or None; an IPv4-mapped source of a dual-stack socket in
   plain IPv4, as meshvpn.dualstack.plain gives it. */
PyObject *endpoint(const struct sockaddr_storage *a) {
    char host[INET6_ADDRSTRLEN];
    const struct sockaddr_in *v4 = (const void *)a;
    const struct sockaddr_in6 *v6 = (const void *)a;
    if (a->ss_family == AF_INET && inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host) != NULL)
        return Py_BuildValue("si", host, ntohs(v4->sin_port));
    if (a->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)
            && inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], host, sizeof host) != NULL)
        return Py_BuildValue("si", host, ntohs(v6->sin6_port));
    if (a->ss_family == AF_INET6 && inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host) != NULL)
        return Py_BuildValue("si", host, ntohs(v6->sin6_port));
    Py_RETURN_NONE;
}

PyObject *queue_take(Queue *q, int with_via) {
    uint64_t value;
    ssize_t ignored = read(q->wake_fd, &value, sizeof value);
    (void)ignored;
    pthread_mutex_lock(&q->lock);
    Item *item = q->head;
    q->head = NULL;
    q->tail = &q->head;
    q->queued = 0;
    pthread_mutex_unlock(&q->lock);
    PyObject *out = PyList_New(0);
    for (Item *next; item != NULL; item = next) {
        next = item->next;
        PyObject *src = out == NULL ? NULL : endpoint(&item->src);
        PyObject *row = src == NULL ? NULL
            : with_via ? Py_BuildValue("y#Nni", (const char *)item->data, item->size, src, item->seg, item->via)
            : Py_BuildValue("y#Nn", (const char *)item->data, item->size, src, item->seg);
        if (row == NULL || PyList_Append(out, row) < 0) Py_CLEAR(out);
        Py_XDECREF(row);
        free(item);
    }
    return out;
}

int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
}

/* (address bytes, port) → a sockaddr of the socket's family (IPv4 is mapped on an IPv6 socket). */
int parse_endpoint(PyObject *row, int family, struct sockaddr_storage *a, socklen_t *len) {
    Py_buffer host;
    int port;
    if (!PyArg_ParseTuple(row, "y*i", &host, &port)) return -1;
    memset(a, 0, sizeof *a);
    int ok = (host.len == 4 || host.len == 16) && port >= 0 && port < 65536;
    if (ok && host.len == 4 && family != AF_INET6) {
        struct sockaddr_in *v4 = (void *)a;
        v4->sin_family = AF_INET; v4->sin_port = htons((uint16_t)port);
        memcpy(&v4->sin_addr, host.buf, 4);
        *len = sizeof *v4;
    } else if (ok) {
        struct sockaddr_in6 *v6 = (void *)a;
        v6->sin6_family = AF_INET6; v6->sin6_port = htons((uint16_t)port);
        if (host.len == 4) {
            v6->sin6_addr.s6_addr[10] = v6->sin6_addr.s6_addr[11] = 0xFF;
            memcpy(&v6->sin6_addr.s6_addr[12], host.buf, 4);
        } else {
            memcpy(&v6->sin6_addr, host.buf, 16);
        }
        *len = sizeof *v6;
    }
    PyBuffer_Release(&host);
    if (!ok) PyErr_SetString(PyExc_ValueError, "an endpoint is (4 or 16 address bytes, port)");
    return ok ? 0 : -1;
}

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

ssize_t gro_receive(int fd, uint8_t *into, size_t room, struct sockaddr_storage *src, Py_ssize_t *seg, int *truncated) {
    struct iovec iov = {into, room};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr mh = {src, sizeof *src, &iov, 1, control.buf, sizeof control.buf, 0};
    ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
    *seg = n;
    for (struct cmsghdr *c = n < 0 ? NULL : CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof size);
            if (size > 0) *seg = size;
        }
    *truncated = n >= 0 && (mh.msg_flags & MSG_TRUNC);
    return n;
}

ssize_t gso_send(int fd, const struct sockaddr_storage *dest, socklen_t dest_len, struct iovec *iov, size_t n, int seg) {
    union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
    struct msghdr mh = {(void *)dest, dest_len, iov, n, NULL, 0, 0};
    if (seg) {
        uint16_t seg_size = (uint16_t)seg;
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof seg_size);
        memcpy(CMSG_DATA(c), &seg_size, sizeof seg_size);
    }
    return sendmsg(fd, &mh, 0);
}
