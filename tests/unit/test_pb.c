/* test_pb.c - unit tests for common/pb.c: pack/unpack round trips and names. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "subjects.h"

Test(pb, job_request_round_trip_with_params)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    Kiln__V1__JobRequest__ParamsEntry e1 = KILN__V1__JOB_REQUEST__PARAMS_ENTRY__INIT;
    Kiln__V1__JobRequest__ParamsEntry e2 = KILN__V1__JOB_REQUEST__PARAMS_ENTRY__INIT;
    Kiln__V1__JobRequest__ParamsEntry *ep[] = {&e1, &e2};
    e1.key = "style";
    e1.value = "vivid";
    e2.key = "seed";
    e2.value = "42";
    r.id = "job-1";
    r.user_id = "alice";
    r.prompt = "a red fox \xe2\x82\xac";
    r.model = "m";
    r.n = 2;
    r.size = "512x512";
    r.n_params = 2;
    r.params = ep;
    r.priority = KILN__V1__PRIORITY__PRIORITY_HIGH;
    r.created_at_ms = 1795503882123LL;
    r.not_before_ms = 1795503883000LL;
    r.timeout_s = 60;
    r.max_attempts = 3;
    r.idempotency_key = "idem";

    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
    cr_assert_not_null(buf);
    cr_assert_eq(len, kiln__v1__job_request__get_packed_size(&r));

    Kiln__V1__JobRequest *u = kiln__v1__job_request__unpack(NULL, len, buf);
    cr_assert_not_null(u);
    cr_assert_str_eq(u->id, "job-1");
    cr_assert_str_eq(u->user_id, "alice");
    cr_assert_str_eq(u->prompt, "a red fox \xe2\x82\xac");
    cr_assert_str_eq(u->model, "m");
    cr_assert_eq(u->n, 2);
    cr_assert_str_eq(u->size, "512x512");
    cr_assert_eq(u->n_params, 2);
    cr_assert_str_eq(u->params[0]->key, "style");
    cr_assert_str_eq(u->params[0]->value, "vivid");
    cr_assert_str_eq(u->params[1]->key, "seed");
    cr_assert_str_eq(u->params[1]->value, "42");
    cr_assert_eq(u->priority, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert_eq(u->created_at_ms, 1795503882123LL);
    cr_assert_eq(u->not_before_ms, 1795503883000LL);
    cr_assert_eq(u->timeout_s, 60);
    cr_assert_eq(u->max_attempts, 3);
    cr_assert_str_eq(u->idempotency_key, "idem");
    kiln__v1__job_request__free_unpacked(u, NULL);
    free(buf);
}

Test(pb, job_status_round_trip_with_images)
{
    Kiln__V1__JobStatus s = KILN__V1__JOB_STATUS__INIT;
    Kiln__V1__Image i0 = KILN__V1__IMAGE__INIT, i1 = KILN__V1__IMAGE__INIT;
    Kiln__V1__Image *imgs[] = {&i0, &i1};
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    i0.index = 0;
    i0.url = "/v1/jobs/j/images/0";
    i0.content_type = "image/png";
    i0.size_bytes = 12345;
    i1.index = 1;
    i1.url = "https://cdn.example/x.png";
    i1.content_type = "image/png";
    i1.size_bytes = 5ULL << 32;
    err.code = "provider_error";
    err.message = "half failed";
    s.id = "j";
    s.user_id = "bob";
    s.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    s.n_images = 2;
    s.images = imgs;
    s.error = &err;
    s.attempts = 2;
    s.created_at_ms = 1;
    s.started_at_ms = 2;
    s.completed_at_ms = 3;
    s.prompt = "p";

    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_pb_pack(&s.base, &buf, &len), KILN_OK);
    Kiln__V1__JobStatus *u = kiln__v1__job_status__unpack(NULL, len, buf);
    cr_assert_not_null(u);
    cr_assert_str_eq(u->id, "j");
    cr_assert_str_eq(u->user_id, "bob");
    cr_assert_eq(u->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_assert_eq(u->n_images, 2);
    cr_assert_eq(u->images[0]->index, 0);
    cr_assert_str_eq(u->images[0]->url, "/v1/jobs/j/images/0");
    cr_assert_eq(u->images[0]->size_bytes, 12345);
    cr_assert_eq(u->images[1]->index, 1);
    cr_assert_str_eq(u->images[1]->url, "https://cdn.example/x.png");
    cr_assert_eq(u->images[1]->size_bytes, 5ULL << 32);
    cr_assert_not_null(u->error);
    cr_assert_str_eq(u->error->code, "provider_error");
    cr_assert_str_eq(u->error->message, "half failed");
    cr_assert_eq(u->attempts, 2);
    cr_assert_eq(u->completed_at_ms, 3);
    cr_assert_str_eq(u->prompt, "p");
    kiln__v1__job_status__free_unpacked(u, NULL);
    free(buf);
}

Test(pb, empty_message_packs_to_zero_bytes)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len = 99;
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
    cr_assert_not_null(buf);
    cr_assert_eq(len, 0);
    free(buf);
    cr_assert_eq(kiln_pb_pack(NULL, &buf, &len), KILN_EINVAL);
}

Test(pb, oversized_message_is_refused)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    char *big = malloc(KILN_PB_MAX_BYTES + 1);
    cr_assert_not_null(big);
    memset(big, 'a', KILN_PB_MAX_BYTES);
    big[KILN_PB_MAX_BYTES] = '\0';
    r.prompt = big;
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_EINVAL);
    cr_assert_null(buf);
    free(big);
}

Test(pb, state_names)
{
    const struct {
        Kiln__V1__JobState s;
        const char *name;
        int terminal;
    } t[] = {
        {KILN__V1__JOB_STATE__JOB_STATE_PENDING, "pending", 0},
        {KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, "processing", 0},
        {KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, "completed", 1},
        {KILN__V1__JOB_STATE__JOB_STATE_FAILED, "failed", 1},
        {KILN__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled", 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        cr_assert_str_eq(kiln_state_name(t[i].s), t[i].name);
        Kiln__V1__JobState out = KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
        cr_assert_eq(kiln_state_parse(t[i].name, &out), KILN_OK);
        cr_assert_eq(out, t[i].s);
        cr_assert_eq(kiln_state_is_terminal(t[i].s), t[i].terminal, "%s", t[i].name);
    }
    cr_assert_str_eq(kiln_state_name(KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED), "unspecified");
    cr_assert_str_eq(kiln_state_name((Kiln__V1__JobState)99), "unspecified");
    cr_assert(!kiln_state_is_terminal(KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED));
    Kiln__V1__JobState out;
    cr_assert_eq(kiln_state_parse("Pending", &out), KILN_EINVAL);
    cr_assert_eq(kiln_state_parse("unspecified", &out), KILN_EINVAL);
    cr_assert_eq(kiln_state_parse("", &out), KILN_EINVAL);
}

Test(pb, priority_names_and_subjects)
{
    Kiln__V1__Priority p;
    cr_assert_eq(kiln_priority_parse("high", &p), KILN_OK);
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert_str_eq(kiln_priority_subject(p), "jobs.generate.high");
    cr_assert_str_eq(kiln_priority_name(p), "high");
    cr_assert_eq(kiln_priority_parse("normal", &p), KILN_OK);
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_NORMAL);
    cr_assert_str_eq(kiln_priority_subject(p), KILN_SUBJ_GENERATE);
    cr_assert_str_eq(kiln_priority_name(p), "normal");
    cr_assert_eq(kiln_priority_parse("low", &p), KILN_OK);
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_LOW);
    cr_assert_str_eq(kiln_priority_subject(p), "jobs.generate.low");
    cr_assert_str_eq(kiln_priority_name(p), "low");
    cr_assert_eq(kiln_priority_parse("urgent", &p), KILN_EINVAL);
    cr_assert_eq(kiln_priority_parse("HIGH", &p), KILN_EINVAL);
}

Test(pb, a_lane_subject_names_its_priority)
{
    Kiln__V1__Priority p = KILN__V1__PRIORITY__PRIORITY_NORMAL;
    cr_assert(kiln_subject_priority("jobs.generate.high", &p));
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert(kiln_subject_priority("jobs.generate.low", &p));
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_LOW);
    cr_assert(kiln_subject_priority("jobs.generate", &p));
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_NORMAL);
    /* Anything else leaves *out alone. */
    p = KILN__V1__PRIORITY__PRIORITY_LOW;
    cr_assert_not(kiln_subject_priority("jobs.generate.urgent", &p));
    cr_assert_not(kiln_subject_priority("kiln.tx", &p));
    cr_assert_not(kiln_subject_priority(NULL, &p));
    cr_assert_eq(p, KILN__V1__PRIORITY__PRIORITY_LOW);
}

/* Fields the schema does not know go, also inside nested messages, and
 * what is packed afterwards decodes (protobuf-c 1.4.1 writes field 0 back
 * in a form it refuses to read). */
Test(pb, unknown_fields_are_dropped_at_every_depth)
{
    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    req.id = "odd";
    req.user_id = "u";
    req.prompt = "p";
    uint8_t *rbuf = NULL;
    size_t rlen = 0;
    cr_assert_eq(kiln_pb_pack(&req.base, &rbuf, &rlen), KILN_OK);
    /* The request again, with field 0 in a two-byte tag and 8 bytes. */
    static const uint8_t odd[] = {0x81, 0x00, 1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t raw_req[64];
    cr_assert(rlen + sizeof odd <= sizeof raw_req);
    memcpy(raw_req, rbuf, rlen);
    memcpy(raw_req + rlen, odd, sizeof odd);
    /* The transition: field 1 (request) holding that, then field 99 (a
     * varint Kiln's schema does not have). */
    uint8_t raw[256];
    size_t n = 0;
    raw[n++] = 0x0a; /* field 1 (request), length-delimited */
    raw[n++] = (uint8_t)(rlen + sizeof odd);
    memcpy(raw + n, raw_req, rlen + sizeof odd);
    n += rlen + sizeof odd;
    raw[n++] = 0x98; /* field 99, varint: tag 99 << 3 = 792 */
    raw[n++] = 0x06;
    raw[n++] = 0x2a;
    Kiln__V1__JobTransition *got = kiln__v1__job_transition__unpack(NULL, n, raw);
    cr_assert_not_null(got);
    cr_assert_not_null(got->request);
    cr_assert_eq(got->base.n_unknown_fields, 1);
    cr_assert_eq(got->request->base.n_unknown_fields, 1);
    kiln_pb_drop_unknown(&got->base);
    cr_expect_eq(got->base.n_unknown_fields, 0);
    cr_expect_eq(got->request->base.n_unknown_fields, 0);
    uint8_t *again = NULL;
    size_t alen = 0;
    cr_assert_eq(kiln_pb_pack(&got->base, &again, &alen), KILN_OK);
    Kiln__V1__JobTransition *back = kiln__v1__job_transition__unpack(NULL, alen, again);
    cr_assert_not_null(back, "packed again, it must decode");
    cr_expect_str_eq(back->request->prompt, "p");
    kiln__v1__job_transition__free_unpacked(back, NULL);
    kiln__v1__job_transition__free_unpacked(got, NULL); /* frees the emptied arrays */
    free(again);
    free(rbuf);
}
