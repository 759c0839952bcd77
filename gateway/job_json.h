/* job_json.h - JSON <-> protobuf for jobs: the POST /v1/jobs body into a
 * JobRequest (every CONTRACT §3 rule), a JobRecord into the job object. */
#ifndef GW_JOB_JSON_H
#define GW_JOB_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kiln.pb-c.h"
#include "sha256.h"
#include "status.h"

typedef struct {
    const char *code;  /* CONTRACT error code */
    char field[72];
    char msg[256];
} gw_fielderr;

/* Parses a POST /v1/jobs body. On success *out is a new JobRequest (free with
 * gw_jobjson_request_free) with every body field set; the caller sets id,
 * user_id and created_at_ms. not_before_ms = now_ms + delay_ms. On a client
 * error fills e and returns KILN_EINVAL. */
kiln_status gw_jobjson_parse(const char *body, size_t len, int64_t now_ms,
                             Kiln__V1__JobRequest **out, gw_fielderr *e);
void gw_jobjson_request_free(Kiln__V1__JobRequest *r);

/* SHA-256 of the body as canonical JSON (keys sorted, compact), for
 * Idempotency-Key: the "same body" test. The body parsed already. */
kiln_status gw_jobjson_body_hash(const char *body, size_t len, uint8_t out[KILN_SHA256_LEN]);

/* Sets a string field of a request built by gw_jobjson_parse. */
kiln_status gw_jobjson_set_str(char **field, const char *value);

/* The CONTRACT §3 job object for rec; NULL on out of memory. */
json_t *gw_jobjson_job(const Kiln__V1__JobRecord *rec);

/* RFC 3339 string or JSON null when ms is 0. */
json_t *gw_jobjson_time(int64_t ms);

#endif
