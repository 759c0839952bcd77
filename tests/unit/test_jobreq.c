/* test_jobreq.c - unit tests for common/jobreq.c: the JobRequest rules. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "jobreq.h"

typedef struct {
    Kiln__V1__JobRequest r;
    Kiln__V1__JobRequest__ParamsEntry e[KILN_PARAMS_MAX + 1];
    Kiln__V1__JobRequest__ParamsEntry *ep[KILN_PARAMS_MAX + 1];
} req_t;

static void req_init(req_t *q)
{
    kiln__v1__job_request__init(&q->r);
    q->r.id = "0190f0e0-1234-7abc-8def-0123456789ab";
    q->r.user_id = "alice";
    q->r.prompt = "a red fox in snow";
    for (size_t i = 0; i <= KILN_PARAMS_MAX; i++) {
        kiln__v1__job_request__params_entry__init(&q->e[i]);
        q->ep[i] = &q->e[i];
    }
}

/* Validates and checks the field named on failure ("" = expect OK). */
static void expect(const req_t *q, const char *field)
{
    char f[64], msg[256];
    kiln_status st = kiln_jobreq_validate(&q->r, f, sizeof f, msg, sizeof msg);
    if (field[0] == '\0') {
        cr_assert_eq(st, KILN_OK, "unexpected failure field=%s msg=%s", f, msg);
    } else {
        cr_assert_eq(st, KILN_EINVAL, "expected failure on %s", field);
        cr_assert_str_eq(f, field, "msg=%s", msg);
        cr_assert(msg[0] != '\0');
    }
}

/* A string of `count` copies of the UTF-8 sequence `cp`. */
static char *repeat(const char *cp, size_t count)
{
    size_t l = strlen(cp);
    char *s = malloc(l * count + 1);
    cr_assert_not_null(s);
    for (size_t i = 0; i < count; i++) memcpy(s + i * l, cp, l);
    s[l * count] = '\0';
    return s;
}

Test(jobreq, minimal_valid)
{
    req_t q;
    req_init(&q);
    expect(&q, "");
}

Test(jobreq, fully_populated_valid)
{
    req_t q;
    req_init(&q);
    q.r.model = "gpt-image-1";
    q.r.n = 4;
    q.r.size = "1024x768";
    q.e[0].key = "style";
    q.e[0].value = "vivid";
    q.r.n_params = 1;
    q.r.params = q.ep;
    q.r.priority = KILN__V1__PRIORITY__PRIORITY_LOW;
    q.r.not_before_ms = 1795503882123LL;
    q.r.timeout_s = 3600;
    q.r.max_attempts = 10;
    q.r.idempotency_key = "order-42:retry~1";
    expect(&q, "");
}

Test(jobreq, id_rules)
{
    cr_assert(kiln_jobreq_id_ok("a"));
    cr_assert(kiln_jobreq_id_ok("A-z_0-9"));
    char *max = repeat("x", KILN_ID_MAX_LEN);
    char *over = repeat("x", KILN_ID_MAX_LEN + 1);
    cr_assert(kiln_jobreq_id_ok(max));
    cr_assert(!kiln_jobreq_id_ok(over));
    cr_assert(!kiln_jobreq_id_ok(""));
    cr_assert(!kiln_jobreq_id_ok(NULL));
    cr_assert(!kiln_jobreq_id_ok("a.b"));
    cr_assert(!kiln_jobreq_id_ok("a b"));
    cr_assert(!kiln_jobreq_id_ok("a/b"));
    cr_assert(!kiln_jobreq_id_ok("caf\xc3\xa9"));
    req_t q;
    req_init(&q);
    q.r.id = "";
    expect(&q, "id");
    q.r.id = over;
    expect(&q, "id");
    q.r.id = "jobs.generate";
    expect(&q, "id");
    free(max);
    free(over);
}

Test(jobreq, user_rules)
{
    req_t q;
    req_init(&q);
    q.r.user_id = "";
    expect(&q, "user_id");
    char *max = repeat("u", KILN_USER_MAX_LEN);
    q.r.user_id = max;
    expect(&q, "");
    char *over = repeat("u", KILN_USER_MAX_LEN + 1);
    q.r.user_id = over;
    expect(&q, "user_id");
    q.r.user_id = "bob\n";
    expect(&q, "user_id");
    q.r.user_id = "bob\x7f";
    expect(&q, "user_id");
    q.r.user_id = "b\xffob";
    expect(&q, "user_id");
    q.r.user_id = "J\xc3\xbcrgen";
    expect(&q, "");
    free(max);
    free(over);
}

Test(jobreq, prompt_length_counts_code_points)
{
    req_t q;
    req_init(&q);
    q.r.prompt = "";
    expect(&q, "prompt");

    /* 2-, 3- and 4-byte sequences: the limit is characters, not bytes. */
    const char *cps[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t i = 0; i < 4; i++) {
        char *ok = repeat(cps[i], KILN_PROMPT_MAX_CHARS);
        char *bad = repeat(cps[i], KILN_PROMPT_MAX_CHARS + 1);
        int valid = 0;
        cr_assert_eq(kiln_utf8_chars(ok, &valid), KILN_PROMPT_MAX_CHARS);
        cr_assert(valid);
        q.r.prompt = ok;
        expect(&q, "");
        q.r.prompt = bad;
        expect(&q, "prompt");
        free(ok);
        free(bad);
    }
    /* Newlines and tabs are fine in a prompt. */
    q.r.prompt = "line one\nline\ttwo";
    expect(&q, "");
}

Test(jobreq, utf8_rejects_malformed)
{
    const char *bad[] = {
        "\x80",                 /* lone continuation byte */
        "a\xc3",                /* truncated 2-byte */
        "\xe2\x82",             /* truncated 3-byte */
        "\xc0\xaf",             /* overlong '/' */
        "\xc1\xbf",             /* overlong */
        "\xe0\x80\xaf",         /* overlong 3-byte */
        "\xf0\x80\x80\xaf",     /* overlong 4-byte */
        "\xed\xa0\x80",         /* surrogate U+D800 */
        "\xed\xbf\xbf",         /* surrogate U+DFFF */
        "\xf4\x90\x80\x80",     /* U+110000 */
        "\xf8\x88\x80\x80\x80", /* 5-byte form */
        "\xff",
        "ok\xe2\x28\xa1",       /* bad continuation */
    };
    req_t q;
    req_init(&q);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int valid = 1;
        (void)kiln_utf8_chars(bad[i], &valid);
        cr_assert(!valid, "accepted bad UTF-8 #%zu", i);
        q.r.prompt = (char *)bad[i];
        expect(&q, "prompt");
    }
    const char *good[] = {"\xed\x9f\xbf", "\xee\x80\x80", "\xf4\x8f\xbf\xbf", "\xc2\x80"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int valid = 0;
        cr_assert_eq(kiln_utf8_chars(good[i], &valid), 1);
        cr_assert(valid, "rejected good UTF-8 #%zu", i);
    }
    int valid = 0;
    cr_assert_eq(kiln_utf8_chars("", &valid), 0);
    cr_assert(valid);
}

Test(jobreq, model_n_size)
{
    req_t q;
    req_init(&q);
    char *over = repeat("m", KILN_MODEL_MAX_LEN + 1);
    q.r.model = over;
    expect(&q, "model");
    q.r.model = "";
    q.r.n = 5;
    expect(&q, "n");
    q.r.n = 0;
    expect(&q, "");
    cr_assert_eq(kiln_jobreq_n(&q.r), 1);
    q.r.n = 3;
    cr_assert_eq(kiln_jobreq_n(&q.r), 3);

    cr_assert(kiln_jobreq_size_ok("1x1"));
    cr_assert(kiln_jobreq_size_ok("8192x8192"));
    cr_assert(kiln_jobreq_size_ok("1024x1024"));
    const char *bad[] = {"", "x", "1024", "1024x", "x1024", "0x10", "10x0", "8193x10",
                         "10x8193", "1024X1024", "-1x5", "10x10x10", " 10x10", "10x10 ",
                         "100000x1", "1e3x10"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert(!kiln_jobreq_size_ok(bad[i]), "accepted '%s'", bad[i]);
    q.r.size = "";
    expect(&q, ""); /* empty = unset */
    q.r.size = "1024x";
    expect(&q, "size");
    free(over);
}

Test(jobreq, params)
{
    req_t q;
    req_init(&q);
    q.r.params = q.ep;
    for (size_t i = 0; i < KILN_PARAMS_MAX + 1; i++) {
        q.e[i].key = "k";
        q.e[i].value = "v";
    }
    q.r.n_params = KILN_PARAMS_MAX;
    expect(&q, "");
    q.r.n_params = KILN_PARAMS_MAX + 1;
    expect(&q, "params");
    q.r.n_params = 1;
    q.e[0].key = "";
    expect(&q, "params");
    char *max = repeat("k", KILN_PARAM_MAX_LEN);
    char *over = repeat("k", KILN_PARAM_MAX_LEN + 1);
    q.e[0].key = max;
    q.e[0].value = max;
    expect(&q, "");
    q.e[0].key = over;
    expect(&q, "params");
    q.e[0].key = "k";
    q.e[0].value = over;
    expect(&q, "params");
    q.e[0].value = "\xc0\xaf";
    expect(&q, "params");
    free(max);
    free(over);
}

Test(jobreq, priority_times_attempts)
{
    req_t q;
    req_init(&q);
    q.r.priority = (Kiln__V1__Priority)3;
    expect(&q, "priority");
    q.r.priority = KILN__V1__PRIORITY__PRIORITY_HIGH;
    q.r.not_before_ms = -1;
    expect(&q, "not_before_ms");
    q.r.not_before_ms = 0;
    q.r.timeout_s = KILN_TIMEOUT_MAX_S + 1;
    expect(&q, "timeout_s");
    q.r.timeout_s = 0;
    cr_assert_eq(kiln_jobreq_timeout_s(&q.r), KILN_TIMEOUT_DEFAULT_S);
    q.r.timeout_s = 12;
    cr_assert_eq(kiln_jobreq_timeout_s(&q.r), 12);
    q.r.max_attempts = KILN_ATTEMPTS_MAX + 1;
    expect(&q, "max_attempts");
    q.r.max_attempts = 0;
    expect(&q, "");
    cr_assert_eq(kiln_jobreq_max_attempts(&q.r), KILN_ATTEMPTS_DEFAULT);
    q.r.max_attempts = 1;
    cr_assert_eq(kiln_jobreq_max_attempts(&q.r), 1);
}

Test(jobreq, idempotency_key)
{
    cr_assert(kiln_idem_key_ok("a"));
    cr_assert(kiln_idem_key_ok("!~"));
    cr_assert(!kiln_idem_key_ok(""));
    cr_assert(!kiln_idem_key_ok("has space"));
    cr_assert(!kiln_idem_key_ok("tab\t"));
    cr_assert(!kiln_idem_key_ok("caf\xc3\xa9"));
    cr_assert(!kiln_idem_key_ok("del\x7f"));
    char *max = repeat("k", KILN_IDEM_KEY_MAX_LEN);
    char *over = repeat("k", KILN_IDEM_KEY_MAX_LEN + 1);
    cr_assert(kiln_idem_key_ok(max));
    cr_assert(!kiln_idem_key_ok(over));
    req_t q;
    req_init(&q);
    q.r.idempotency_key = "";
    expect(&q, "");
    q.r.idempotency_key = over;
    expect(&q, "idempotency_key");
    free(max);
    free(over);
}

Test(jobreq, null_request_and_small_buffers)
{
    char f[4], msg[8];
    cr_assert_eq(kiln_jobreq_validate(NULL, f, sizeof f, msg, sizeof msg), KILN_EINVAL);
    req_t q;
    req_init(&q);
    q.r.user_id = "";
    cr_assert_eq(kiln_jobreq_validate(&q.r, f, sizeof f, msg, sizeof msg), KILN_EINVAL);
    cr_assert_str_eq(f, "use"); /* truncated, still terminated */
    cr_assert_eq(kiln_jobreq_validate(&q.r, NULL, 0, NULL, 0), KILN_EINVAL);
}
