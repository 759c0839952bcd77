/* directives.c - parses fault-injection directives at the start of a prompt. */
#include <string.h>

#include "directives.h"

/* Parses a decimal number of 1..9 digits in [s, end) into *out; 0 on success. */
static int directives_num(const char *s, const char *end, int64_t *out)
{
    if (s >= end || end - s > 9) return -1;
    int64_t v = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

static int directives_count(const char *s, const char *end, uint32_t *out)
{
    int64_t v;
    if (directives_num(s, end, &v) != 0 || v < 1 || v > DEV_COUNT_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Applies one token [tok, end) (without the leading '!') to d; 0 when it is a
 * well-formed directive. */
static int directives_token(const char *tok, const char *end, dev_directives *d)
{
    const char *eq = memchr(tok, '=', (size_t)(end - tok));
    size_t name_len = (size_t)((eq != NULL ? eq : end) - tok);
    const char *val = eq != NULL ? eq + 1 : end;

    if (name_len == 5 && memcmp(tok, "sleep", 5) == 0) {
        int64_t ms;
        if (eq == NULL || directives_num(val, end, &ms) != 0 || ms > DEV_SLEEP_MAX_MS) return -1;
        d->sleep_ms = ms;
        return 0;
    }
    if (d->nsteps >= DEV_STEPS_MAX) return -1;
    dev_step st = {.kind = DEV_ACT_SUCCEED, .code = 0, .count = 0};
    if (name_len == 4 && memcmp(tok, "fail", 4) == 0) {
        if (eq == NULL) return -1;
        const char *colon = memchr(val, ':', (size_t)(end - val));
        int64_t code;
        if (directives_num(val, colon != NULL ? colon : end, &code) != 0 || code < 400 ||
            code > 599)
            return -1;
        if (colon != NULL && directives_count(colon + 1, end, &st.count) != 0) return -1;
        st.kind = DEV_ACT_FAIL;
        st.code = (int)code;
    } else if (name_len == 9 && memcmp(tok, "ratelimit", 9) == 0) {
        if (eq == NULL || directives_count(val, end, &st.count) != 0) return -1;
        st.kind = DEV_ACT_RATELIMIT;
        st.code = 429;
    } else if (name_len == 4 && memcmp(tok, "hang", 4) == 0) {
        if (eq != NULL && directives_count(val, end, &st.count) != 0) return -1;
        st.kind = DEV_ACT_HANG;
    } else {
        return -1;
    }
    d->steps[d->nsteps++] = st;
    return 0;
}

kiln_status dev_directives_parse(const char *prompt, dev_directives *out)
{
    if (prompt == NULL || out == NULL) return KILN_EINVAL;
    dev_directives d;
    memset(&d, 0, sizeof d);
    d.sleep_ms = -1;
    const char *p = prompt;
    while (*p == '!') {
        const char *end = p + 1;
        while (*end != '\0' && *end != ' ') end++;
        /* directives_token changes d only when the token is well formed. */
        if (directives_token(p + 1, end, &d) != 0) break;
        p = end;
        while (*p == ' ') p++;
    }
    d.image_off = (size_t)(p - prompt);
    *out = d;
    return KILN_OK;
}

dev_step dev_directives_action(const dev_directives *d, uint64_t attempt)
{
    dev_step ok = {.kind = DEV_ACT_SUCCEED, .code = 200, .count = 0};
    if (d == NULL || attempt == 0) return ok;
    uint64_t left = attempt;
    for (size_t i = 0; i < d->nsteps; i++) {
        const dev_step *s = &d->steps[i];
        if (s->count == 0 || left <= s->count) return *s;
        left -= s->count;
    }
    return ok;
}

int dev_directives_counted(const dev_directives *d)
{
    return d != NULL && d->nsteps > 0;
}
