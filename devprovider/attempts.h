/* attempts.h - per-prompt attempt counters for fault injection: a bounded,
 * thread-safe table keyed by a 128-bit digest of the exact prompt text. */
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

/* Counts one more attempt of the prompt text [prompt, prompt+len) and writes
 * its number (1 for the first) to *attempt. Thread-safe. A prompt evicted by
 * newer ones starts again at 1. KILN_ENOMEM/KILN_ERR leave the table as it was. */
kiln_status dev_attempts_next(dev_attempts *t, const char *prompt, size_t len, uint64_t *attempt);

/* Number of prompts currently tracked. */
size_t dev_attempts_size(dev_attempts *t);

#endif
