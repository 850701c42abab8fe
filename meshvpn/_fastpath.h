/* Helpers shared by the native data path's sources (see _fastpath.c). */

#ifndef MESHVPN_FASTPATH_H
#define MESHVPN_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_LEN 16
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define VERSION 1
#define KIND_DATA 3
#define KIND_KEEPALIVE 4
#define KIND_RELAY 7
#define KEY_LEN 32
#define RELAY_INNER (4 + KEY_LEN)
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80


static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t get32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64le(const uint8_t *p) { return (uint64_t)get32le(p) | (uint64_t)get32le(p + 4) << 32; }
static inline void put64le(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* Sum of big-endian 16-bit words; an odd last byte is padded with zero. */
static inline uint64_t sum16(const uint8_t *p, Py_ssize_t n) {
    uint64_t s = 0;
    for (Py_ssize_t i = 0; i + 1 < n; i += 2) s += get16(p + i);
    if (n & 1) s += (uint64_t)p[n - 1] << 8;
    return s;
}

/* End-around-carry fold: 1..0xFFFF, 0 only for a zero sum (offload.fold). */
static inline uint32_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

PyObject *coalesce_iov(PyObject *self, PyObject *packets);
extern const char coalesce_iov_doc[];

#endif
