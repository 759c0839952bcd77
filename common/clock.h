/* clock.h - wall and monotonic time in milliseconds, RFC 3339 formatting. */
#ifndef KILN_CLOCK_H
#define KILN_CLOCK_H

#include <stddef.h>
#include <stdint.h>

int64_t kiln_now_ms(void);       /* CLOCK_REALTIME, unix ms */
int64_t kiln_mono_ms(void);      /* CLOCK_MONOTONIC ms */
int64_t kiln_mono_us(void);      /* CLOCK_MONOTONIC us */

/* Writes "2026-11-24T07:04:42.123Z" (24 chars + NUL) into buf (>= 32 bytes). */
void kiln_rfc3339_ms(int64_t unix_ms, char *buf, size_t buflen);

#endif
