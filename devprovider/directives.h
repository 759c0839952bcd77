/* directives.h - fault-injection directives at the start of a prompt (CONTRACT §6).
 *
 * A prompt may start with any number of space-separated directives:
 *   !sleep=MS        answer after MS milliseconds (instead of the default latency)
 *   !fail=CODE:K     the next K attempts answer HTTP CODE (400..599)
 *   !fail=CODE       every remaining attempt answers HTTP CODE
 *   !ratelimit=K     the next K attempts answer 429 with Retry-After: 1
 *   !hang            every remaining attempt never answers (until the client leaves)
 *   !hang=K          the next K attempts never answer (extension)
 * The fault directives form a script consumed in the order they appear:
 * "!ratelimit=1 !fail=500:2 x" answers 429, 500, 500, then succeeds.
 * Parsing stops at the first token that is not a well-formed directive; that
 * token and the rest are the image prompt. */
#ifndef DEV_DIRECTIVES_H
#define DEV_DIRECTIVES_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_STEPS_MAX 16            /* fault directives per prompt */
#define DEV_SLEEP_MAX_MS 3600000    /* one hour */
#define DEV_COUNT_MAX 1000000       /* K in fail/ratelimit/hang */

typedef enum {
    DEV_ACT_SUCCEED = 0,
    DEV_ACT_FAIL,      /* answer code */
    DEV_ACT_RATELIMIT, /* answer 429 + Retry-After: 1 */
    DEV_ACT_HANG,      /* never answer */
} dev_action_kind;

typedef struct {
    dev_action_kind kind;
    int code;       /* DEV_ACT_FAIL: the HTTP status */
    uint32_t count; /* attempts this step covers; 0 = all remaining */
} dev_step;

typedef struct {
    int64_t sleep_ms;  /* -1 = no !sleep directive */
    dev_step steps[DEV_STEPS_MAX];
    size_t nsteps;
    size_t image_off;  /* offset of the image prompt (directives stripped) */
} dev_directives;

/* Parses the directives at the start of prompt into out. Never fails on
 * malformed directives (they are prompt text); returns KILN_EINVAL only for
 * NULL arguments. */
kiln_status dev_directives_parse(const char *prompt, dev_directives *out);

/* The action for the attempt-th attempt (1-based) of a prompt with d. */
dev_step dev_directives_action(const dev_directives *d, uint64_t attempt);

/* Non-zero when d has fault steps, i.e. its attempts must be counted. */
int dev_directives_counted(const dev_directives *d);

#endif
