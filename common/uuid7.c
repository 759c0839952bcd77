/* uuid7.c - RFC 9562 UUIDv7 ids, monotonic within the process. */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#include "clock.h"
#include "uuid7.h"

#define UUID7_LO_BITS 62
#define UUID7_LO_MASK ((UINT64_C(1) << UUID7_LO_BITS) - 1)

/* The last id issued: its ms and its 74 "random" bits (12 in hi, 62 in lo).
 * An id made in the same (or an earlier, after a clock step) millisecond
 * reuses that ms and adds one to the 74-bit value, so ids always increase. */
static pthread_mutex_t uuid7_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t uuid7_last_ms = -1;
static uint16_t uuid7_hi;
static uint64_t uuid7_lo;

static int uuid7_random(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

kiln_status kiln_uuid7(char *out)
{
    if (out == NULL) return KILN_EINVAL;
    int64_t now = kiln_now_ms();
    int64_t ms;
    uint16_t hi;
    uint64_t lo;

    pthread_mutex_lock(&uuid7_mu);
    if (now > uuid7_last_ms) {
        uint8_t rnd[10];
        if (uuid7_random(rnd, sizeof rnd) != 0) {
            pthread_mutex_unlock(&uuid7_mu);
            return KILN_ERR;
        }
        uint64_t r = 0;
        for (int i = 0; i < 8; i++) r = (r << 8) | rnd[i];
        uuid7_last_ms = now;
        /* Top bit of hi left clear: room to count within one millisecond. */
        uuid7_hi = (uint16_t)(((rnd[8] << 8) | rnd[9]) & 0x7ff);
        uuid7_lo = r & UUID7_LO_MASK;
    } else {
        uuid7_lo = (uuid7_lo + 1) & UUID7_LO_MASK;
        if (uuid7_lo == 0) {
            uuid7_hi = (uint16_t)((uuid7_hi + 1) & 0xfff);
            if (uuid7_hi == 0) uuid7_last_ms++; /* 2^74 ids in one ms: borrow the next ms */
        }
    }
    ms = uuid7_last_ms;
    hi = uuid7_hi;
    lo = uuid7_lo;
    pthread_mutex_unlock(&uuid7_mu);

    uint8_t b[16];
    uint64_t t = (uint64_t)ms & UINT64_C(0xffffffffffff);
    for (int i = 0; i < 6; i++) b[i] = (uint8_t)(t >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (hi >> 8));
    b[7] = (uint8_t)(hi & 0xff);
    uint64_t v = (UINT64_C(2) << UUID7_LO_BITS) | lo; /* variant 0b10 */
    for (int i = 0; i < 8; i++) b[8 + i] = (uint8_t)(v >> (56 - 8 * i));

    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0xf];
    }
    out[o] = '\0';
    return KILN_OK;
}

static int uuid7_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int64_t kiln_uuid7_time_ms(const char *s)
{
    if (s == NULL || strlen(s) != KILN_UUID_STRLEN) return -1;
    for (int i = 0; i < KILN_UUID_STRLEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return -1;
        } else if (uuid7_hexval(s[i]) < 0) {
            return -1;
        }
    }
    if (s[14] != '7') return -1;
    int var = uuid7_hexval(s[19]);
    if ((var & 0xc) != 0x8) return -1;
    int64_t ms = 0;
    for (int i = 0; i < 13; i++) {
        if (i == 8) continue;
        ms = (ms << 4) | uuid7_hexval(s[i]);
    }
    return ms;
}
