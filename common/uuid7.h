/* uuid7.h - RFC 9562 UUIDv7 job ids: 48-bit unix ms, random rest, monotonic
 * within a process (ids made in the same millisecond still sort in order). */
#ifndef KILN_UUID7_H
#define KILN_UUID7_H

#include <stdint.h>

#include "status.h"

#define KILN_UUID_STRLEN 36 /* without the NUL */

/* Writes the canonical lower-case form into out (>= 37 bytes). Thread-safe.
 * Returns KILN_ERR only if the system has no randomness to give. */
kiln_status kiln_uuid7(char *out);

/* The unix ms embedded in a UUIDv7 string, or -1 if s is not one. */
int64_t kiln_uuid7_time_ms(const char *s);

#endif
