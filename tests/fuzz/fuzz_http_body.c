/* fuzz_http_body.c - a POST /v1/jobs body as the gateway reads it
 * (gateway/job_json.c). Beyond "no crash, no leak": a body the gateway
 * accepts must also pass the rules the consumer and store apply to every
 * JobRequest (common/jobreq.c), or the job would be dead-lettered after its
 * 202; it must survive a protobuf round trip, hash as an idempotency body,
 * and render as the job object. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_input.h"
#include "../../gateway/job_json.h"
#include "jobreq.h"
#include "pb.h"

#define FUZZ_NOW_MS 1795503882123LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_http_body: %s: %s\n", what, detail);
    abort();
}

static void fuzz_accepted(Kiln__V1__JobRequest *r, const char *body, size_t size)
{
    char field[72], msg[256];
    if (gw_jobjson_set_str(&r->id, "01a2f3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6b") != KILN_OK ||
        gw_jobjson_set_str(&r->user_id, "fuzz") != KILN_OK)
        return; /* out of memory */
    r->created_at_ms = FUZZ_NOW_MS;
    if (kiln_jobreq_validate(r, field, sizeof field, msg, sizeof msg) != KILN_OK)
        fuzz_fail("accepted body fails the JobRequest rules", msg);

    uint8_t *packed = NULL;
    size_t plen = 0;
    if (kiln_pb_pack(&r->base, &packed, &plen) == KILN_OK) {
        Kiln__V1__JobRequest *back = kiln__v1__job_request__unpack(NULL, plen, packed);
        if (back == NULL) fuzz_fail("accepted body", "its packed JobRequest does not unpack");
        if (kiln_jobreq_validate(back, field, sizeof field, msg, sizeof msg) != KILN_OK)
            fuzz_fail("unpacked JobRequest fails the rules", msg);
        kiln__v1__job_request__free_unpacked(back, NULL);
        free(packed);
    }

    uint8_t hash[KILN_SHA256_LEN];
    if (gw_jobjson_body_hash(body, size, hash) != KILN_OK)
        fuzz_fail("accepted body", "cannot be hashed for Idempotency-Key");

    Kiln__V1__JobStatus st = KILN__V1__JOB_STATUS__INIT;
    Kiln__V1__JobRecord rec = KILN__V1__JOB_RECORD__INIT;
    st.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    rec.request = r;
    rec.status = &st;
    json_t *job = gw_jobjson_job(&rec);
    if (job != NULL) {
        char *text = json_dumps(job, JSON_COMPACT);
        if (text == NULL) fuzz_fail("job object", "does not serialise");
        free(text);
        json_decref(job);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fz_copy(data, size);
    if (body == NULL) return 0;
    Kiln__V1__JobRequest *r = NULL;
    gw_fielderr e;
    kiln_status st = gw_jobjson_parse(body, size, FUZZ_NOW_MS, &r, &e);
    if (st == KILN_OK) {
        fuzz_accepted(r, body, size);
        gw_jobjson_request_free(r);
    } else if (st == KILN_EINVAL) {
        if (e.code == NULL || e.msg[0] == '\0') fuzz_fail("rejected body", "no error code or message");
    }
    free(body);
    return 0;
}
