/* attempts.h - per-prompt counters for fault injection: the attempts made
 * and the requests running, in a bounded, thread-safe table keyed by a
 * 128-bit digest of the exact prompt text (dev_hash_key). */
#ifndef DEV_ATTEMPTS_H
#define DEV_ATTEMPTS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_ATTEMPTS_DEFAULT_MAX 100000 /* entries kept; the least recently used is evicted */

typedef struct dev_attempts dev_attempts;

/* Creates a table holding at most max_entries prompts (>= 1). The caller
 * destroys it with dev_attempts_destroy(). */
kiln_status dev_attempts_create(size_t max_entries, dev_attempts **out);
void dev_attempts_destroy(dev_attempts *t); /* accepts NULL */

/* A request of the prompt whose digest is key starts: counts one more
 * attempt and writes its number (1 for the first) to *attempt, counts one
 * more request running, and writes how many were running before it to
 * *running_before (may be NULL). Pair with dev_attempts_end(). Thread-safe.
 * A prompt evicted by newer ones starts again at 1 with nothing running;
 * prompts with requests running are evicted last.
 * KILN_ENOMEM leaves the table as it was. */
kiln_status dev_attempts_begin(dev_attempts *t, const uint64_t key[2], uint64_t *attempt,
                               uint64_t *running_before);

/* A request begun with dev_attempts_begin() ends (nothing when its prompt
 * was evicted meanwhile). */
void dev_attempts_end(dev_attempts *t, const uint64_t key[2]);

/* Number of prompts currently tracked. */
size_t dev_attempts_size(dev_attempts *t);

#endif
