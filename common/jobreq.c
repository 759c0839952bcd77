/* jobreq.c - the rules every JobRequest must satisfy (CONTRACT §3/§4). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "jobreq.h"

#define JOBREQ_SIDE_MAX 8192 /* largest width or height in "WxH" */

size_t kiln_utf8_chars(const char *s, int *valid)
{
    size_t count = 0;
    int ok = 1;
    const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
    while (*p != '\0') {
        unsigned c = *p;
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            count++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            ok = 0;
            break;
        }
        size_t i;
        for (i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80) break; /* also stops at the NUL */
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (i < len) {
            ok = 0;
            break;
        }
        /* Overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid. */
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            ok = 0;
            break;
        }
        p += len;
        count++;
    }
    if (valid != NULL) *valid = ok;
    return count;
}

int kiln_jobreq_id_ok(const char *id)
{
    if (id == NULL) return 0;
    size_t n = 0;
    for (const char *p = id; *p != '\0'; p++, n++) {
        char c = *p;
        if (n >= KILN_ID_MAX_LEN) return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n >= 1;
}

/* Parses 1..JOBREQ_SIDE_MAX written with digits only; advances *p. */
static int jobreq_side(const char **p)
{
    const char *s = *p;
    unsigned v = 0;
    size_t digits = 0;
    while (*s >= '0' && *s <= '9') {
        if (++digits > 5) return 0;
        v = v * 10 + (unsigned)(*s - '0');
        s++;
    }
    *p = s;
    return digits > 0 && v >= 1 && v <= JOBREQ_SIDE_MAX;
}

int kiln_jobreq_size_ok(const char *size)
{
    if (size == NULL) return 0;
    const char *p = size;
    if (!jobreq_side(&p) || *p != 'x') return 0;
    p++;
    if (!jobreq_side(&p) || *p != '\0') return 0;
    return 1;
}

int kiln_idem_key_ok(const char *key)
{
    if (key == NULL) return 0;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++, n++) {
        if (n >= KILN_IDEM_KEY_MAX_LEN) return 0;
        if (*p < 0x21 || *p > 0x7e) return 0;
    }
    return n >= 1;
}

static int jobreq_has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p == 0x7f) return 1;
    return 0;
}

static int jobreq_utf8_ok(const char *s)
{
    int valid = 0;
    (void)kiln_utf8_chars(s, &valid);
    return valid;
}

int kiln_jobreq_model_ok(const char *model)
{
    return strlen(model) <= KILN_MODEL_MAX_LEN && jobreq_utf8_ok(model) &&
           !jobreq_has_control(model);
}

static kiln_status jobreq_fail(char *field, size_t fieldlen, char *msg, size_t msglen,
                               const char *name, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static kiln_status jobreq_fail(char *field, size_t fieldlen, char *msg, size_t msglen,
                               const char *name, const char *fmt, ...)
{
    if (field != NULL && fieldlen > 0) snprintf(field, fieldlen, "%s", name);
    if (msg != NULL && msglen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return KILN_EINVAL;
}

#define FAIL(name, ...) jobreq_fail(field, fieldlen, msg, msglen, (name), __VA_ARGS__)

static const char *jobreq_str(const char *s) { return s != NULL ? s : ""; }

kiln_status kiln_jobreq_validate(const Kiln__V1__JobRequest *r, char *field, size_t fieldlen,
                                 char *msg, size_t msglen)
{
    if (field != NULL && fieldlen > 0) field[0] = '\0';
    if (msg != NULL && msglen > 0) msg[0] = '\0';
    if (r == NULL) return FAIL("", "missing request");

    const char *id = jobreq_str(r->id);
    if (id[0] == '\0') return FAIL("id", "id is required");
    if (!kiln_jobreq_id_ok(id))
        return FAIL("id", "id must be 1-%d characters of A-Z, a-z, 0-9, '_' or '-'", KILN_ID_MAX_LEN);

    const char *user = jobreq_str(r->user_id);
    if (user[0] == '\0') return FAIL("user_id", "user_id is required");
    if (strlen(user) > KILN_USER_MAX_LEN)
        return FAIL("user_id", "user_id must be at most %d bytes", KILN_USER_MAX_LEN);
    if (!jobreq_utf8_ok(user) || jobreq_has_control(user))
        return FAIL("user_id", "user_id must be valid UTF-8 without control characters");

    const char *prompt = jobreq_str(r->prompt);
    if (prompt[0] == '\0') return FAIL("prompt", "prompt is required");
    int valid = 0;
    size_t chars = kiln_utf8_chars(prompt, &valid);
    if (!valid) return FAIL("prompt", "prompt must be valid UTF-8");
    if (chars > KILN_PROMPT_MAX_CHARS)
        return FAIL("prompt", "prompt must be 1-%d characters, got %zu", KILN_PROMPT_MAX_CHARS,
                    chars);

    if (!kiln_jobreq_model_ok(jobreq_str(r->model)))
        return FAIL("model", KILN_JOBREQ_MODEL_RULE, KILN_MODEL_MAX_LEN);

    if (r->n > KILN_N_MAX) return FAIL("n", "n must be between 1 and %d", KILN_N_MAX);

    const char *size = jobreq_str(r->size);
    if (size[0] != '\0' && !kiln_jobreq_size_ok(size))
        return FAIL("size", "size must look like \"1024x1024\" with each side 1-%d",
                    JOBREQ_SIDE_MAX);

    if (r->n_params > KILN_PARAMS_MAX)
        return FAIL("params", "params may have at most %d entries", KILN_PARAMS_MAX);
    for (size_t i = 0; i < r->n_params; i++) {
        const Kiln__V1__JobRequest__ParamsEntry *e = r->params[i];
        if (e == NULL) return FAIL("params", "params entry %zu is missing", i);
        const char *k = jobreq_str(e->key);
        const char *v = jobreq_str(e->value);
        if (k[0] == '\0') return FAIL("params", "params keys must not be empty");
        if (strlen(k) > KILN_PARAM_MAX_LEN || strlen(v) > KILN_PARAM_MAX_LEN)
            return FAIL("params", "params keys and values must be at most %d bytes",
                        KILN_PARAM_MAX_LEN);
        if (!jobreq_utf8_ok(k) || !jobreq_utf8_ok(v))
            return FAIL("params", "params keys and values must be valid UTF-8");
    }

    switch (r->priority) {
    case KILN__V1__PRIORITY__PRIORITY_NORMAL:
    case KILN__V1__PRIORITY__PRIORITY_HIGH:
    case KILN__V1__PRIORITY__PRIORITY_LOW: break;
    default: return FAIL("priority", "priority must be high, normal or low");
    }

    if (r->not_before_ms < 0) return FAIL("not_before_ms", "not_before_ms must not be negative");
    if (r->timeout_s > KILN_TIMEOUT_MAX_S)
        return FAIL("timeout_s", "timeout_s must be between 1 and %d", KILN_TIMEOUT_MAX_S);
    if (r->max_attempts > KILN_ATTEMPTS_MAX)
        return FAIL("max_attempts", "max_attempts must be between 1 and %d", KILN_ATTEMPTS_MAX);

    const char *key = jobreq_str(r->idempotency_key);
    if (key[0] != '\0' && !kiln_idem_key_ok(key))
        return FAIL("idempotency_key", "idempotency_key must be 1-%d visible ASCII characters",
                    KILN_IDEM_KEY_MAX_LEN);
    return KILN_OK;
}

unsigned kiln_jobreq_n(const Kiln__V1__JobRequest *r)
{
    if (r == NULL || r->n == 0) return 1;
    return r->n > KILN_N_MAX ? KILN_N_MAX : r->n;
}

unsigned kiln_jobreq_timeout_s(const Kiln__V1__JobRequest *r)
{
    if (r == NULL || r->timeout_s == 0) return KILN_TIMEOUT_DEFAULT_S;
    return r->timeout_s > KILN_TIMEOUT_MAX_S ? KILN_TIMEOUT_MAX_S : r->timeout_s;
}

int kiln_jobrec_abandoned(const Kiln__V1__JobRecord *rec, int64_t now_ms)
{
    if (rec == NULL || rec->status == NULL || rec->updated_at_ms <= 0) return 0;
    if (rec->status->state != KILN__V1__JOB_STATE__JOB_STATE_PROCESSING) return 0;
    int64_t limit_ms = (int64_t)kiln_jobreq_timeout_s(rec->request) * 1000 + KILN_ABANDONED_GRACE_MS;
    return now_ms - rec->updated_at_ms > limit_ms;
}

unsigned kiln_jobreq_max_attempts(const Kiln__V1__JobRequest *r)
{
    if (r == NULL || r->max_attempts == 0) return KILN_ATTEMPTS_DEFAULT;
    return r->max_attempts > KILN_ATTEMPTS_MAX ? KILN_ATTEMPTS_MAX : r->max_attempts;
}
