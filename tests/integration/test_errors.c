/* test_errors.c - every HTTP error code of CONTRACT §3 against the real
 * gateway (auth, validation, routing) and user isolation. 429 and 503 are in
 * test_ratelimit.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(errors, .fini = h_fini, .timeout = 120);

static void post_expect(h_stack *s, const char *body, long status, const char *code, const char *field)
{
    h_expect_api_error(s, "POST", "/v1/jobs", H_TOKEN_ALICE, body, status, code, field);
}

/* POST {"prompt":"aaa..."} with an n-character prompt, expecting an error. */
static void post_long_prompt(h_stack *s, size_t n, long status, const char *code, const char *field)
{
    char *big = malloc(n + 32);
    cr_assert(big != NULL);
    strcpy(big, "{\"prompt\":\"");
    memset(big + 11, 'a', n);
    strcpy(big + 11 + n, "\"}");
    post_expect(s, big, status, code, field);
    free(big);
}

Test(errors, auth_validation_routing)
{
    h_stack s;
    h_start(&s, NULL);
    char url[256], hv[256];
    h_resp r;

    /* 401: no token, unknown token, wrong scheme. */
    snprintf(url, sizeof url, "%s/v1/jobs", s.gw_url);
    h_http(&r, "POST", url, NULL, "application/json", "{\"prompt\":\"x\"}", NULL);
    h_expect_error(&r, 401, "unauthenticated", NULL);
    cr_expect(h_resp_header(&r, "WWW-Authenticate", hv, sizeof hv) && strncmp(hv, "Bearer", 6) == 0,
              "401 without WWW-Authenticate: Bearer");
    h_resp_free(&r);
    h_http(&r, "GET", url, "tok-nobody", NULL, NULL, NULL);
    h_expect_error(&r, 401, "unauthenticated", NULL);
    cr_expect(h_resp_header(&r, "WWW-Authenticate", hv, sizeof hv) && strncmp(hv, "Bearer", 6) == 0);
    h_resp_free(&r);
    h_http(&r, "GET", url, NULL, NULL, NULL, "Authorization: Basic dG9rLWFsaWNlOg==");
    h_expect_error(&r, 401, "unauthenticated", NULL);
    h_resp_free(&r);
    /* Operations need no token. */
    cr_expect_eq(h_gw_status(&s, "/healthz", 10000), 200, "/healthz without token");
    cr_expect_eq(h_gw_status(&s, "/metrics", 10000), 200, "/metrics without token");

    /* 400: invalid_json, and invalid_argument naming the field. */
    static const struct {
        const char *body, *code, *field;
    } bad[] = {
        {"{not json", "invalid_json", NULL},
        {"", "invalid_json", NULL},
        {"{}", "invalid_argument", "prompt"},
        {"{\"prompt\":\"\"}", "invalid_argument", "prompt"},
        {"{\"prompt\":42}", "invalid_argument", "prompt"},
        {"{\"prompt\":\"x\",\"n\":5}", "invalid_argument", "n"},
        {"{\"prompt\":\"x\",\"n\":0}", "invalid_argument", "n"},
        {"{\"prompt\":\"x\",\"n\":\"2\"}", "invalid_argument", "n"},
        {"{\"prompt\":\"x\",\"priority\":\"urgent\"}", "invalid_argument", "priority"},
        {"{\"prompt\":\"x\",\"size\":\"big\"}", "invalid_argument", "size"},
        {"{\"prompt\":\"x\",\"max_attempts\":11}", "invalid_argument", "max_attempts"},
        {"{\"prompt\":\"x\",\"timeout_s\":0}", "invalid_argument", "timeout_s"},
        {"{\"prompt\":\"x\",\"delay_ms\":-1}", "invalid_argument", "delay_ms"},
        {"{\"prompt\":\"x\",\"params\":{\"a\":1}}", "invalid_argument", "params"},
        {"{\"prompt\":\"x\",\"colour\":\"red\"}", "unknown_field", "colour"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        post_expect(&s, bad[i].body, 400, bad[i].code, bad[i].field);
    post_long_prompt(&s, 4001, 400, "invalid_argument", "prompt"); /* well under 64 KiB */

    /* A valid body with every optional field is accepted. */
    h_api(&s, &r, "POST", "/v1/jobs", H_TOKEN_ALICE,
          "{\"prompt\":\"full fox\",\"model\":\"dev\",\"n\":2,\"size\":\"64x64\",\"priority\":\"high\","
          "\"params\":{\"style\":\"ink\"},\"delay_ms\":0,\"timeout_s\":60,\"max_attempts\":3}");
    cr_expect_eq(r.status, 202, "full valid body: %ld %s", r.status, r.body);
    char full_id[65];
    snprintf(full_id, sizeof full_id, "%s", h_jstr(r.json, "id") ? h_jstr(r.json, "id") : "");
    h_resp_free(&r);

    /* 404 */
    h_expect_api_error(&s, "GET", "/v1/jobs/no-such-job", H_TOKEN_ALICE, NULL, 404, "not_found", NULL);
    h_expect_api_error(&s, "GET", "/v1/nothing-here", H_TOKEN_ALICE, NULL, 404, "not_found", NULL);
    h_expect_api_error(&s, "POST", "/v1/jobs/no-such-job/viewed", H_TOKEN_ALICE, NULL, 404, "not_found", NULL);
    h_expect_api_error(&s, "POST", "/v1/jobs/no-such-job/cancel", H_TOKEN_ALICE, NULL, 404, "not_found", NULL);

    /* 405 with Allow */
    h_api(&s, &r, "DELETE", "/v1/jobs", H_TOKEN_ALICE, NULL);
    h_expect_error(&r, 405, "method_not_allowed", NULL);
    cr_expect(h_resp_header(&r, "Allow", hv, sizeof hv) && strstr(hv, "GET") != NULL &&
                  strstr(hv, "POST") != NULL,
              "405 Allow header: %s", hv);
    h_resp_free(&r);

    /* 413 over 64 KiB */
    post_long_prompt(&s, 70 * 1024, 413, "payload_too_large", NULL);

    /* 415 */
    snprintf(url, sizeof url, "%s/v1/jobs", s.gw_url);
    h_http(&r, "POST", url, H_TOKEN_ALICE, "text/plain", "{\"prompt\":\"x\"}", NULL);
    h_expect_error(&r, 415, "unsupported_media_type", NULL);
    h_resp_free(&r);
    /* application/json with a charset is fine. */
    h_http(&r, "POST", url, H_TOKEN_ALICE, "application/json; charset=utf-8", "{\"prompt\":\"charset fox\"}", NULL);
    cr_expect_eq(r.status, 202, "json with charset: %ld %s", r.status, r.body);
    h_resp_free(&r);

    if (full_id[0] != '\0') {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, full_id, NULL, 30000);
        char *d = h_job_dump(j);
        cr_expect_str_eq(h_jstr(j, "status"), "completed", "full job: %s", d);
        cr_expect_eq(json_array_size(json_object_get(j, "images")), 2, "n=2 images: %s", d);
        cr_expect_str_eq(h_jstr(j, "priority"), "high", "%s", d);
        cr_expect_str_eq(h_jstr(json_object_get(j, "params"), "style"), "ink", "%s", d);
        free(d);
        json_decref(j);
    }
    h_stop(&s);
}

Test(errors, user_isolation)
{
    h_stack s;
    h_start(&s, NULL);
    char id[65], path[256];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "alice's private fox", id), 202);
    /* Another user's job is 404 (never 403) on every route, and changes nothing. */
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "completed");
    json_t *img = json_array_get(json_object_get(j, "images"), 0);
    const char *url = h_jstr(img, "url");
    char img_url[1024] = "";
    if (url != NULL && url[0] == '/') snprintf(img_url, sizeof img_url, "%s%s", s.gw_url, url);
    json_decref(j);

    h_resp r;
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    h_expect_api_error(&s, "GET", path, H_TOKEN_BOB, NULL, 404, "not_found", NULL);
    h_job_post(&s, &r, H_TOKEN_BOB, id, "viewed");
    h_expect_error(&r, 404, "not_found", NULL);
    h_resp_free(&r);
    h_job_post(&s, &r, H_TOKEN_BOB, id, "cancel");
    h_expect_error(&r, 404, "not_found", NULL);
    h_resp_free(&r);
    snprintf(path, sizeof path, "%s/v1/jobs/%s/events", s.gw_url, id);
    h_http_timeout(&r, "GET", path, H_TOKEN_BOB, NULL, NULL, 0, NULL, 10000);
    h_expect_error(&r, 404, "not_found", NULL);
    h_resp_free(&r);
    if (img_url[0] != '\0') {
        h_http(&r, "GET", img_url, H_TOKEN_BOB, NULL, NULL, NULL);
        cr_expect_eq(r.status, 404, "bob fetched alice's image: %ld", r.status);
        h_resp_free(&r);
        h_http(&r, "GET", img_url, NULL, NULL, NULL, NULL);
        cr_expect_eq(r.status, 401, "image without a token: %ld", r.status);
        h_resp_free(&r);
    }
    h_api(&s, &r, "GET", "/v1/jobs", H_TOKEN_BOB, NULL);
    cr_expect_eq(r.status, 200);
    json_t *jobs = json_object_get(r.json, "jobs");
    cr_expect(json_is_array(jobs));
    for (size_t i = 0; i < json_array_size(jobs); i++)
        cr_expect_str_neq(h_jstr(json_array_get(jobs, i), "id"), id, "alice's job in bob's list");
    cr_expect_eq(h_jint(r.json, "unviewed_count"), 0, "bob's counters include alice's job");
    h_resp_free(&r);

    /* Alice still sees it, not viewed (bob's attempt changed nothing). */
    j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    cr_expect(json_is_false(json_object_get(j, "viewed")), "bob's viewed call affected alice's job");
    json_decref(j);
    h_stop(&s);
}

/* ---- random requests ---------------------------------------------------- */

/* A path segment: plain characters or percent-encoded random bytes. */
static void rnd_segment(unsigned *seed, char *out, size_t cap)
{
    static const char plain[] = "abcdef0123456789-_.~";
    size_t len = (size_t)(rand_r(seed) % 80), o = 0;
    for (size_t i = 0; i < len && o + 4 < cap; i++) {
        if (rand_r(seed) % 4 == 0)
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", rand_r(seed) % 256);
        else out[o++] = plain[rand_r(seed) % (int)(sizeof plain - 1)];
    }
    out[o] = '\0';
}

/* A POST body: a valid one with a few random bytes overwritten or inserted,
 * random bytes, or an oversized prompt. Returns its length. */
static size_t rnd_body(unsigned *seed, char *out, size_t cap)
{
    static const char *const bodies[] = {
        "{\"prompt\":\"a fox\",\"n\":2,\"size\":\"64x64\",\"priority\":\"low\",\"params\":{\"k\":\"v\"}}",
        "{\"prompt\":\"a fox\",\"delay_ms\":5,\"timeout_s\":30,\"max_attempts\":2,\"model\":\"m\"}",
        "{\"prompt\":\"a fox\"}",
    };
    int kind = rand_r(seed) % 10;
    size_t len;
    if (kind == 0) {
        len = (size_t)(rand_r(seed) % 300);
        for (size_t i = 0; i < len; i++) out[i] = (char)rand_r(seed);
        return len;
    }
    if (kind == 1) { /* over 64 KiB */
        len = 70000 < cap ? 70000 : cap;
        memset(out, 'a', len);
        memcpy(out, "{\"prompt\":\"", 11);
        return len;
    }
    const char *b = bodies[rand_r(seed) % 3];
    len = strlen(b);
    memcpy(out, b, len);
    for (int k = rand_r(seed) % 4; k > 0 && len + 1 < cap; k--) {
        size_t at = (size_t)rand_r(seed) % len;
        if (rand_r(seed) % 2) out[at] = (char)rand_r(seed);
        else {
            memmove(out + at + 1, out + at, len - at);
            out[at] = "{}[]\",:\\0e-9 "[rand_r(seed) % 13];
            len++;
        }
    }
    return len;
}

/* Hundreds of requests with random methods, paths, query strings, headers and
 * bodies (fixed seed). Each must be answered, never with a 5xx (NATS and the
 * store are up: any 5xx is Kiln failing on bad input), every error with the
 * contract's error body; the gateway lives and still serves a job. SSE
 * paths are left out: a valid one streams until the client leaves. */
Test(errors, random_requests_get_clear_answers, .timeout = 240)
{
    static const char *const methods[] = {"GET",  "GET", "GET",    "POST",  "POST",   "POST",
                                          "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    /* '*' stands for a random segment. */
    static const char *const forms[] = {"/v1/jobs", "/v1/jobs", "/v1/jobs", "/v1/jobs/*", "/v1/jobs/*/cancel",
                                        "/v1/jobs/*/viewed", "/v1/jobs/*/images/*", "/*",
                                        "/v1/*", "/healthz", "/readyz", "/metrics", "/v1/jobs/*/*"};
    static const char *const query_keys[] = {"wait", "limit", "status", "cursor", "unviewed", "x"};
    static const char *const ctypes[] = {"application/json", "application/json",
                                         "application/json; charset=utf-8", "text/plain",
                                         "multipart/form-data; boundary=x", NULL};
    h_stack s;
    h_start(&s, NULL);
    unsigned seed = 4242;
    char *body = malloc(72000);
    cr_assert_not_null(body);
    int statuses[600] = {0};

    for (int i = 0; i < 500; i++) {
        char a[256], b[256], path[700], url[900], extra[300];
        const char *method = methods[rand_r(&seed) % 11];
        rnd_segment(&seed, a, sizeof a);
        rnd_segment(&seed, b, sizeof b);
        const char *form = forms[rand_r(&seed) % 13];
        if (rand_r(&seed) % 3 == 0) snprintf(a, sizeof a, "job-%d", i);
        size_t pl = 0;
        for (const char *f = form, *seg = a; *f != '\0'; f++) {
            if (*f != '*') path[pl++] = *f;
            else pl += (size_t)snprintf(path + pl, sizeof path - pl, "%s", seg), seg = b;
        }
        path[pl] = '\0';
        for (int k = rand_r(&seed) % 3; k > 0 && pl + 80 < sizeof path; k--) {
            char v[64];
            rnd_segment(&seed, v, sizeof v);
            const char *key = query_keys[rand_r(&seed) % 6];
            /* ?wait stays short: a waiting GET of a real job is not an error. */
            if (strcmp(key, "wait") == 0) snprintf(v, sizeof v, "%d", rand_r(&seed) % 2);
            pl += (size_t)snprintf(path + pl, sizeof path - pl, "%c%s=%s",
                                   strchr(path, '?') != NULL ? '&' : '?', key, v);
        }
        snprintf(url, sizeof url, "%s%s", s.gw_url, path);
        int t = rand_r(&seed) % 5;
        const char *token = t == 0 ? NULL : t == 1 ? "tok-nobody" : H_TOKEN_ALICE;
        const char *ctype = ctypes[rand_r(&seed) % 6];
        size_t blen = strcmp(method, "GET") == 0 ? 0 : rnd_body(&seed, body, 72000);
        extra[0] = '\0';
        if (rand_r(&seed) % 3 == 0) {
            char v[200];
            rnd_segment(&seed, v, sizeof v);
            snprintf(extra, sizeof extra, "%s: %s",
                     rand_r(&seed) % 2 ? "Idempotency-Key" : "Last-Event-ID", v);
        }
        h_resp r;
        h_http_timeout(&r, method, url, token, blen > 0 ? ctype : NULL, blen > 0 ? body : NULL, blen,
                       extra[0] != '\0' ? extra : NULL, 15000);
        cr_expect(r.status >= 200 && r.status < 500, "%s %s: status %ld (%s) body %.200s", method,
                  path, r.status, r.error, r.body != NULL ? r.body : "");
        if (r.status >= 400) {
            json_t *e = r.json != NULL ? json_object_get(r.json, "error") : NULL;
            cr_expect(json_is_string(json_object_get(e, "code")) &&
                          json_is_string(json_object_get(e, "message")),
                      "%s %s: %ld without the contract's error body: %.200s", method, path,
                      r.status, r.body != NULL ? r.body : "");
        }
        if (r.status >= 0 && r.status < 600) statuses[r.status]++;
        h_resp_free(&r);
    }
    free(body);
    char mix[256] = "";
    for (int st = 0, o = 0; st < 600 && o < 240; st++)
        if (statuses[st] > 0) o += snprintf(mix + o, sizeof mix - (size_t)o, " %d:%d", st, statuses[st]);
    cr_log_info("random requests, status:count%s", mix);
    /* The mix reached past authentication and validation, not only 401s. */
    cr_expect(statuses[401] > 0 && statuses[400] > 0 && statuses[404] > 0 && statuses[405] > 0 &&
                  statuses[413] > 0 && statuses[202] > 0,
              "statuses 202:%d 400:%d 401:%d 404:%d 405:%d 413:%d", statuses[202], statuses[400],
              statuses[401], statuses[404], statuses[405], statuses[413]);

    cr_expect(h_proc_alive(&s, H_GATEWAY), "the gateway died");
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a fox after random requests", id), 202);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 60000, "job after random requests");
    h_stop(&s);
}
