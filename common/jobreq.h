/* jobreq.h - the rules every JobRequest must satisfy (CONTRACT §3/§4), shared
 * by the gateway (HTTP input), the consumer and store (NATS input) and the
 * client library. */
#ifndef KILN_JOBREQ_H
#define KILN_JOBREQ_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

#define KILN_PROMPT_MAX_CHARS 4000
#define KILN_ID_MAX_LEN 64
#define KILN_USER_MAX_LEN 128
#define KILN_MODEL_MAX_LEN 128
#define KILN_N_MAX 4
#define KILN_PARAMS_MAX 32
#define KILN_PARAM_MAX_LEN 1024
#define KILN_DELAY_MAX_MS 86400000LL
#define KILN_TIMEOUT_MAX_S 3600
#define KILN_TIMEOUT_DEFAULT_S 300
#define KILN_ATTEMPTS_MAX 10
#define KILN_ATTEMPTS_DEFAULT 5
#define KILN_IDEM_KEY_MAX_LEN 128

/* Checks r. On failure returns KILN_EINVAL, writes the offending field name
 * (proto/JSON name, e.g. "prompt") to field and a sentence to msg. */
kiln_status kiln_jobreq_validate(const Kiln__V1__JobRequest *r, char *field, size_t fieldlen,
                                 char *msg, size_t msglen);

/* Individual rules, for the gateway's field-by-field checks. */
int kiln_jobreq_id_ok(const char *id);               /* [A-Za-z0-9_-]{1,64} */
int kiln_jobreq_size_ok(const char *size);           /* "WxH", 1..8192 each */
int kiln_jobreq_model_ok(const char *model);         /* <= 128 bytes of UTF-8, no control chars */
/* The model rule as a sentence, with %d for KILN_MODEL_MAX_LEN. */
#define KILN_JOBREQ_MODEL_RULE "model must be at most %d bytes of UTF-8 without control characters"
size_t kiln_utf8_chars(const char *s, int *valid);   /* code points; *valid=0 on bad UTF-8 */
int kiln_idem_key_ok(const char *key);               /* 1..128 visible ASCII */

/* Effective values with defaults applied. */
unsigned kiln_jobreq_n(const Kiln__V1__JobRequest *r);
unsigned kiln_jobreq_timeout_s(const Kiln__V1__JobRequest *r);
unsigned kiln_jobreq_max_attempts(const Kiln__V1__JobRequest *r);

/* How long after a record's last change (updated_at_ms) a `processing`
 * attempt can no longer be running anywhere: its timeout_s, which the
 * consumer enforces, plus this grace for publishing and clocks. */
#define KILN_ABANDONED_GRACE_MS 60000
/* 1 when rec is `processing` and older than that: its worker is gone and
 * JetStream lost track of its message (nats-server 2.9.10 after a SIGKILL),
 * or it would have been redelivered. now_ms is unix ms. */
int kiln_jobrec_abandoned(const Kiln__V1__JobRecord *rec, int64_t now_ms);

#endif
