/* test_gateway.c - unit tests for the gateway's pure modules: the POST body
 * rules and the job object (job_json.c), API keys and Bearer parsing
 * (auth.c), token buckets (ratelimit.c), Content-Type, routes, error codes
 * and the SSE helpers. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/auth.h"
#include "../../gateway/errors.h"
#include "../../gateway/job_json.h"
#include "../../gateway/ratelimit.h"
#include "../../gateway/routes.h"
#include "../../gateway/sse.h"
#include "../../gateway/submit.h"
#include "clock.h"
#include "jobreq.h"

#define NOW_MS 1700000000000LL

/* ---- POST /v1/jobs body ------------------------------------------------ */

static Kiln__V1__JobRequest *parse_ok(const char *body)
{
    Kiln__V1__JobRequest *r = NULL;
    gw_fielderr e = {0};
    kiln_status st = gw_jobjson_parse(body, strlen(body), NOW_MS, &r, &e);
    cr_assert_eq(st, KILN_OK, "body %s: %s %s %s", body, e.code, e.field, e.msg);
    cr_assert_not_null(r);
    return r;
}

/* Expects a client error with code and field ("" = no field). */
static void parse_bad_len(const char *body, size_t len, const char *code, const char *field)
{
    Kiln__V1__JobRequest *r = NULL;
    gw_fielderr e = {0};
    kiln_status st = gw_jobjson_parse(body, len, NOW_MS, &r, &e);
    cr_assert_eq(st, KILN_EINVAL, "body %.*s was accepted", (int)len, body);
    cr_assert_null(r);
    cr_assert_str_eq(e.code, code, "body %.*s: code %s msg %s", (int)len, body, e.code, e.msg);
    cr_assert_str_eq(e.field, field, "body %.*s: field %s msg %s", (int)len, body, e.field, e.msg);
    cr_assert(e.msg[0] != '\0');
}

static void parse_bad(const char *body, const char *code, const char *field)
{
    parse_bad_len(body, strlen(body), code, field);
}

Test(gw_body, minimal_gets_defaults)
{
    Kiln__V1__JobRequest *r = parse_ok("{\"prompt\":\"a red fox\"}");
    cr_assert_str_eq(r->prompt, "a red fox");
    cr_assert_eq(r->n, 1);
    cr_assert_eq(r->timeout_s, KILN_TIMEOUT_DEFAULT_S);
    cr_assert_eq(r->max_attempts, KILN_ATTEMPTS_DEFAULT);
    cr_assert_eq(r->priority, KILN__V1__PRIORITY__PRIORITY_NORMAL);
    cr_assert_eq(r->not_before_ms, 0);
    cr_assert_eq(r->n_params, 0);
    gw_jobjson_request_free(r);
}

Test(gw_body, every_field)
{
    Kiln__V1__JobRequest *r = parse_ok(
        "{\"prompt\":\"p\",\"model\":\"m1\",\"n\":4,\"size\":\"512x256\",\"priority\":\"high\","
        "\"params\":{\"a\":\"1\",\"b\":\"\"},\"delay_ms\":1500,\"timeout_s\":3600,"
        "\"max_attempts\":10}");
    cr_assert_str_eq(r->model, "m1");
    cr_assert_eq(r->n, 4);
    cr_assert_str_eq(r->size, "512x256");
    cr_assert_eq(r->priority, KILN__V1__PRIORITY__PRIORITY_HIGH);
    cr_assert_eq(r->n_params, 2);
    cr_assert_eq(r->not_before_ms, NOW_MS + 1500);
    cr_assert_eq(r->timeout_s, 3600);
    cr_assert_eq(r->max_attempts, 10);
    gw_jobjson_request_free(r);
    r = parse_ok("{\"prompt\":\"p\",\"priority\":\"low\",\"delay_ms\":0,\"n\":1,\"timeout_s\":1,"
                 "\"max_attempts\":1}");
    cr_assert_eq(r->priority, KILN__V1__PRIORITY__PRIORITY_LOW);
    cr_assert_eq(r->not_before_ms, 0);
    gw_jobjson_request_free(r);
}

Test(gw_body, null_optional_fields_are_absent)
{
    Kiln__V1__JobRequest *r = parse_ok(
        "{\"prompt\":\"p\",\"model\":null,\"n\":null,\"size\":null,\"priority\":null,"
        "\"params\":null,\"delay_ms\":null,\"timeout_s\":null,\"max_attempts\":null}");
    cr_assert_eq(r->n, 1);
    cr_assert_eq(r->timeout_s, KILN_TIMEOUT_DEFAULT_S);
    gw_jobjson_request_free(r);
}

Test(gw_body, invalid_json)
{
    parse_bad("", "invalid_json", "");
    parse_bad("not json", "invalid_json", "");
    parse_bad("{\"prompt\":", "invalid_json", "");
    parse_bad("[1,2]", "invalid_json", "");
    parse_bad("\"prompt\"", "invalid_json", "");
    parse_bad("{\"prompt\":\"a\"} x", "invalid_json", "");
    parse_bad("{\"prompt\":\"a\",\"prompt\":\"b\"}", "invalid_json", "");
    parse_bad_len("{\"prompt\":\"a\0b\"}", 15, "invalid_json", "");
}

Test(gw_body, unknown_field_named)
{
    parse_bad("{\"prompt\":\"a\",\"promt\":\"b\"}", "unknown_field", "promt");
    parse_bad("{\"prompt\":\"a\",\"id\":\"x\"}", "unknown_field", "id");
    parse_bad("{\"prompt\":\"a\",\"user_id\":\"x\"}", "unknown_field", "user_id");
    /* A long unknown name is echoed capped, never overflowing. */
    char body[600];
    snprintf(body, sizeof body, "{\"prompt\":\"a\",\"%0300d\":1}", 7);
    Kiln__V1__JobRequest *r = NULL;
    gw_fielderr e = {0};
    cr_assert_eq(gw_jobjson_parse(body, strlen(body), NOW_MS, &r, &e), KILN_EINVAL);
    cr_assert_str_eq(e.code, "unknown_field");
    cr_assert_lt(strlen(e.field), sizeof e.field);
}

static char *repeat(const char *unit, size_t count)
{
    size_t u = strlen(unit);
    char *s = malloc(u * count + 1);
    cr_assert_not_null(s);
    for (size_t i = 0; i < count; i++) memcpy(s + i * u, unit, u);
    s[u * count] = '\0';
    return s;
}

Test(gw_body, prompt_rules)
{
    parse_bad("{}", "invalid_argument", "prompt");
    parse_bad("{\"prompt\":null}", "invalid_argument", "prompt");
    parse_bad("{\"prompt\":7}", "invalid_argument", "prompt");
    parse_bad("{\"prompt\":[\"a\"]}", "invalid_argument", "prompt");
    parse_bad("{\"prompt\":\"\"}", "invalid_argument", "prompt");
    /* 4000 characters pass even when they are 4-byte sequences; 4001 do not. */
    char *ok = repeat("\xf0\x9f\xa6\x8a", 4000), *bad = repeat("a", 4001);
    char *body = malloc(strlen(ok) + 32);
    sprintf(body, "{\"prompt\":\"%s\"}", ok);
    gw_jobjson_request_free(parse_ok(body));
    free(body);
    body = malloc(strlen(bad) + 32);
    sprintf(body, "{\"prompt\":\"%s\"}", bad);
    parse_bad(body, "invalid_argument", "prompt");
    free(body);
    free(ok);
    free(bad);
    /* Escaped \u0000 and lone surrogates are not valid prompts or JSON. */
    parse_bad("{\"prompt\":\"\\ud800\"}", "invalid_json", "");
}

Test(gw_body, invalid_utf8_names_the_field)
{
    parse_bad("{\"prompt\":\"bad \xff byte\"}", "invalid_argument", "prompt");
    parse_bad("{\"prompt\":\"ok\",\"model\":\"\xc3\x28\"}", "invalid_argument", "model");
    parse_bad("{\"prompt\":\"ok\",\"params\":{\"k\":\"\xed\xa0\x80\"}}", "invalid_argument",
              "params");
    parse_bad("\xff\xfe", "invalid_json", "");
}

Test(gw_body, model_size_priority)
{
    parse_bad("{\"prompt\":\"p\",\"model\":1}", "invalid_argument", "model");
    char *m = repeat("m", KILN_MODEL_MAX_LEN + 1);
    char body[512];
    snprintf(body, sizeof body, "{\"prompt\":\"p\",\"model\":\"%s\"}", m);
    parse_bad(body, "invalid_argument", "model");
    free(m);
    /* A control character (here an escaped CR, found by tests/fuzz) passed
     * the gateway and got a 202, but the store's and consumer's rules refuse
     * it: the store skipped the request (a GET answered 404), and the
     * consumer failed the job with invalid_argument and dead-lettered it. */
    parse_bad("{\"prompt\":\"p\",\"model\":\"gpt\\rimage\"}", "invalid_argument", "model");
    parse_bad("{\"prompt\":\"p\",\"model\":\"a\\u007fb\"}", "invalid_argument", "model");
    parse_bad("{\"prompt\":\"p\",\"size\":\"big\"}", "invalid_argument", "size");
    parse_bad("{\"prompt\":\"p\",\"size\":\"1024\"}", "invalid_argument", "size");
    parse_bad("{\"prompt\":\"p\",\"size\":\"0x5\"}", "invalid_argument", "size");
    parse_bad("{\"prompt\":\"p\",\"size\":1024}", "invalid_argument", "size");
    parse_bad("{\"prompt\":\"p\",\"priority\":\"urgent\"}", "invalid_argument", "priority");
    parse_bad("{\"prompt\":\"p\",\"priority\":\"HIGH\"}", "invalid_argument", "priority");
    parse_bad("{\"prompt\":\"p\",\"priority\":1}", "invalid_argument", "priority");
}

Test(gw_body, integer_ranges)
{
    static const struct {
        const char *field;
        const char *value;
    } bad[] = {
        {"n", "0"}, {"n", "5"}, {"n", "\"2\""}, {"n", "2.5"}, {"n", "true"}, {"n", "-1"},
        {"delay_ms", "-1"}, {"delay_ms", "86400001"}, {"delay_ms", "1e3"},
        {"timeout_s", "0"}, {"timeout_s", "3601"}, {"max_attempts", "0"},
        {"max_attempts", "11"}, {"max_attempts", "99999999999999999999"},
    };
    char body[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(body, sizeof body, "{\"prompt\":\"p\",\"%s\":%s}", bad[i].field, bad[i].value);
        Kiln__V1__JobRequest *r = NULL;
        gw_fielderr e = {0};
        kiln_status st = gw_jobjson_parse(body, strlen(body), NOW_MS, &r, &e);
        cr_assert_eq(st, KILN_EINVAL, "%s accepted", body);
        /* A number too large for jansson is invalid JSON, not a range error. */
        if (strcmp(e.code, "invalid_json") == 0) continue;
        cr_assert_str_eq(e.code, "invalid_argument", "%s", body);
        cr_assert_str_eq(e.field, bad[i].field, "%s", body);
    }
    Kiln__V1__JobRequest *r = parse_ok("{\"prompt\":\"p\",\"delay_ms\":86400000}");
    cr_assert_eq(r->not_before_ms, NOW_MS + 86400000LL);
    gw_jobjson_request_free(r);
}

Test(gw_body, params_rules)
{
    parse_bad("{\"prompt\":\"p\",\"params\":[]}", "invalid_argument", "params");
    parse_bad("{\"prompt\":\"p\",\"params\":\"a=b\"}", "invalid_argument", "params");
    parse_bad("{\"prompt\":\"p\",\"params\":{\"a\":1}}", "invalid_argument", "params");
    parse_bad("{\"prompt\":\"p\",\"params\":{\"a\":null}}", "invalid_argument", "params");
    parse_bad("{\"prompt\":\"p\",\"params\":{\"\":\"x\"}}", "invalid_argument", "params");
    char *v = repeat("v", KILN_PARAM_MAX_LEN + 1);
    char *body = malloc(strlen(v) + 64);
    sprintf(body, "{\"prompt\":\"p\",\"params\":{\"k\":\"%s\"}}", v);
    parse_bad(body, "invalid_argument", "params");
    free(body);
    free(v);
    /* 32 entries pass, 33 do not. */
    char big[2048];
    for (int count = 32; count <= 33; count++) {
        size_t o = (size_t)snprintf(big, sizeof big, "{\"prompt\":\"p\",\"params\":{");
        for (int i = 0; i < count; i++)
            o += (size_t)snprintf(big + o, sizeof big - o, "%s\"k%d\":\"v\"", i ? "," : "", i);
        snprintf(big + o, sizeof big - o, "}}");
        if (count == 32) {
            Kiln__V1__JobRequest *r = parse_ok(big);
            cr_assert_eq(r->n_params, 32);
            gw_jobjson_request_free(r);
        } else {
            parse_bad(big, "invalid_argument", "params");
        }
    }
}

Test(gw_body, hash_ignores_key_order_and_spaces)
{
    uint8_t a[32], b[32], c[32];
    const char *x = "{\"prompt\":\"p\",\"n\":2}";
    const char *y = " { \"n\" : 2 ,\n \"prompt\" : \"p\" } ";
    const char *z = "{\"prompt\":\"p\",\"n\":3}";
    cr_assert_eq(gw_jobjson_body_hash(x, strlen(x), a), KILN_OK);
    cr_assert_eq(gw_jobjson_body_hash(y, strlen(y), b), KILN_OK);
    cr_assert_eq(gw_jobjson_body_hash(z, strlen(z), c), KILN_OK);
    cr_assert_eq(memcmp(a, b, 32), 0);
    cr_assert_neq(memcmp(a, c, 32), 0);
    cr_assert_neq(gw_jobjson_body_hash("nope", 4, a), KILN_OK);
}

/* ---- JobRecord -> job object -------------------------------------------- */

typedef struct {
    Kiln__V1__JobRecord rec;
    Kiln__V1__JobRequest rq;
    Kiln__V1__JobStatus st;
    Kiln__V1__Image im[2];
    Kiln__V1__Image *imp[2];
    Kiln__V1__JobError err;
    Kiln__V1__Progress prog;
    Kiln__V1__JobRequest__ParamsEntry pe;
    Kiln__V1__JobRequest__ParamsEntry *pep[1];
} rec_t;

static void rec_init(rec_t *t, Kiln__V1__JobState state)
{
    memset(t, 0, sizeof *t);
    kiln__v1__job_record__init(&t->rec);
    kiln__v1__job_request__init(&t->rq);
    kiln__v1__job_status__init(&t->st);
    t->rq.id = "job-1";
    t->rq.user_id = "alice";
    t->rq.prompt = "a fox";
    t->rq.created_at_ms = NOW_MS;
    t->st.id = "job-1";
    t->st.state = state;
    t->st.attempts = 1;
    t->st.created_at_ms = NOW_MS;
    t->rec.request = &t->rq;
    t->rec.status = &t->st;
}

static json_t *job_of(const rec_t *t)
{
    json_t *j = gw_jobjson_job(&t->rec);
    cr_assert_not_null(j);
    return j;
}

static void expect_null(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    cr_assert_not_null(v, "%s missing", key);
    cr_assert(json_is_null(v), "%s is not null", key);
}

static void expect_str(json_t *j, const char *key, const char *want)
{
    json_t *v = json_object_get(j, key);
    cr_assert(json_is_string(v), "%s is not a string", key);
    cr_assert_str_eq(json_string_value(v), want, "%s", key);
}

Test(gw_job, pending_shape_with_nulls)
{
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
    json_t *j = job_of(&t);
    static const char *keys[] = {"id", "status", "prompt", "model", "n", "size", "priority",
                                 "params", "attempts", "images", "error", "progress", "viewed",
                                 "created_at", "started_at", "completed_at", "poll_after_ms"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        cr_assert_not_null(json_object_get(j, keys[i]), "%s missing", keys[i]);
    cr_assert_eq(json_object_size(j), sizeof keys / sizeof keys[0]);
    expect_str(j, "id", "job-1");
    expect_str(j, "status", "pending");
    expect_str(j, "prompt", "a fox");
    expect_str(j, "priority", "normal");
    expect_str(j, "created_at", "2023-11-14T22:13:20.000Z");
    expect_null(j, "model");
    expect_null(j, "size");
    expect_null(j, "error");
    expect_null(j, "progress");
    expect_null(j, "started_at");
    expect_null(j, "completed_at");
    cr_assert_eq(json_integer_value(json_object_get(j, "n")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "attempts")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "poll_after_ms")), 3000);
    cr_assert(json_is_false(json_object_get(j, "viewed")));
    cr_assert_eq(json_object_size(json_object_get(j, "params")), 0);
    cr_assert_eq(json_array_size(json_object_get(j, "images")), 0);
    json_decref(j);
}

Test(gw_job, processing_with_progress)
{
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING);
    kiln__v1__progress__init(&t.prog);
    t.prog.percent = 40;
    t.prog.message = "denoising";
    t.rec.progress = &t.prog;
    t.st.started_at_ms = NOW_MS + 5;
    t.rq.model = "m";
    t.rq.size = "64x64";
    t.rq.priority = KILN__V1__PRIORITY__PRIORITY_LOW;
    kiln__v1__job_request__params_entry__init(&t.pe);
    t.pe.key = "seed";
    t.pe.value = "7";
    t.pep[0] = &t.pe;
    t.rq.params = t.pep;
    t.rq.n_params = 1;
    json_t *j = job_of(&t);
    expect_str(j, "status", "processing");
    expect_str(j, "model", "m");
    expect_str(j, "size", "64x64");
    expect_str(j, "priority", "low");
    expect_str(j, "started_at", "2023-11-14T22:13:20.005Z");
    json_t *p = json_object_get(j, "progress");
    cr_assert_eq(json_integer_value(json_object_get(p, "percent")), 40);
    expect_str(p, "message", "denoising");
    expect_str(json_object_get(j, "params"), "seed", "7");
    cr_assert_eq(json_integer_value(json_object_get(j, "poll_after_ms")), 2000);
    json_decref(j);
}

Test(gw_job, completed_has_images_and_no_poll)
{
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    for (int i = 0; i < 2; i++) {
        kiln__v1__image__init(&t.im[i]);
        t.im[i].index = (uint32_t)i;
        t.imp[i] = &t.im[i];
    }
    t.im[0].url = "/v1/jobs/job-1/images/0";
    t.im[1].url = "https://cdn.example/x.webp";
    t.im[1].content_type = "image/webp";
    t.st.images = t.imp;
    t.st.n_images = 2;
    t.st.completed_at_ms = NOW_MS + 1000;
    t.rec.viewed = 1;
    kiln__v1__progress__init(&t.prog);
    t.rec.progress = &t.prog; /* progress of a finished job is not shown */
    json_t *j = job_of(&t);
    expect_str(j, "status", "completed");
    cr_assert_null(json_object_get(j, "poll_after_ms"));
    expect_null(j, "progress");
    expect_null(j, "error");
    cr_assert(json_is_true(json_object_get(j, "viewed")));
    expect_str(j, "completed_at", "2023-11-14T22:13:21.000Z");
    json_t *ims = json_object_get(j, "images");
    cr_assert_eq(json_array_size(ims), 2);
    json_t *i0 = json_array_get(ims, 0), *i1 = json_array_get(ims, 1);
    cr_assert_eq(json_integer_value(json_object_get(i0, "index")), 0);
    expect_str(i0, "url", "/v1/jobs/job-1/images/0");
    expect_str(i0, "content_type", "image/png");
    expect_str(i1, "content_type", "image/webp");
    json_decref(j);
}

Test(gw_job, failed_has_error_object)
{
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_FAILED);
    kiln__v1__job_error__init(&t.err);
    t.err.code = "provider_error";
    t.err.message = "HTTP 400";
    t.st.error = &t.err;
    json_t *j = job_of(&t);
    expect_str(j, "status", "failed");
    json_t *e = json_object_get(j, "error");
    expect_str(e, "code", "provider_error");
    expect_str(e, "message", "HTTP 400");
    cr_assert_null(json_object_get(j, "poll_after_ms"));
    json_decref(j);
    /* A pending retry keeps its last error visible. */
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
    kiln__v1__job_error__init(&t.err);
    t.err.code = "rate_limited";
    t.err.message = "HTTP 429";
    t.st.error = &t.err;
    j = job_of(&t);
    cr_assert(json_is_object(json_object_get(j, "error")));
    json_decref(j);
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_CANCELLED);
    j = job_of(&t);
    expect_str(j, "status", "cancelled");
    cr_assert_null(json_object_get(j, "poll_after_ms"));
    json_decref(j);
}

Test(gw_job, sparse_record_does_not_crash)
{
    Kiln__V1__JobRecord rec = KILN__V1__JOB_RECORD__INIT;
    json_t *j = gw_jobjson_job(&rec);
    cr_assert_not_null(j);
    expect_str(j, "id", "");
    expect_null(j, "created_at");
    json_decref(j);
    /* Invalid UTF-8 from the store becomes null or "", never a failure. */
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
    t.rq.model = "\xff";
    t.rq.prompt = "\xc3";
    j = job_of(&t);
    expect_null(j, "model");
    expect_str(j, "prompt", "");
    json_decref(j);
}

/* ---- API keys and Bearer ------------------------------------------------- */

Test(gw_auth, key_formats)
{
    char err[256];
    cr_assert_eq(gw_auth_init("tok:alice", err, sizeof err), KILN_OK, "%s", err);
    cr_assert_eq(gw_auth_count(), 1);
    cr_assert_eq(gw_auth_init(" a:u1 , b:u2,c:u3 ", err, sizeof err), KILN_OK, "%s", err);
    cr_assert_eq(gw_auth_count(), 3);
    /* A user id may contain ':' after the first one. */
    cr_assert_eq(gw_auth_init("t:org:user", err, sizeof err), KILN_OK, "%s", err);
    const char *user = NULL;
    cr_assert_eq(gw_auth_check_header("Bearer t", &user), 0);
    cr_assert_str_eq(user, "org:user");
    gw_auth_free();
}

Test(gw_auth, bad_specs_never_echo_tokens)
{
    static const char *bad[] = {
        "", "secrettoken", ":alice", "secrettoken:", "secrettoken:alice,", "secret token:alice",
        "secrettoken:ali ce", "secrettoken:a,secrettoken:b", "a:b,,c:d",
    };
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_neq(gw_auth_init(bad[i], err, sizeof err), KILN_OK, "\"%s\" accepted", bad[i]);
        cr_assert(err[0] != '\0');
        cr_assert_null(strstr(err, "secret"), "error echoes the token: %s", err);
        cr_assert_eq(gw_auth_count(), 0);
    }
    cr_assert_neq(gw_auth_init(NULL, err, sizeof err), KILN_OK);
}

Test(gw_auth, too_many_keys)
{
    size_t cap = (GW_AUTH_MAX_KEYS + 1) * 16;
    char *spec = malloc(cap), err[256];
    size_t o = 0;
    for (int i = 0; i <= GW_AUTH_MAX_KEYS; i++)
        o += (size_t)snprintf(spec + o, cap - o, "%st%d:u", i ? "," : "", i);
    cr_assert_neq(gw_auth_init(spec, err, sizeof err), KILN_OK);
    free(spec);
}

Test(gw_auth, bearer_parsing)
{
    char err[256];
    cr_assert_eq(gw_auth_init("tok:alice,tok2:bob", err, sizeof err), KILN_OK);
    const char *user = NULL;
    cr_assert_eq(gw_auth_check_header("Bearer tok", &user), 0);
    cr_assert_str_eq(user, "alice");
    cr_assert_eq(gw_auth_check_header("Bearer tok2", &user), 1);
    cr_assert_str_eq(user, "bob");
    cr_assert_eq(gw_auth_check_header("bearer tok", NULL), 0);
    cr_assert_eq(gw_auth_check_header("BEARER\ttok", NULL), 0);
    cr_assert_eq(gw_auth_check_header("  Bearer   tok  ", NULL), 0);
    static const char *bad[] = {
        "", "tok", "Bearer", "Bearer ", "Bearertok", "Basic tok", "Bearer tok3", "Bearer to",
        "Bearer tok tok", "Bearer TOK", "Token tok",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(gw_auth_check_header(bad[i], NULL), -1, "\"%s\" accepted", bad[i]);
    cr_assert_eq(gw_auth_check_header(NULL, NULL), -1);
    char *huge = malloc(GW_AUTH_TOKEN_MAX + 16);
    memset(huge, 'x', GW_AUTH_TOKEN_MAX + 15);
    memcpy(huge, "Bearer ", 7);
    huge[GW_AUTH_TOKEN_MAX + 15] = '\0';
    cr_assert_eq(gw_auth_check_header(huge, NULL), -1);
    free(huge);
    gw_auth_free();
}

/* ---- Rate limit ---------------------------------------------------------- */

Test(gw_ratelimit, bucket_math)
{
    cr_assert_eq(gw_ratelimit_init(2.0, 3, 2), KILN_OK);
    int64_t t0 = kiln_mono_us() + 1000000; /* after init's clock read */
    int retry = 0;
    /* The first take refills to the cap (3), so 3 pass at once. */
    for (int i = 0; i < 3; i++) cr_assert(gw_ratelimit_take_at(0, t0, &retry), "take %d", i);
    cr_assert_not(gw_ratelimit_take_at(0, t0, &retry));
    cr_assert_eq(retry, 1); /* 1 token at 2/s: 0.5 s, rounded up */
    /* Buckets are per key. */
    cr_assert(gw_ratelimit_take_at(1, t0, &retry));
    /* 0.5 s later one token is back, not two. */
    cr_assert(gw_ratelimit_take_at(0, t0 + 500000, &retry));
    cr_assert_not(gw_ratelimit_take_at(0, t0 + 500000, &retry));
    /* A clock going backwards refills nothing. */
    cr_assert_not(gw_ratelimit_take_at(0, t0, &retry));
    /* A long pause refills only up to the burst. */
    int64_t later = t0 + 3600LL * 1000000;
    for (int i = 0; i < 3; i++) cr_assert(gw_ratelimit_take_at(0, later, &retry));
    cr_assert_not(gw_ratelimit_take_at(0, later, &retry));
    /* Unknown keys are not limited. */
    cr_assert(gw_ratelimit_take_at(-1, t0, &retry));
    cr_assert(gw_ratelimit_take_at(7, t0, &retry));
    gw_ratelimit_free();
}

Test(gw_ratelimit, slow_rate_retry_after_and_default_burst)
{
    /* 600/min = 10/s; burst 0 means one second's worth. */
    cr_assert_eq(gw_ratelimit_init(10.0, 0, 1), KILN_OK);
    int64_t t0 = kiln_mono_us() + 1000000;
    int retry = 0, ok = 0;
    while (gw_ratelimit_take_at(0, t0, &retry) && ok < 100) ok++;
    cr_assert_eq(ok, 10);
    gw_ratelimit_free();
    /* 1 per 10 s: Retry-After says 10. */
    cr_assert_eq(gw_ratelimit_init(0.1, 0, 1), KILN_OK);
    t0 = kiln_mono_us() + 1000000;
    cr_assert(gw_ratelimit_take_at(0, t0, &retry));
    cr_assert_not(gw_ratelimit_take_at(0, t0, &retry));
    cr_assert_eq(retry, 10);
    gw_ratelimit_free();
}

Test(gw_ratelimit, off)
{
    cr_assert_eq(gw_ratelimit_init(0, 0, 4), KILN_OK);
    int retry = 0;
    for (int i = 0; i < 1000; i++) cr_assert(gw_ratelimit_take(0, &retry));
    gw_ratelimit_free();
}

/* ---- Content-Type, routes, error codes ----------------------------------- */

Test(gw_http, content_type)
{
    static const char *ok[] = {
        "application/json", "Application/JSON", "application/json; charset=utf-8",
        "application/json;charset=UTF-8", "application/json; charset=\"utf-8\"",
        "application/json; charset=utf8", " application/json ", "application/json; foo=bar",
    };
    static const char *bad[] = {
        "", "text/plain", "application/jsonx", "application/json; charset=latin1",
        "application/x-www-form-urlencoded", "application/json garbage", "json",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_assert(gw_submit_content_type_ok(ok[i]), "\"%s\" refused", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_not(gw_submit_content_type_ok(bad[i]), "\"%s\" accepted", bad[i]);
    cr_assert_not(gw_submit_content_type_ok(NULL));
}

Test(gw_http, routes)
{
    cr_assert_eq(gw_routes_classify("/healthz"), GW_ROUTE_HEALTHZ);
    cr_assert_eq(gw_routes_classify("/readyz"), GW_ROUTE_READYZ);
    cr_assert_eq(gw_routes_classify("/metrics"), GW_ROUTE_METRICS);
    cr_assert_eq(gw_routes_classify("/v1/jobs"), GW_ROUTE_SUBMIT);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc"), GW_ROUTE_GET);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc/cancel"), GW_ROUTE_CANCEL);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc/viewed"), GW_ROUTE_VIEWED);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc/images/0"), GW_ROUTE_IMAGE);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc/events"), GW_ROUTE_EVENTS);
    cr_assert_eq(gw_routes_classify("/v1/events"), GW_ROUTE_EVENTS);
    cr_assert_eq(gw_routes_classify("/v1/jobs/"), GW_ROUTE_NONE);
    cr_assert_eq(gw_routes_classify("/v1/jobs/abc/other"), GW_ROUTE_NONE);
    cr_assert_eq(gw_routes_classify("/v2/jobs"), GW_ROUTE_NONE);
    cr_assert_eq(gw_routes_classify(""), GW_ROUTE_NONE);
    cr_assert_eq(gw_routes_classify(NULL), GW_ROUTE_NONE);
    char longp[300];
    snprintf(longp, sizeof longp, "/v1/jobs/%0250d/events", 1);
    cr_assert_eq(gw_routes_classify(longp), GW_ROUTE_EVENTS); /* the handler answers 404 */
}

Test(gw_http, error_statuses)
{
    static const struct {
        const char *code;
        int status;
    } t[] = {
        {"invalid_json", 400}, {"invalid_argument", 400}, {"unknown_field", 400},
        {"unauthenticated", 401}, {"not_found", 404}, {"method_not_allowed", 405},
        {"idempotency_conflict", 409}, {"already_finished", 409}, {"payload_too_large", 413},
        {"unsupported_media_type", 415}, {"rate_limited", 429}, {"unavailable", 503},
        {"no_such_code", 503}, {NULL, 503},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        cr_assert_eq(gw_errors_status(t[i].code), t[i].status, "%s", t[i].code);
}

/* ---- SSE helpers --------------------------------------------------------- */

Test(gw_sse, user_hex)
{
    char out[64];
    gw_sse_user_hex("alice", out, sizeof out);
    cr_assert_str_eq(out, "616c696365");
    gw_sse_user_hex("A.b*>", out, sizeof out);
    cr_assert_str_eq(out, "412e622a3e"); /* subject wildcards become plain hex */
    gw_sse_user_hex("\xff\x01", out, sizeof out);
    cr_assert_str_eq(out, "ff01");
    gw_sse_user_hex("abcdef", out, 5); /* truncated to whole bytes, still terminated */
    cr_assert_str_eq(out, "6162");
}

Test(gw_sse, last_event_id)
{
    uint64_t v = 0;
    cr_assert_eq(gw_sse_parse_last_id("0", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(gw_sse_parse_last_id("12345", &v), 0);
    cr_assert_eq(v, GW_SSE_POS(12345, 0));
    /* A record of an EventBatch: sequence and 1-based index. */
    cr_assert_eq(gw_sse_parse_last_id("12345.7", &v), 0);
    cr_assert_eq(v, GW_SSE_POS(12345, 7));
    cr_assert_eq(GW_SSE_SEQ(v), 12345);
    cr_assert_eq(GW_SSE_INDEX(v), 7);
    cr_assert_eq(gw_sse_parse_last_id("9.4095", &v), 0);
    cr_assert(GW_SSE_POS(9, 4095) < GW_SSE_POS(10, 0), "positions must order by sequence first");
    cr_assert_eq(gw_sse_parse_last_id("4503599627370495", &v), 0); /* 2^52 - 1 */
    cr_assert_eq(GW_SSE_SEQ(v), 4503599627370495u);
    static const char *bad[] = {"", "-1", "1a", " 1", "1 ", "4503599627370496", "18446744073709551616",
                                "000000000000000000001", "0x10", "7.", ".3", "7.0", "7.4096",
                                "7.1.2", "7.-1", "7.00001"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_neq(gw_sse_parse_last_id(bad[i], &v), 0, "\"%s\" accepted", bad[i]);
    cr_assert_neq(gw_sse_parse_last_id(NULL, &v), 0);
}

Test(gw_sse, event_format)
{
    rec_t t;
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
    t.rq.prompt = "line one\nline two";
    size_t len = 0;
    int terminal = -1;
    char *ev = gw_sse_format_event(&t.rec, GW_SSE_POS(42, 0), &len, &terminal);
    cr_assert_not_null(ev);
    cr_assert_eq(len, strlen(ev));
    cr_assert_eq(terminal, 0);
    const char *head = "event: job\nid: 42\ndata: {";
    cr_assert_eq(strncmp(ev, head, strlen(head)), 0, "%s", ev);
    cr_assert_str_eq(ev + len - 3, "}\n\n");
    /* The data line holds the whole JSON: no raw newline inside it. */
    const char *data = ev + strlen("event: job\nid: 42\n");
    cr_assert_eq(strchr(data, '\n'), ev + len - 2);
    json_t *j = json_loadb(data + 6, (size_t)(ev + len - 2 - data - 6), 0, NULL);
    cr_assert_not_null(j);
    expect_str(j, "prompt", "line one\nline two");
    json_decref(j);
    free(ev);
    ev = gw_sse_format_event(&t.rec, GW_SSE_POS(42, 3), &len, &terminal);
    cr_assert_not_null(ev);
    cr_assert_eq(strncmp(ev, "event: job\nid: 42.3\ndata: {", 27), 0, "%s", ev);
    free(ev);
    rec_init(&t, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    ev = gw_sse_format_event(&t.rec, GW_SSE_POS(7, 0), &len, &terminal);
    cr_assert_not_null(ev);
    cr_assert_eq(terminal, 1);
    free(ev);
}
