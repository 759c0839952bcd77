/* ratelimit.h - per-user submit token buckets (KILN_SUBMIT_RATE/BURST). */
#ifndef GW_RATELIMIT_H
#define GW_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* rate_per_s 0 = off. burst 0 = max(1, ceil(rate_per_s)). One bucket per
 * API key index (users are known at start, so no table grows with input). */
kiln_status gw_ratelimit_init(double rate_per_s, long burst, size_t nkeys);
void gw_ratelimit_free(void);

/* Takes one token for key idx; on false *retry_after_s says when to retry. */
bool gw_ratelimit_take(int idx, int *retry_after_s);
/* The same at a given kiln_mono_us() time (tests). */
bool gw_ratelimit_take_at(int idx, int64_t now_us, int *retry_after_s);

#endif
