/* retry.c - the retry delay: exponential backoff with full jitter, with the
 * provider's Retry-After as a floor. */
#include <stdlib.h>

#include "cons.h"

int64_t cons_retry_delay_ms(unsigned attempt, int64_t base_ms, int64_t cap_ms, int64_t min_ms)
{
    int64_t ceiling = base_ms > 0 ? base_ms : 1;
    for (unsigned i = 1; i < attempt && ceiling < cap_ms; i++) ceiling *= 2;
    if (ceiling > cap_ms) ceiling = cap_ms;
    if (ceiling < 1) ceiling = 1;
    /* Full jitter: uniform in [0, ceiling]. arc4random is thread-safe (glibc >= 2.36). */
    int64_t d = (int64_t)(((uint64_t)arc4random() << 32 | arc4random()) % (uint64_t)(ceiling + 1));
    if (min_ms > d) d = min_ms;
    return d;
}
