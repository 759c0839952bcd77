/* test_client.c - unit tests for producer/kiln_client.c that need no server:
 * spec defaults, validation before any NATS call, encoding, status lines. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "jobreq.h"
#include "kiln_client.h"
#include "uuid7.h"

static kiln_job_spec client_valid_spec(void)
{
    kiln_job_spec s;
    kiln_job_spec_init(&s);
    s.user_id = "svc-a";
    s.prompt = "a red fox in snow";
    return s;
}

Test(client, spec_init_defaults)
{
    kiln_job_spec s;
    memset(&s, 0xab, sizeof s);
    kiln_job_spec_init(&s);
    cr_assert_null(s.id);
    cr_assert_null(s.user_id);
    cr_assert_null(s.prompt);
    cr_assert_null(s.model);
    cr_assert_null(s.size);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(s.priority, KILN__V1__PRIORITY__PRIORITY_NORMAL);
    cr_assert_eq(s.not_before_ms, 0);
    cr_assert_eq(s.timeout_s, 0);
    cr_assert_eq(s.max_attempts, 0);
    kiln_job_spec_init(NULL); /* NULL-safe */
}

/* Validation happens before the client is touched: a NULL client still
 * reports the bad field, so no invalid job can reach NATS. */
Test(client, submit_invalid_spec_without_connection)
{
    char id[65] = "";
    char err[256] = "";
    kiln_job_spec s = client_valid_spec();
    s.prompt = "";
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "prompt") != NULL, "err=%s", err);
    cr_assert_str_empty(id);

    err[0] = '\0';
    s = client_valid_spec();
    s.user_id = NULL;
    cr_assert_eq(kiln_client_submit_async(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "user_id") != NULL, "err=%s", err);
}

Test(client, submit_each_bad_field_is_named)
{
    char id[65];
    char err[256];
    kiln_job_spec s;

    s = client_valid_spec();
    s.n = 5;
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "n ") != NULL || strstr(err, "n:") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.size = "12";
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "size") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.id = "has space";
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "id") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.max_attempts = KILN_ATTEMPTS_MAX + 1;
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "max_attempts") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.timeout_s = KILN_TIMEOUT_MAX_S + 1;
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "timeout_s") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.priority = (Kiln__V1__Priority)7;
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "priority") != NULL, "err=%s", err);

    s = client_valid_spec();
    s.not_before_ms = kiln_now_ms() + KILN_DELAY_MAX_MS + 60000;
    err[0] = '\0';
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "not_before_ms") != NULL, "err=%s", err);

    /* err may be omitted. */
    s = client_valid_spec();
    s.prompt = NULL;
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, NULL, 0), KILN_EINVAL);
}

Test(client, submit_valid_spec_without_client_is_einval)
{
    char id[65] = "";
    char err[256] = "";
    kiln_job_spec s = client_valid_spec();
    cr_assert_eq(kiln_client_submit(NULL, &s, id, sizeof id, err, sizeof err), KILN_EINVAL);
    cr_assert_str_eq(err, "not connected");
    cr_assert_str_empty(id); /* out-pointers are written only on success */
}

Test(client, encode_generates_uuid7_and_fills_request)
{
    kiln_job_spec s = client_valid_spec();
    s.model = "dall-e-3";
    s.n = 2;
    s.size = "512x512";
    s.priority = KILN__V1__PRIORITY__PRIORITY_HIGH;
    s.timeout_s = 60;
    s.max_attempts = 3;
    int64_t nb = kiln_now_ms() + 5000;
    s.not_before_ms = nb;

    char id[KILN_UUID_STRLEN + 1];
    uint8_t *buf = NULL;
    size_t len = 0;
    int64_t before = kiln_now_ms();
    cr_assert_eq(kiln_client_encode(&s, id, sizeof id, NULL, 0, &buf, &len), KILN_OK);
    int64_t after = kiln_now_ms();
    cr_assert_eq(strlen(id), KILN_UUID_STRLEN);
    cr_assert_geq(kiln_uuid7_time_ms(id), before);
    cr_assert_leq(kiln_uuid7_time_ms(id), after);

    Kiln__V1__JobRequest *r = kiln__v1__job_request__unpack(NULL, len, buf);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->id, id);
    cr_assert_str_eq(r->user_id, "svc-a");
    cr_assert_str_eq(r->prompt, "a red fox in snow");
    cr_assert_str_eq(r->model, "dall-e-3");
    cr_assert_eq(r->n, 2);
    cr_assert_str_eq(r->size, "512x512");
    cr_assert_eq(r->priority, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert_eq(r->timeout_s, 60);
    cr_assert_eq(r->max_attempts, 3);
    cr_assert_eq(r->not_before_ms, nb);
    cr_assert_geq(r->created_at_ms, before);
    cr_assert_leq(r->created_at_ms, after);
    kiln__v1__job_request__free_unpacked(r, NULL);
    free(buf);
}

Test(client, encode_keeps_given_id_and_checks_id_out_size)
{
    kiln_job_spec s = client_valid_spec();
    s.id = "my-job_1";
    char id[16] = "";
    char small[4] = "";
    char err[128] = "";
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_client_encode(&s, id, sizeof id, err, sizeof err, &buf, &len), KILN_OK);
    cr_assert_str_eq(id, "my-job_1");
    Kiln__V1__JobRequest *r = kiln__v1__job_request__unpack(NULL, len, buf);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->id, "my-job_1");
    kiln__v1__job_request__free_unpacked(r, NULL);
    free(buf);
    buf = NULL;

    cr_assert_eq(kiln_client_encode(&s, small, sizeof small, err, sizeof err, &buf, &len),
                 KILN_EINVAL);
    cr_assert_null(buf);
    cr_assert(strstr(err, "id_out") != NULL, "err=%s", err);

    /* A generated id needs 37 bytes. */
    s.id = NULL;
    cr_assert_eq(kiln_client_encode(&s, id, sizeof id, err, sizeof err, &buf, &len), KILN_EINVAL);
    cr_assert_null(buf);
}

Test(client, encode_two_ids_differ_and_increase)
{
    kiln_job_spec s = client_valid_spec();
    char a[40], b[40];
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_client_encode(&s, a, sizeof a, NULL, 0, &buf, &len), KILN_OK);
    free(buf);
    buf = NULL;
    cr_assert_eq(kiln_client_encode(&s, b, sizeof b, NULL, 0, &buf, &len), KILN_OK);
    free(buf);
    cr_assert(strcmp(a, b) < 0, "a=%s b=%s", a, b);
}

Test(client, calls_without_client_are_einval)
{
    Kiln__V1__JobStatus *st = NULL;
    Kiln__V1__StoreReply *rep = NULL;
    char status[32];
    uint64_t failed = 0;
    cr_assert_eq(kiln_client_get(NULL, "abc", &st), KILN_EINVAL);
    cr_assert_eq(kiln_client_wait(NULL, "abc", 10, &st), KILN_EINVAL);
    cr_assert_eq(kiln_client_cancel(NULL, "abc", status, sizeof status), KILN_EINVAL);
    cr_assert_eq(kiln_client_list(NULL, "u", 10, NULL, &rep), KILN_EINVAL);
    cr_assert_eq(kiln_client_flush(NULL, 10, &failed), KILN_EINVAL);
    cr_assert_eq(kiln_client_watch(NULL, 10, NULL, NULL), KILN_EINVAL);
    cr_assert_null(st);
    cr_assert_null(rep);
    kiln_client_destroy(NULL);
    cr_assert_eq(kiln_client_connect(NULL, NULL), KILN_EINVAL);
    kiln_client *c = NULL;
    cr_assert_eq(kiln_client_connect("", &c), KILN_EINVAL);
    cr_assert_null(c);
}

Test(client, format_status_line)
{
    Kiln__V1__JobStatus st = KILN__V1__JOB_STATUS__INIT;
    Kiln__V1__Image i0 = KILN__V1__IMAGE__INIT, i1 = KILN__V1__IMAGE__INIT;
    Kiln__V1__Image *imgs[] = {&i0, &i1};
    st.id = "job-1";
    st.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    st.attempts = 2;
    st.created_at_ms = 1795503882123LL;
    i0.url = "/v1/jobs/job-1/images/0";
    i1.url = "/v1/jobs/job-1/images/1";
    st.images = imgs;
    st.n_images = 2;
    char ts[32];
    kiln_rfc3339_ms(st.created_at_ms, ts, sizeof ts);
    char want[256];
    snprintf(want, sizeof want,
             "id=job-1 status=completed attempts=2 created_at=%s "
             "images=/v1/jobs/job-1/images/0,/v1/jobs/job-1/images/1",
             ts);
    char line[512];
    cr_assert_eq(kiln_client_format_status(&st, line, sizeof line), KILN_OK);
    cr_assert_str_eq(line, want);
}

Test(client, format_status_error_and_truncation)
{
    Kiln__V1__JobStatus st = KILN__V1__JOB_STATUS__INIT;
    Kiln__V1__JobError e = KILN__V1__JOB_ERROR__INIT;
    st.id = "job-2";
    st.state = KILN__V1__JOB_STATE__JOB_STATE_FAILED;
    st.attempts = 5;
    e.code = "provider_error";
    e.message = "HTTP 500 from provider";
    st.error = &e;
    char line[512];
    cr_assert_eq(kiln_client_format_status(&st, line, sizeof line), KILN_OK);
    cr_assert(strstr(line, "status=failed attempts=5 ") != NULL, "line=%s", line);
    cr_assert(strstr(line, " error=provider_error:HTTP 500 from provider") != NULL, "line=%s",
              line);
    cr_assert(strstr(line, "images=") == NULL, "line=%s", line);

    char small[16];
    cr_assert_eq(kiln_client_format_status(&st, small, sizeof small), KILN_EINVAL);
    cr_assert_eq(strlen(small), sizeof small - 1);
    cr_assert_eq(kiln_client_format_status(NULL, line, sizeof line), KILN_EINVAL);
}

/* ---- kiln_client_retry_encode: a dead letter's job, submitted again ---- */

static void retry_pack(Kiln__V1__JobRequest *r, uint8_t **buf, size_t *len)
{
    *len = kiln__v1__job_request__get_packed_size(r);
    *buf = malloc(*len ? *len : 1);
    cr_assert_not_null(*buf);
    kiln__v1__job_request__pack(r, *buf);
}

Test(client, retry_encode_is_the_same_job_under_a_new_id_to_start_now)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    Kiln__V1__JobRequest__ParamsEntry pe = KILN__V1__JOB_REQUEST__PARAMS_ENTRY__INIT, *pp[1] = {&pe};
    pe.key = "style";
    pe.value = "vivid";
    r.id = "dead-1";
    r.user_id = "svc-a";
    r.prompt = "a fox that died once";
    r.model = "dall-e-3";
    r.n = 2;
    r.priority = KILN__V1__PRIORITY__PRIORITY_HIGH;
    r.created_at_ms = 1700000000000LL;
    r.not_before_ms = 1700000005000LL;
    r.max_attempts = 3;
    r.idempotency_key = "order-7";
    r.n_params = 1;
    r.params = pp;
    uint8_t *in = NULL, *out = NULL;
    size_t inlen = 0, outlen = 0;
    retry_pack(&r, &in, &inlen);
    char id[65] = "", err[256] = "";
    Kiln__V1__Priority prio = KILN__V1__PRIORITY__PRIORITY_NORMAL;
    int64_t before = kiln_now_ms();
    cr_assert_eq(kiln_client_retry_encode(in, inlen, id, sizeof id, err, sizeof err, &out, &outlen,
                                          &prio),
                 KILN_OK, "%s", err);
    Kiln__V1__JobRequest *got = kiln__v1__job_request__unpack(NULL, outlen, out);
    cr_assert_not_null(got);
    cr_expect_str_eq(got->id, id);
    cr_expect_str_neq(id, "dead-1", "a retry is a new job");
    cr_expect(kiln_jobreq_id_ok(id));
    cr_expect_str_eq(got->user_id, "svc-a");
    cr_expect_str_eq(got->prompt, "a fox that died once");
    cr_expect_str_eq(got->model, "dall-e-3");
    cr_expect_eq(got->n, 2);
    cr_expect_eq(got->max_attempts, 3);
    cr_expect_eq(prio, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_expect_eq(got->priority, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert_eq(got->n_params, 1);
    cr_expect_str_eq(got->params[0]->value, "vivid");
    cr_expect_str_eq(got->idempotency_key, "", "the key names the failed job");
    cr_expect_eq(got->not_before_ms, 0, "a retry starts now");
    cr_expect(got->created_at_ms >= before);
    kiln__v1__job_request__free_unpacked(got, NULL);
    free(in);
    free(out);
}

Test(client, retry_encode_refuses_what_is_no_valid_job)
{
    static const uint8_t garbage[] = "\x0a\x50not a job";
    char id[65] = "", err[256] = "";
    uint8_t *out = NULL;
    size_t outlen = 0;
    Kiln__V1__Priority prio;
    cr_expect_eq(kiln_client_retry_encode(garbage, sizeof garbage - 1, id, sizeof id, err,
                                          sizeof err, &out, &outlen, &prio),
                 KILN_EINVAL);
    cr_expect(strstr(err, "not a job request") != NULL, "%s", err);
    cr_expect_null(out);

    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    r.id = "dead-2";
    r.user_id = "svc-a";
    r.prompt = ""; /* what the consumer failed with invalid_argument */
    uint8_t *in = NULL;
    size_t inlen = 0;
    retry_pack(&r, &in, &inlen);
    err[0] = '\0';
    cr_expect_eq(kiln_client_retry_encode(in, inlen, id, sizeof id, err, sizeof err, &out, &outlen,
                                          &prio),
                 KILN_EINVAL);
    cr_expect(strstr(err, "prompt") != NULL, "the sentence names the field: %s", err);
    cr_expect_null(out);
    free(in);
}
