/* test_devprovider.c - unit tests for the dev provider's modules: fault
 * directives, attempt counting, deterministic pictures and request bodies. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../devprovider/attempts.h"
#include "../../devprovider/directives.h"
#include "../../devprovider/hash.h"
#include "../../devprovider/images.h"
#include "../../devprovider/piccache.h"
#include "../../devprovider/picture.h"

/* ---- directives ---------------------------------------------------------- */

static dev_directives parse(const char *prompt)
{
    dev_directives d;
    cr_assert_eq(dev_directives_parse(prompt, &d), KILN_OK, "parse(%s)", prompt);
    return d;
}

/* The prompt with directives stripped. */
static const char *image_prompt(const char *prompt, const dev_directives *d)
{
    return prompt + d->image_off;
}

Test(directives, none)
{
    const char *p = "a red fox";
    dev_directives d = parse(p);
    cr_assert_eq(d.sleep_ms, -1);
    cr_assert_eq(d.nsteps, 0);
    cr_assert_not(dev_directives_counted(&d));
    cr_assert_str_eq(image_prompt(p, &d), "a red fox");
    dev_step a = dev_directives_action(&d, 1);
    cr_assert_eq(a.kind, DEV_ACT_SUCCEED);
    cr_assert_eq(a.code, 200);
}

Test(directives, sleep)
{
    const char *p = "!sleep=250 a cat";
    dev_directives d = parse(p);
    cr_assert_eq(d.sleep_ms, 250);
    cr_assert_eq(d.nsteps, 0);
    cr_assert_not(dev_directives_counted(&d)); /* sleep alone needs no counting */
    cr_assert_str_eq(image_prompt(p, &d), "a cat");
    cr_assert_eq(parse("!sleep=0 x").sleep_ms, 0);
    cr_assert_eq(parse("!sleep=3600000 x").sleep_ms, DEV_SLEEP_MAX_MS);
}

Test(directives, fail_with_count)
{
    const char *p = "!fail=503:2 x";
    dev_directives d = parse(p);
    cr_assert_eq(d.nsteps, 1);
    cr_assert_eq(d.steps[0].kind, DEV_ACT_FAIL);
    cr_assert_eq(d.steps[0].code, 503);
    cr_assert_eq(d.steps[0].count, 2);
    cr_assert(dev_directives_counted(&d));
    cr_assert_str_eq(image_prompt(p, &d), "x");
}

Test(directives, fail_forever)
{
    dev_directives d = parse("!fail=500 x");
    cr_assert_eq(d.nsteps, 1);
    cr_assert_eq(d.steps[0].kind, DEV_ACT_FAIL);
    cr_assert_eq(d.steps[0].code, 500);
    cr_assert_eq(d.steps[0].count, 0);
    for (uint64_t i = 1; i <= 1000; i += 333) {
        dev_step a = dev_directives_action(&d, i);
        cr_assert_eq(a.kind, DEV_ACT_FAIL);
        cr_assert_eq(a.code, 500);
    }
    cr_assert_eq(parse("!fail=400 x").steps[0].code, 400);
    cr_assert_eq(parse("!fail=599 x").steps[0].code, 599);
}

Test(directives, ratelimit)
{
    dev_directives d = parse("!ratelimit=3 x");
    cr_assert_eq(d.nsteps, 1);
    cr_assert_eq(d.steps[0].kind, DEV_ACT_RATELIMIT);
    cr_assert_eq(d.steps[0].code, 429);
    cr_assert_eq(d.steps[0].count, 3);
    cr_assert_eq(dev_directives_action(&d, 3).kind, DEV_ACT_RATELIMIT);
    cr_assert_eq(dev_directives_action(&d, 4).kind, DEV_ACT_SUCCEED);
}

Test(directives, hang)
{
    dev_directives d = parse("!hang x");
    cr_assert_eq(d.nsteps, 1);
    cr_assert_eq(d.steps[0].kind, DEV_ACT_HANG);
    cr_assert_eq(d.steps[0].count, 0);
    cr_assert_eq(dev_directives_action(&d, 99).kind, DEV_ACT_HANG);

    d = parse("!hang=1 x");
    cr_assert_eq(d.steps[0].kind, DEV_ACT_HANG);
    cr_assert_eq(d.steps[0].count, 1);
    cr_assert_eq(dev_directives_action(&d, 1).kind, DEV_ACT_HANG);
    cr_assert_eq(dev_directives_action(&d, 2).kind, DEV_ACT_SUCCEED);
}

Test(directives, script_in_order)
{
    const char *p = "!ratelimit=1 !fail=503:2 x";
    dev_directives d = parse(p);
    cr_assert_eq(d.nsteps, 2);
    cr_assert_str_eq(image_prompt(p, &d), "x");
    const int want[] = {429, 503, 503, 200, 200};
    for (uint64_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        dev_step a = dev_directives_action(&d, i + 1);
        cr_assert_eq(a.code, want[i], "attempt %llu: code %d, want %d", (unsigned long long)(i + 1),
                     a.code, want[i]);
    }
    cr_assert_eq(dev_directives_action(&d, 1).kind, DEV_ACT_RATELIMIT);
    cr_assert_eq(dev_directives_action(&d, 2).kind, DEV_ACT_FAIL);
    cr_assert_eq(dev_directives_action(&d, 4).kind, DEV_ACT_SUCCEED);
    cr_assert_eq(dev_directives_action(&d, 0).kind, DEV_ACT_SUCCEED); /* no attempt 0 */
    cr_assert_eq(dev_directives_action(NULL, 1).kind, DEV_ACT_SUCCEED);
}

Test(directives, sleep_with_faults_and_hang_after_failures)
{
    const char *p = "!fail=500:2 !sleep=100 a red fox";
    dev_directives d = parse(p);
    cr_assert_eq(d.sleep_ms, 100);
    cr_assert_eq(d.nsteps, 1);
    cr_assert_str_eq(image_prompt(p, &d), "a red fox");

    d = parse("!fail=502:1 !hang y");
    cr_assert_eq(dev_directives_action(&d, 1).kind, DEV_ACT_FAIL);
    cr_assert_eq(dev_directives_action(&d, 2).kind, DEV_ACT_HANG);
    cr_assert_eq(dev_directives_action(&d, 1000).kind, DEV_ACT_HANG);

    /* A later !sleep replaces an earlier one. */
    cr_assert_eq(parse("!sleep=5 !sleep=7 z").sleep_ms, 7);
}

Test(directives, extra_spaces_are_stripped)
{
    const char *p = "!sleep=1   !hang=2  two  spaces";
    dev_directives d = parse(p);
    cr_assert_eq(d.sleep_ms, 1);
    cr_assert_eq(d.nsteps, 1);
    cr_assert_str_eq(image_prompt(p, &d), "two  spaces");
}

Test(directives, only_directives_leave_empty_prompt)
{
    const char *p = "!fail=500:1 !sleep=10";
    dev_directives d = parse(p);
    cr_assert_eq(d.nsteps, 1);
    cr_assert_eq(d.sleep_ms, 10);
    cr_assert_str_eq(image_prompt(p, &d), "");
}

/* Each malformed token stops parsing: it and the rest are prompt text. */
Test(directives, malformed_tokens_are_prompt_text)
{
    static const char *const bad[] = {
        "!fail=abc", "!fail=200",    "!fail=600",     "!fail=", "!fail",        "!fail=500:",
        "!fail=500:0", "!fail=500:x", "!fail=500:2x", "!fail=5000", "!unknown",  "!",
        "!sleep",      "!sleep=",     "!sleep=-1",    "!sleep=3600001", "!sleep=1s", "!ratelimit",
        "!ratelimit=0", "!ratelimit=", "!hang=0",     "!hang=",  "!hang=x",      "!HANG",
        "!fail=500:1000001", "!sleep=1234567890",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s rest", bad[i]);
        dev_directives d = parse(p);
        cr_assert_eq(d.nsteps, 0, "%s: nsteps=%zu", p, d.nsteps);
        cr_assert_eq(d.sleep_ms, -1, "%s", p);
        cr_assert_eq(d.image_off, 0, "%s: image_off=%zu", p, d.image_off);
        cr_assert_not(dev_directives_counted(&d), "%s", p);
    }
}

Test(directives, malformed_after_good_keeps_the_good)
{
    const char *p = "!sleep=20 !fail=500:1 !fail=abc !hang tail";
    dev_directives d = parse(p);
    cr_assert_eq(d.sleep_ms, 20);
    cr_assert_eq(d.nsteps, 1); /* the !hang after the bad token is prompt text */
    cr_assert_eq(d.steps[0].code, 500);
    cr_assert_str_eq(image_prompt(p, &d), "!fail=abc !hang tail");

    /* Directives only count at the start. */
    p = "a fox !fail=500";
    d = parse(p);
    cr_assert_eq(d.nsteps, 0);
    cr_assert_str_eq(image_prompt(p, &d), p);
    p = " !fail=500 x"; /* a leading space is prompt text too */
    d = parse(p);
    cr_assert_eq(d.nsteps, 0);
    cr_assert_eq(d.image_off, 0);
}

Test(directives, step_cap)
{
    char p[1024] = "";
    for (int i = 0; i < DEV_STEPS_MAX + 1; i++) strcat(p, "!fail=500:1 ");
    strcat(p, "x");
    dev_directives d = parse(p);
    cr_assert_eq(d.nsteps, DEV_STEPS_MAX);
    cr_assert_str_eq(image_prompt(p, &d), "!fail=500:1 x"); /* the 17th is text */
}

Test(directives, null_arguments)
{
    dev_directives d;
    cr_assert_eq(dev_directives_parse(NULL, &d), KILN_EINVAL);
    cr_assert_eq(dev_directives_parse("x", NULL), KILN_EINVAL);
    cr_assert_not(dev_directives_counted(NULL));
}

/* ---- attempts ------------------------------------------------------------ */

static uint64_t *key_of(const char *prompt, size_t len, uint64_t key[2])
{
    cr_assert_eq(dev_hash_key(prompt, len, key), KILN_OK);
    return key;
}

/* One whole request of the prompt; its attempt number. */
static uint64_t next(dev_attempts *t, const char *prompt)
{
    uint64_t n = 0, running = 99, key[2];
    cr_assert_eq(dev_attempts_begin(t, key_of(prompt, strlen(prompt), key), &n, &running), KILN_OK);
    cr_assert_eq(running, 0, "%s: %llu running before", prompt, (unsigned long long)running);
    dev_attempts_end(t, key);
    return n;
}

Test(attempts, fail_fail_ok)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(16, &t), KILN_OK);
    const char *p = "!fail=500:2 a red fox";
    dev_directives d = parse(p);
    const dev_action_kind want[] = {DEV_ACT_FAIL, DEV_ACT_FAIL, DEV_ACT_SUCCEED, DEV_ACT_SUCCEED};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint64_t n = next(t, p);
        cr_assert_eq(n, i + 1);
        dev_step a = dev_directives_action(&d, n);
        cr_assert_eq(a.kind, want[i], "attempt %llu", (unsigned long long)n);
        if (a.kind == DEV_ACT_FAIL) cr_assert_eq(a.code, 500);
    }
    cr_assert_eq(dev_attempts_size(t), 1);
    dev_attempts_destroy(t);
}

Test(attempts, counted_per_exact_prompt)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(16, &t), KILN_OK);
    cr_assert_eq(next(t, "!fail=500:2 x"), 1);
    cr_assert_eq(next(t, "!fail=500:2 x"), 2);
    cr_assert_eq(next(t, "!fail=500:2  x"), 1); /* one more space: another prompt */
    cr_assert_eq(next(t, "!fail=500:2 X"), 1);
    cr_assert_eq(next(t, "!fail=500:3 x"), 1);
    cr_assert_eq(next(t, "!fail=500:2 x"), 3);
    /* Length counts, not NUL termination. */
    uint64_t n = 0, key[2];
    cr_assert_eq(dev_attempts_begin(t, key_of("!fail=500:2 xyz", 13, key), &n, NULL), KILN_OK);
    cr_assert_eq(n, 4);
    cr_assert_eq(dev_attempts_size(t), 4);
    dev_attempts_destroy(t);
}

Test(attempts, least_recently_used_is_evicted)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(2, &t), KILN_OK);
    cr_assert_eq(next(t, "a"), 1);
    cr_assert_eq(next(t, "b"), 1);
    cr_assert_eq(next(t, "a"), 2); /* a is now the most recent */
    cr_assert_eq(next(t, "c"), 1); /* evicts b */
    cr_assert_eq(dev_attempts_size(t), 2);
    cr_assert_eq(next(t, "a"), 3);
    cr_assert_eq(next(t, "b"), 1); /* b starts again; evicts c */
    cr_assert_eq(next(t, "c"), 1);
    cr_assert_eq(dev_attempts_size(t), 2);
    dev_attempts_destroy(t);
}

Test(attempts, many_prompts_bounded)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(100, &t), KILN_OK);
    char p[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(p, sizeof p, "!hang prompt %d", i);
        cr_assert_eq(next(t, p), 1);
    }
    cr_assert_eq(dev_attempts_size(t), 100);
    cr_assert_eq(next(t, "!hang prompt 999"), 2);
    cr_assert_eq(next(t, "!hang prompt 0"), 1);
    dev_attempts_destroy(t);
}

Test(attempts, requests_running_at_once_are_counted_until_they_end)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(16, &t), KILN_OK);
    uint64_t a[2], b[2], n = 0, running = 0;
    key_of("!sleep=400 a", 12, a);
    key_of("!sleep=400 b", 12, b);
    cr_assert_eq(dev_attempts_begin(t, a, &n, &running), KILN_OK);
    cr_assert(n == 1 && running == 0);
    cr_assert_eq(dev_attempts_begin(t, b, &n, &running), KILN_OK); /* another prompt */
    cr_assert(n == 1 && running == 0);
    cr_assert_eq(dev_attempts_begin(t, a, &n, &running), KILN_OK);
    cr_assert(n == 2 && running == 1, "attempt %llu, %llu running", (unsigned long long)n,
              (unsigned long long)running);
    cr_assert_eq(dev_attempts_begin(t, a, &n, &running), KILN_OK);
    cr_assert(n == 3 && running == 2);
    dev_attempts_end(t, a);
    dev_attempts_end(t, a);
    dev_attempts_end(t, a);
    dev_attempts_end(t, a); /* one end too many changes nothing */
    cr_assert_eq(dev_attempts_begin(t, a, &n, &running), KILN_OK);
    cr_assert(n == 4 && running == 0);
    dev_attempts_destroy(t);
}

Test(attempts, an_evicted_prompt_ends_quietly)
{
    dev_attempts *t = NULL;
    cr_assert_eq(dev_attempts_create(1, &t), KILN_OK);
    uint64_t a[2], b[2], n = 0, running = 0;
    cr_assert_eq(dev_attempts_begin(t, key_of("a", 1, a), &n, &running), KILN_OK);
    cr_assert_eq(dev_attempts_begin(t, key_of("b", 1, b), &n, &running), KILN_OK); /* evicts a */
    dev_attempts_end(t, a);
    cr_assert_eq(dev_attempts_size(t), 1);
    cr_assert_eq(dev_attempts_begin(t, b, &n, &running), KILN_OK);
    cr_assert(n == 2 && running == 1);
    dev_attempts_destroy(t);
}

Test(attempts, bad_arguments)
{
    dev_attempts *t = NULL;
    uint64_t n = 0, key[2] = {1, 2};
    cr_assert_eq(dev_attempts_create(0, &t), KILN_EINVAL);
    cr_assert_eq(dev_attempts_create(1, NULL), KILN_EINVAL);
    cr_assert_eq(dev_attempts_begin(NULL, key, &n, NULL), KILN_EINVAL);
    dev_attempts_end(NULL, key);
    cr_assert_eq(dev_attempts_size(NULL), 0);
    dev_attempts_destroy(NULL);
}

/* ---- hash ---------------------------------------------------------------- */

Test(hash, sha256_prefix)
{
    uint64_t k[2];
    /* SHA-256("abc") = ba7816bf8f01cfea 414140de5dae2223 b00361a3... */
    cr_assert_eq(dev_hash_key("abc", 3, k), KILN_OK);
    cr_assert_eq(k[0], 0xba7816bf8f01cfeaULL);
    cr_assert_eq(k[1], 0x414140de5dae2223ULL);
    cr_assert_eq(dev_hash_key(NULL, 0, k), KILN_OK); /* empty input is fine */
    cr_assert_eq(k[0], 0xe3b0c44298fc1c14ULL);
    cr_assert_eq(dev_hash_key(NULL, 1, k), KILN_EINVAL);
    /* SplitMix64 finaliser: a bijection with 0 as a fixed point. */
    cr_assert_eq(dev_hash_mix(0), 0);
    cr_assert_neq(dev_hash_mix(1), dev_hash_mix(2));
}

/* ---- pictures ------------------------------------------------------------ */

static void picture_teardown(void)
{
    dev_piccache_clear();
}

static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks the signature and IHDR, then decodes the whole PNG with libpng. */
static void assert_png(const uint8_t *png, size_t len, unsigned w, unsigned h)
{
    cr_assert_gt(len, 8 + 25 + 12);
    cr_assert_eq(memcmp(png, png_sig, 8), 0, "PNG signature");
    cr_assert_eq(be32(png + 8), 13, "IHDR length");
    cr_assert_eq(memcmp(png + 12, "IHDR", 4), 0);
    cr_assert_eq(be32(png + 16), w);
    cr_assert_eq(be32(png + 20), h);
    cr_assert_eq(memcmp(png + len - 8, "IEND", 4), 0);

    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    cr_assert(png_image_begin_read_from_memory(&img, png, len), "libpng: %s", img.message);
    cr_assert_eq(img.width, w);
    cr_assert_eq(img.height, h);
    img.format = PNG_FORMAT_RGB;
    uint8_t *px = malloc(PNG_IMAGE_SIZE(img));
    cr_assert_not_null(px);
    int ok = png_image_finish_read(&img, NULL, px, 0, NULL);
    free(px);
    cr_assert(ok, "libpng: %s", img.message);
}

Test(picture, deterministic_and_valid, .fini = picture_teardown)
{
    uint8_t *a = NULL, *b = NULL, *c = NULL;
    size_t alen = 0, blen = 0, clen = 0;
    cr_assert_eq(dev_picture_png(42, 64, 48, &a, &alen), KILN_OK);
    cr_assert_eq(dev_picture_png(42, 64, 48, &b, &blen), KILN_OK);
    cr_assert_eq(dev_picture_png(43, 64, 48, &c, &clen), KILN_OK);
    cr_assert_eq(alen, blen);
    cr_assert_eq(memcmp(a, b, alen), 0, "same seed, same bytes");
    cr_assert(alen != clen || memcmp(a, c, alen) != 0, "different seed, different picture");
    assert_png(a, alen, 64, 48);
    assert_png(c, clen, 64, 48);
    free(a);
    free(b);
    free(c);
}

Test(picture, sizes, .fini = picture_teardown)
{
    static const unsigned sizes[][2] = {{1, 1}, {1, 300}, {300, 1}, {256, 256},
                                        {DEV_PICTURE_MAX_SIDE, 7}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *p = NULL;
        size_t len = 0;
        cr_assert_eq(dev_picture_png(7, sizes[i][0], sizes[i][1], &p, &len), KILN_OK);
        assert_png(p, len, sizes[i][0], sizes[i][1]);
        free(p);
    }
    uint8_t *p = NULL;
    size_t len = 0;
    cr_assert_neq(dev_picture_png(7, 0, 5, &p, &len), KILN_OK);
    cr_assert_neq(dev_picture_png(7, DEV_PICTURE_MAX_SIDE + 1, 5, &p, &len), KILN_OK);
    cr_assert_null(p);
}

Test(picture, cache_returns_same_bytes, .fini = picture_teardown)
{
    uint8_t *a = NULL, *b = NULL, *c = NULL;
    size_t alen = 0, blen = 0, clen = 0;
    cr_assert_eq(dev_picture_png(9, 32, 32, &a, &alen), KILN_OK);
    cr_assert_eq(dev_piccache_png(9, 32, 32, &b, &blen), KILN_OK); /* miss */
    cr_assert_eq(dev_piccache_png(9, 32, 32, &c, &clen), KILN_OK); /* hit */
    cr_assert_eq(alen, blen);
    cr_assert_eq(alen, clen);
    cr_assert_eq(memcmp(a, b, alen), 0);
    cr_assert_eq(memcmp(a, c, alen), 0);
    cr_assert_neq(b, c); /* each call returns its own copy */
    free(a);
    free(b);
    free(c);
}

/* ---- request bodies ------------------------------------------------------ */

typedef struct {
    kiln_status st;
    dev_images_req r;
    char param[32];
    char msg[512];
} parsed;

static parsed parse_body(const char *body)
{
    parsed p;
    memset(&p, 0, sizeof p);
    p.st = dev_images_parse(body, strlen(body), 256, 256, &p.r, p.param, sizeof p.param, p.msg,
                            sizeof p.msg);
    return p;
}

static void assert_invalid(const char *body, const char *param)
{
    parsed p = parse_body(body);
    cr_assert_eq(p.st, KILN_EINVAL, "%s: status %d", body, p.st);
    cr_assert_str_eq(p.param, param, "%s: param '%s', want '%s'", body, p.param, param);
    cr_assert_neq(p.msg[0], '\0', "%s: a message", body);
    cr_assert_null(p.r.prompt);
}

Test(images, valid_minimal)
{
    parsed p = parse_body("{\"prompt\":\"!fail=500:1 a fox\"}");
    cr_assert_eq(p.st, KILN_OK, "%s", p.msg);
    cr_assert_str_eq(p.r.prompt, "!fail=500:1 a fox"); /* directives kept */
    cr_assert_eq(p.r.prompt_len, 17);
    cr_assert_eq(p.r.n, 1);
    cr_assert_eq(p.r.w, 256);
    cr_assert_eq(p.r.h, 256);
    cr_assert_eq(p.r.b64, 0);
    dev_images_req_clear(&p.r);
    cr_assert_null(p.r.prompt);
    dev_images_req_clear(&p.r); /* twice is fine */
}

Test(images, valid_full)
{
    parsed p = parse_body("{\"prompt\":\"x\",\"model\":\"gpt-image-1\",\"n\":3,\"size\":\"2048x512\","
                          "\"response_format\":\"b64_json\",\"quality\":\"high\",\"user\":\"u\"}");
    cr_assert_eq(p.st, KILN_OK, "%s", p.msg);
    cr_assert_eq(p.r.n, 3);
    cr_assert_eq(p.r.w, DEV_PICTURE_MAX_SIDE); /* clamped for rendering */
    cr_assert_eq(p.r.h, 512);
    cr_assert_eq(p.r.b64, 1);
    dev_images_req_clear(&p.r);

    p = parse_body("{\"prompt\":\"x\",\"size\":\"auto\",\"n\":null,\"response_format\":\"url\"}");
    cr_assert_eq(p.st, KILN_OK, "%s", p.msg);
    cr_assert_eq(p.r.w, 256);
    cr_assert_eq(p.r.n, 1);
    cr_assert_eq(p.r.b64, 0);
    dev_images_req_clear(&p.r);
}

Test(images, validation_errors)
{
    assert_invalid("", "");
    assert_invalid("{", "");
    assert_invalid("[1,2]", "");
    assert_invalid("\"prompt\"", "");
    assert_invalid("{\"prompt\":\"a\",\"prompt\":\"b\"}", ""); /* duplicate keys */
    assert_invalid("{\"prompt\":\"a\\u0000b\"}", ""); /* jansson refuses NUL */
    assert_invalid("{}", "prompt");
    assert_invalid("{\"prompt\":null}", "prompt");
    assert_invalid("{\"prompt\":5}", "prompt");
    assert_invalid("{\"prompt\":\"\"}", "prompt");
    assert_invalid("{\"prompt\":\"x\",\"model\":7}", "model");
    assert_invalid("{\"prompt\":\"x\",\"n\":0}", "n");
    assert_invalid("{\"prompt\":\"x\",\"n\":11}", "n");
    assert_invalid("{\"prompt\":\"x\",\"n\":\"2\"}", "n");
    assert_invalid("{\"prompt\":\"x\",\"n\":1.5}", "n");
    assert_invalid("{\"prompt\":\"x\",\"size\":\"0x5\"}", "size");
    assert_invalid("{\"prompt\":\"x\",\"size\":\"5x\"}", "size");
    assert_invalid("{\"prompt\":\"x\",\"size\":\"8193x1\"}", "size");
    assert_invalid("{\"prompt\":\"x\",\"size\":\"big\"}", "size");
    assert_invalid("{\"prompt\":\"x\",\"size\":256}", "size");
    assert_invalid("{\"prompt\":\"x\",\"response_format\":\"jpeg\"}", "response_format");
    assert_invalid("{\"prompt\":\"x\",\"response_format\":1}", "response_format");
}

Test(images, prompt_length_cap)
{
    size_t n = DEV_PROMPT_MAX_BYTES + 1;
    char *body = malloc(n + 32);
    cr_assert_not_null(body);
    strcpy(body, "{\"prompt\":\"");
    size_t off = strlen(body);
    memset(body + off, 'a', n);
    strcpy(body + off + n, "\"}");
    assert_invalid(body, "prompt");
    body[off + n - 1] = '"'; /* exactly the cap */
    body[off + n] = '}';
    body[off + n + 1] = '\0';
    parsed p = parse_body(body);
    cr_assert_eq(p.st, KILN_OK, "%s", p.msg);
    cr_assert_eq(p.r.prompt_len, DEV_PROMPT_MAX_BYTES);
    dev_images_req_clear(&p.r);
    free(body);
}

Test(images, parse_size)
{
    unsigned w = 0, h = 0;
    cr_assert_eq(dev_images_parse_size("1x1", &w, &h), KILN_OK);
    cr_assert_eq(w, 1);
    cr_assert_eq(dev_images_parse_size("8192x1024", &w, &h), KILN_OK);
    cr_assert_eq(w, 8192);
    cr_assert_eq(h, 1024);
    static const char *const bad[] = {"", "x", "1x", "x1", "0x1", "1x0", "8193x1", "1x1 ",
                                      " 1x1", "1X1", "-1x1", "100000x1", "1x1x1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(dev_images_parse_size(bad[i], &w, &h), KILN_EINVAL, "'%s'", bad[i]);
}

/* Decodes data[i].b64_json of a response body into a malloc'ed PNG. */
static uint8_t *response_png(const char *json, size_t i, size_t *len)
{
    json_error_t err;
    json_t *root = json_loads(json, 0, &err);
    cr_assert_not_null(root, "%s", err.text);
    cr_assert(json_is_integer(json_object_get(root, "created")));
    json_t *item = json_array_get(json_object_get(root, "data"), i);
    const char *b64 = json_string_value(json_object_get(item, "b64_json"));
    cr_assert_not_null(b64);
    size_t blen = strlen(b64);
    uint8_t *png = malloc(blen / 4 * 3 + 1);
    cr_assert_not_null(png);
    int n = EVP_DecodeBlock(png, (const unsigned char *)b64, (int)blen);
    cr_assert_gt(n, 0);
    /* EVP_DecodeBlock counts padding as zero bytes; drop them. */
    size_t pad = blen >= 2 && b64[blen - 1] == '=' ? (b64[blen - 2] == '=' ? 2 : 1) : 0;
    *len = (size_t)n - pad;
    json_decref(root);
    return png;
}

static char *respond(const char *prompt, unsigned n, unsigned w, unsigned h, int b64)
{
    dev_images_req r = {.prompt = NULL, .prompt_len = 0, .n = n, .w = w, .h = h, .b64 = b64};
    char *json = NULL;
    size_t len = 0;
    cr_assert_eq(dev_images_response(&r, prompt, strlen(prompt), "http://127.0.0.1:8090", &json,
                                     &len),
                 KILN_OK);
    cr_assert_eq(len, strlen(json));
    return json;
}

Test(images, b64_response_deterministic, .fini = picture_teardown)
{
    char *j1 = respond("a red fox", 3, 40, 30, 1);
    char *j2 = respond("a red fox", 1, 40, 30, 1);
    char *j3 = respond("a blue fox", 1, 40, 30, 1);
    size_t l10, l11, l12, l2, l3;
    uint8_t *p10 = response_png(j1, 0, &l10), *p11 = response_png(j1, 1, &l11);
    uint8_t *p12 = response_png(j1, 2, &l12), *p2 = response_png(j2, 0, &l2);
    uint8_t *p3 = response_png(j3, 0, &l3);
    assert_png(p10, l10, 40, 30);
    assert_png(p11, l11, 40, 30);
    assert_png(p3, l3, 40, 30);
    cr_assert(l10 == l2 && memcmp(p10, p2, l10) == 0, "same prompt and index, same PNG");
    cr_assert(l10 != l3 || memcmp(p10, p3, l10) != 0, "different prompt, different PNG");
    cr_assert(l10 != l11 || memcmp(p10, p11, l10) != 0, "the n images differ");
    cr_assert(l11 != l12 || memcmp(p11, p12, l11) != 0, "the n images differ");
    free(p10);
    free(p11);
    free(p12);
    free(p2);
    free(p3);
    free(j1);
    free(j2);
    free(j3);
}

Test(images, url_response_names_parse_back, .fini = picture_teardown)
{
    char *j = respond("a red fox", 2, 64, 32, 0);
    json_t *root = json_loads(j, 0, NULL);
    cr_assert_not_null(root);
    const char *prefix = "http://127.0.0.1:8090/v1/files/";
    const char *u0 = json_string_value(json_object_get(json_array_get(json_object_get(root, "data"), 0), "url"));
    const char *u1 = json_string_value(json_object_get(json_array_get(json_object_get(root, "data"), 1), "url"));
    cr_assert_not_null(u0);
    cr_assert_not_null(u1);
    cr_assert_eq(strncmp(u0, prefix, strlen(prefix)), 0, "%s", u0);
    cr_assert_str_neq(u0, u1);
    uint64_t seed = 0;
    unsigned w = 0, h = 0;
    cr_assert_eq(dev_images_file_parse(u0 + strlen(prefix), &seed, &w, &h), KILN_OK, "%s", u0);
    cr_assert_eq(w, 64);
    cr_assert_eq(h, 32);
    char name[DEV_FILE_NAME_MAX];
    snprintf(name, sizeof name, "%016llx-64x32.png", (unsigned long long)seed);
    cr_assert_str_eq(u0 + strlen(prefix), name);

    /* The same prompt gives the same URLs. */
    char *j2 = respond("a red fox", 1, 64, 32, 0);
    json_t *root2 = json_loads(j2, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(root2, "data"), 0), "url")), u0);
    json_decref(root2);
    free(j2);
    json_decref(root);
    free(j);
}

Test(images, file_names)
{
    uint64_t seed = 0;
    unsigned w = 0, h = 0;
    cr_assert_eq(dev_images_file_parse("00000000000000ff-1x2.png", &seed, &w, &h), KILN_OK);
    cr_assert_eq(seed, 255);
    cr_assert_eq(w, 1);
    cr_assert_eq(h, 2);
    static const char *const bad[] = {
        "", "00000000000000ff-1x2.jpg", "00000000000000FF-1x2.png", "0000000000000ff-1x2.png",
        "00000000000000ff_1x2.png", "00000000000000ff-1025x2.png", "00000000000000ff-0x2.png",
        "00000000000000ff-.png", "../../etc/passwd", "00000000000000ff-1x2.png/x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(dev_images_file_parse(bad[i], &seed, &w, &h), KILN_EINVAL, "'%s'", bad[i]);
}
