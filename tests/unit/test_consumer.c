/* test_consumer.c - unit tests for kiln-consumer's modules: retry backoff,
 * Retry-After, provider answer handling and HTTP classification, the job
 * state machine, duplicate copies, recent cancels and the memory floor. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../consumer/cons.h"
#include "clock.h"
#include "jobreq.h"
#include "imagepath.h"

/* ---- retry backoff ------------------------------------------------------- */

Test(retry, full_jitter_within_exponential_ceiling)
{
    for (unsigned attempt = 1; attempt <= 5; attempt++) {
        int64_t ceiling = 100LL << (attempt - 1);
        int64_t lo = ceiling, hi = 0;
        for (int i = 0; i < 2000; i++) {
            int64_t d = cons_retry_delay_ms(attempt, 100, 60000, 0);
            cr_assert(d >= 0 && d <= ceiling, "attempt %u delay %lld ceiling %lld", attempt,
                      (long long)d, (long long)ceiling);
            if (d < lo) lo = d;
            if (d > hi) hi = d;
        }
        /* Full jitter: the whole range is used, not just the top. */
        cr_assert(lo < ceiling / 4, "attempt %u min %lld", attempt, (long long)lo);
        cr_assert(hi > ceiling * 3 / 4, "attempt %u max %lld", attempt, (long long)hi);
    }
}

Test(retry, capped)
{
    for (unsigned attempt = 6; attempt < 200; attempt += 7) {
        for (int i = 0; i < 200; i++) {
            int64_t d = cons_retry_delay_ms(attempt, 1000, 5000, 0);
            cr_assert(d >= 0 && d <= 5000, "attempt %u delay %lld", attempt, (long long)d);
        }
    }
    /* Huge attempt numbers must not overflow the doubling. */
    cr_assert_leq(cons_retry_delay_ms(4000000000u, 1000, 86400000, 0), 86400000);
}

Test(retry, retry_after_is_a_floor)
{
    for (int i = 0; i < 500; i++) {
        int64_t d = cons_retry_delay_ms(1, 100, 60000, 3000);
        cr_assert_eq(d, 3000, "ceiling 100 < Retry-After 3000: exactly the floor, got %lld",
                     (long long)d);
        d = cons_retry_delay_ms(8, 1000, 60000, 2000);
        cr_assert(d >= 2000 && d <= 60000, "got %lld", (long long)d);
    }
    /* Retry-After wins over the cap too. */
    cr_assert_eq(cons_retry_delay_ms(3, 100, 1000, 5000), 5000);
}

/* ---- Retry-After parsing ------------------------------------------------- */

/* Rate-limit header values: each parser, a value, what it must give. */
typedef struct {
    int64_t (*parse)(const char *, size_t);
    const char *value;
    int64_t want;
} header_case;

static const header_case header_cases[] = {
    /* Retry-After: whole seconds; an HTTP-date is not honoured */
    {openai_parse_retry_after, "1", 1000},
    {openai_parse_retry_after, " 2\r\n", 2000},
    {openai_parse_retry_after, "\t0 \r\n", 0},
    {openai_parse_retry_after, "120", 120000},
    {openai_parse_retry_after, "999999999999999999999", 3600 * 1000LL}, /* capped at an hour */
    {openai_parse_retry_after, "", -1},
    {openai_parse_retry_after, " \r\n", -1},
    {openai_parse_retry_after, "1.5", -1},
    {openai_parse_retry_after, "-1", -1},
    {openai_parse_retry_after, "soon", -1},
    {openai_parse_retry_after, "Wed, 21 Oct 2015 07:28:00 GMT", -1},
    /* Azure OpenAI's retry-after-ms */
    {openai_parse_retry_after_ms, "1500", 1500},
    {openai_parse_retry_after_ms, " 20\r\n", 20},
    {openai_parse_retry_after_ms, "99999999999999", 3600 * 1000LL},
    {openai_parse_retry_after_ms, "1.5", -1},
    {openai_parse_retry_after_ms, "", -1},
    /* OpenAI's x-ratelimit-reset-requests, a Go duration */
    {openai_parse_reset, "1s", 1000},
    {openai_parse_reset, " 6m0s\r\n", 360000},
    {openai_parse_reset, "20ms", 20},
    {openai_parse_reset, "1.5s", 1500},
    {openai_parse_reset, "1m30.25s", 90250},
    {openai_parse_reset, "2h", 3600 * 1000LL},
    {openai_parse_reset, "", -1},
    {openai_parse_reset, "10", -1}, /* a number without a unit */
    {openai_parse_reset, "s", -1},
    {openai_parse_reset, "1.2.3s", -1},
    {openai_parse_reset, "1d", -1},
    {openai_parse_reset, "1s junk", -1},
};

Test(retry_after, parse)
{
    for (size_t i = 0; i < sizeof header_cases / sizeof header_cases[0]; i++) {
        const header_case *c = &header_cases[i];
        int64_t got = c->parse(c->value, strlen(c->value));
        cr_assert_eq(got, c->want, "case %zu \"%s\": got %lld, want %lld", i, c->value,
                     (long long)got, (long long)c->want);
    }
}

/* ---- provider answers ---------------------------------------------------- */

typedef struct {
    cons_job j;
    Kiln__V1__JobRequest req;
    char dir[64];
} pjob;

static pjob *pjob_new(const char *body)
{
    pjob *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    kiln__v1__job_request__init(&p->req);
    p->req.id = "job-1";
    p->req.user_id = "u";
    p->req.prompt = "a red fox";
    p->j.req = &p->req;
    snprintf(p->j.id, sizeof p->j.id, "job-1");
    snprintf(p->dir, sizeof p->dir, "/tmp/kiln-ut-cons.XXXXXX");
    cr_assert_not_null(mkdtemp(p->dir));
    if (body != NULL) {
        p->j.resp = strdup(body);
        p->j.resp_len = strlen(body);
    }
    return p;
}

static void pjob_free(pjob *p)
{
    char cmd[128];
    for (size_t i = 0; i < CONS_MAX_IMAGES; i++) free(p->j.images[i].url);
    free(p->j.resp);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    cr_assert_eq(system(cmd), 0);
    free(p);
}

static openai_verdict run(pjob *p, int curl_code, long http)
{
    return openai_handle_result(&p->j, curl_code, http, p->dir);
}

/* The bytes of a saved image: size_bytes at offset of its pack. */
static void assert_saved_is(const char *dir, const cons_image *img, const unsigned char *want,
                            size_t len)
{
    char path[256];
    unsigned char back[256];
    cr_assert_eq(kiln_image_pack_path(path, sizeof path, dir, img->pack), KILN_OK,
                 "pack name '%s'", img->pack);
    cr_assert_eq(img->size_bytes, len);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s missing", path);
    cr_assert_eq(fseek(f, (long)img->offset, SEEK_SET), 0);
    size_t n = fread(back, 1, len, f);
    fclose(f);
    cr_assert_eq(n, len, "%s holds %zu bytes at %llu, want %zu", path, n,
                 (unsigned long long)img->offset, len);
    cr_assert_eq(memcmp(back, want, len), 0, "%s holds other bytes at %llu", path,
                 (unsigned long long)img->offset);
}

Test(provider, b64_json_is_decoded_and_saved)
{
    unsigned char png[64] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    for (size_t i = 8; i < sizeof png; i++) png[i] = (unsigned char)(i * 7);
    char b64[128], body[256];
    EVP_EncodeBlock((unsigned char *)b64, png, (int)sizeof png);
    snprintf(body, sizeof body, "{\"created\":1,\"data\":[{\"b64_json\":\"%s\"}]}", b64);
    pjob *p = pjob_new(body);
    cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_OK, "err=%s %s", p->j.err_code, p->j.err_msg);
    cr_assert_eq(p->j.n_images, 1);
    cr_assert_str_eq(p->j.images[0].url, "/v1/jobs/job-1/images/0");
    assert_saved_is(p->dir, &p->j.images[0], png, sizeof png);
    pjob_free(p);
}

/* Each padding length gives back exactly the bytes encoded; '=' anywhere
 * but at the end, or a length that is not a multiple of 4, is refused. */
Test(provider, b64_padding_is_exact_and_strict)
{
    for (size_t len = 63; len <= 66; len++) {
        unsigned char png[66] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        for (size_t i = 8; i < len; i++) png[i] = (unsigned char)(i * 11);
        char b64[128], body[256];
        EVP_EncodeBlock((unsigned char *)b64, png, (int)len);
        snprintf(body, sizeof body, "{\"data\":[{\"b64_json\":\"%s\"}]}", b64);
        pjob *p = pjob_new(body);
        cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_OK, "len %zu: %s", len, p->j.err_msg);
        assert_saved_is(p->dir, &p->j.images[0], png, len);
        pjob_free(p);
    }
    const char *bad[] = {"iVBORw0KGgo=AAAA", "iVBORw0KGgoAAA", "iVBORw0KGgo\\nAAAA", "=VBORw0KGgoAAAAA"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"data\":[{\"b64_json\":\"%s\"}]}", bad[i]);
        pjob *p = pjob_new(body);
        cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_RETRY, "%s", bad[i]);
        cr_assert_str_eq(p->j.err_msg, "data[].b64_json is not base64", "%s", bad[i]);
        pjob_free(p);
    }
}

/* Images go one after another into one pack; a pack that would grow past
 * its limit is left for a new one, and a save never overwrites an earlier
 * image's bytes. */
Test(imagefile, images_are_appended_to_a_pack_then_a_new_one)
{
    unsigned char a[100], b[40], c[90];
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    memset(c, 'c', sizeof c);
    pjob *p = pjob_new(NULL);
    cons_image ia = {0}, ib = {0}, ic = {0};
    cons_image_set_pack_max(200);
    cr_assert_eq(cons_image_save(p->dir, a, sizeof a, &ia), KILN_OK);
    cr_assert_eq(cons_image_save(p->dir, b, sizeof b, &ib), KILN_OK);
    cr_assert_eq(cons_image_save(p->dir, c, sizeof c, &ic), KILN_OK);
    cons_image_close();
    cons_image_set_pack_max(0);

    cr_assert_str_eq(ia.pack, ib.pack, "a and b share a pack");
    cr_assert_eq(ia.offset, 0);
    cr_assert_eq(ib.offset, sizeof a);
    cr_assert_str_neq(ic.pack, ia.pack, "c would pass 200 bytes: a new pack");
    cr_assert_eq(ic.offset, 0);
    assert_saved_is(p->dir, &ia, a, sizeof a);
    assert_saved_is(p->dir, &ib, b, sizeof b);
    assert_saved_is(p->dir, &ic, c, sizeof c);
    pjob_free(p);
}

/* Another data dir (one process, two tests' dirs) gets a pack of its own. */
Test(imagefile, a_new_data_dir_gets_its_own_pack)
{
    unsigned char a[10] = "0123456789", b[10] = "abcdefghij";
    pjob *p = pjob_new(NULL), *q = pjob_new(NULL);
    cons_image ia = {0}, ib = {0};
    cr_assert_eq(cons_image_save(p->dir, a, sizeof a, &ia), KILN_OK);
    cr_assert_eq(cons_image_save(q->dir, b, sizeof b, &ib), KILN_OK);
    cons_image_close();
    assert_saved_is(p->dir, &ia, a, sizeof a);
    assert_saved_is(q->dir, &ib, b, sizeof b);
    pjob_free(p);
    pjob_free(q);
}

/* The bytes of a pack at [offset, offset + len), or NULL (caller frees). */
static unsigned char *read_pack(const char *dir, const cons_image *img)
{
    char path[256];
    if (kiln_image_pack_path(path, sizeof path, dir, img->pack) != KILN_OK) return NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    unsigned char *back = malloc(img->size_bytes + 1);
    size_t n = 0;
    if (back != NULL && fseek(f, (long)img->offset, SEEK_SET) == 0)
        n = fread(back, 1, img->size_bytes, f);
    fclose(f);
    if (back != NULL && n != img->size_bytes) {
        free(back);
        back = NULL;
    }
    return back;
}

static bool pack_holds(const char *dir, const cons_image *img, unsigned char fill)
{
    unsigned char *back = read_pack(dir, img);
    bool ok = back != NULL;
    for (size_t i = 0; ok && i < img->size_bytes; i++) ok = back[i] == fill;
    free(back);
    return ok;
}

/* Inside a round, saves only stage the bytes, at the offsets they will
 * have, and one flush writes them all; an image too large for the stage is
 * written at once, after what was staged before it. */
Test(imagefile, a_round_stages_images_until_the_flush)
{
    enum { BIG = 600 * 1024 };
    unsigned char a[3000], b[2900], c[100];
    unsigned char *big = malloc(BIG);
    cr_assert_not_null(big);
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    memset(c, 'c', sizeof c);
    memset(big, 'B', BIG);
    pjob *p = pjob_new(NULL);
    cons_image ia = {0}, ib = {0}, ibig = {0}, ic = {0};

    cons_image_stage_begin();
    cr_assert_eq(cons_image_save(p->dir, a, sizeof a, &ia), KILN_OK);
    cr_assert_eq(cons_image_save(p->dir, b, sizeof b, &ib), KILN_OK);
    cr_assert_str_eq(ia.pack, ib.pack);
    cr_assert_eq(ia.offset, 0);
    cr_assert_eq(ib.offset, sizeof a);
    cr_assert_not(pack_holds(p->dir, &ib, 'b'), "b is staged, not yet written");

    cr_assert_eq(cons_image_save(p->dir, big, BIG, &ibig), KILN_OK);
    cr_assert_eq(ibig.offset, sizeof a + sizeof b);
    cr_assert(pack_holds(p->dir, &ia, 'a'), "what was staged is written before the large image");
    cr_assert(pack_holds(p->dir, &ib, 'b'));
    cr_assert(pack_holds(p->dir, &ibig, 'B'));

    cr_assert_eq(cons_image_save(p->dir, c, sizeof c, &ic), KILN_OK);
    cr_assert_eq(ic.offset, sizeof a + sizeof b + BIG);
    cr_assert_not(pack_holds(p->dir, &ic, 'c'));
    cr_assert_eq(cons_image_flush(), KILN_OK);
    cr_assert(pack_holds(p->dir, &ic, 'c'));
    cons_image_stage_end();
    cons_image_close();
    free(big);
    pjob_free(p);
}

/* A stage whose write fails is reported lost by the flush (its jobs must
 * not be announced), and the next image goes to a new pack. */
Test(imagefile, a_failed_stage_write_is_reported_by_the_flush)
{
    unsigned char a[3000], b[3000], c[10];
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    memset(c, 'c', sizeof c);
    pjob *p = pjob_new(NULL);
    cons_image ia = {0}, ib = {0}, ic = {0};
    signal(SIGXFSZ, SIG_IGN); /* a write past the limit fails with EFBIG */
    struct rlimit lim = {.rlim_cur = 4096, .rlim_max = RLIM_INFINITY};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    cons_image_stage_begin();
    cr_assert_eq(cons_image_save(p->dir, a, sizeof a, &ia), KILN_OK);
    cr_assert_eq(cons_image_save(p->dir, b, sizeof b, &ib), KILN_OK);
    cr_assert_eq(cons_image_flush(), KILN_EIO, "6000 bytes cannot be written under a 4096 limit");
    cr_assert_eq(cons_image_flush(), KILN_OK, "the loss is reported once");
    cr_assert_eq(cons_image_save(p->dir, c, sizeof c, &ic), KILN_OK);
    cr_assert_str_neq(ic.pack, ia.pack, "a failed pack is left");
    cr_assert_eq(ic.offset, 0);
    cr_assert_eq(cons_image_flush(), KILN_OK);
    cr_assert(pack_holds(p->dir, &ic, 'c'));
    cons_image_stage_end();
    cons_image_close();
    lim.rlim_cur = RLIM_INFINITY;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    pjob_free(p);
}

typedef struct {
    const char *dir;
    cons_image img;
    kiln_status st;
} thread_save;

static void *save_one(void *arg)
{
    thread_save *t = arg;
    unsigned char x[16] = "from a thread...";
    t->st = cons_image_save(t->dir, x, sizeof x, &t->img);
    cons_image_close();
    return NULL;
}

/* Each thread appends to a pack of its own, so its appends need no lock
 * and its staged bytes are contiguous. */
Test(imagefile, each_thread_has_its_own_pack)
{
    pjob *p = pjob_new(NULL);
    thread_save saves[2] = {{.dir = p->dir, .st = KILN_ERR}, {.dir = p->dir, .st = KILN_ERR}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) cr_assert_eq(pthread_create(&t[i], NULL, save_one, &saves[i]), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(saves[i].st, KILN_OK);
        cr_assert_eq(saves[i].img.offset, 0);
    }
    cr_assert_str_neq(saves[0].img.pack, saves[1].img.pack);
    pjob_free(p);
}

Test(provider, url_passes_through)
{
    pjob *p = pjob_new("{\"data\":[{\"url\":\"https://cdn.example/a.png\"},"
                       "{\"url\":\"https://cdn.example/b.png\"}]}");
    cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_OK);
    cr_assert_eq(p->j.n_images, 2);
    cr_assert_str_eq(p->j.images[0].url, "https://cdn.example/a.png");
    cr_assert_str_eq(p->j.images[1].url, "https://cdn.example/b.png");
    cr_assert_eq(p->j.images[0].size_bytes, 0);
    pjob_free(p);
}

Test(provider, not_png_is_fatal)
{
    pjob *p = pjob_new("{\"data\":[{\"b64_json\":\"aGVsbG8gd29ybGQ=\"}]}");
    cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_FATAL);
    cr_assert_str_eq(p->j.err_code, "bad_response");
    pjob_free(p);
}

Test(provider, openai_error_body_gives_the_message)
{
    pjob *p = pjob_new("{\"error\":{\"message\":\"Your prompt was rejected.\","
                       "\"type\":\"invalid_request_error\",\"code\":null}}");
    cr_assert_eq(run(p, CURLE_OK, 400), OPENAI_FATAL);
    cr_assert_str_eq(p->j.err_code, "provider_rejected");
    cr_assert_str_eq(p->j.err_msg, "Your prompt was rejected.");
    pjob_free(p);

    p = pjob_new("upstream exploded\n");
    cr_assert_eq(run(p, CURLE_OK, 502), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "provider_unavailable");
    cr_assert_str_eq(p->j.err_msg, "HTTP 502: upstream exploded ", "control chars blanked");
    pjob_free(p);

    p = pjob_new(NULL);
    cr_assert_eq(run(p, CURLE_OK, 503), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_msg, "HTTP 503");
    pjob_free(p);
}

/* ---- provider answers (answer.c) -------------------------------------- */

static void answer_ok(const char *body, cons_answer *a)
{
    cr_assert_eq(cons_answer_parse(body, strlen(body), a), KILN_OK, "body %s", body);
}

/* Only the top-level data[] items' b64_json and url count, and only the
 * top-level error; the same names elsewhere are other fields. */
Test(answer, images_and_error_are_read_at_their_places)
{
    cons_answer a;
    answer_ok("{\"created\":1,\"meta\":{\"data\":[{\"b64_json\":\"decoy\"}],\"error\":\"no\"},"
              "\"data\":[{\"b64_json\":\"QUJD\",\"x\":{\"url\":\"decoy\"}},"
              "{\"revised_prompt\":\"p\",\"url\":\"https://cdn.example/b.png\"},"
              "\"not an item\",{\"error\":\"inner\"}]}",
              &a);
    cr_assert(a.has_data);
    cr_assert_eq(a.n_items, 4);
    cr_assert_str_eq(a.items[0].b64, "QUJD");
    cr_assert_eq(a.items[0].b64_len, 4);
    cr_assert_null(a.items[0].url, "a url nested in another field is not the item's");
    cr_assert_null(a.items[1].b64);
    cr_assert_str_eq(a.items[1].url, "https://cdn.example/b.png");
    cr_assert(a.items[2].b64 == NULL && a.items[2].url == NULL);
    cr_assert(a.items[3].b64 == NULL && a.items[3].url == NULL);
    cr_assert_null(a.error_message, "only the top-level error counts");
    cons_answer_free(&a);

    answer_ok("{\"error\":{\"code\":null,\"message\":\"Rate limit reached\",\"type\":\"r\"}}", &a);
    cr_assert(!a.has_data);
    cr_assert_str_eq(a.error_message, "Rate limit reached");
    cr_assert_null(a.error_code, "a null code is no code");
    cons_answer_free(&a);
    answer_ok("{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":"
              "\"insufficient_quota\",\"code\":\"insufficient_quota\"}}",
              &a);
    cr_assert_str_eq(a.error_code, "insufficient_quota");
    cr_assert_str_eq(a.error_message, "You exceeded your current quota");
    cons_answer_free(&a);
    answer_ok("{\"error\":\"Not found\"}", &a);
    cr_assert_str_eq(a.error_message, "Not found");
    cons_answer_free(&a);
    answer_ok("{\"data\":{\"b64_json\":\"QUJD\"}}", &a);
    cr_assert(!a.has_data, "data must be an array");
    cons_answer_free(&a);
}

/* Escapes are decoded ("\/" is how some servers write base64's slash), and a
 * number of any size is only skipped. */
Test(answer, escaped_strings_and_big_numbers)
{
    cons_answer a;
    answer_ok(" {\"created\":123456789012345678901234567890,\"data\":[{\"b64_json\":"
              "\"iVBO\\/w\\u003d=\"}]}\n",
              &a);
    cr_assert_eq(a.n_items, 1);
    cr_assert_str_eq(a.items[0].b64, "iVBO/w==");
    cons_answer_free(&a);
}

/* Strict JSON only: one UTF-8 value and nothing after it, nested at most
 * 64 deep. */
Test(answer, is_strict)
{
    char deep[256] = "";
    for (int i = 0; i < 65; i++) strcat(deep, "[");
    for (int i = 0; i < 65; i++) strcat(deep, "]");
    const char *bad[] = {"",
                         "{\"data\":[]} x",
                         "{} {}",
                         "{\"data\":[] /* note */}",
                         "{\"data\":[1,]}",
                         "{'data':[]}",
                         "{\"error\":\"\xff\xfe\"}",
                         "{\"data\":[{\"b64_json\":\"QUJD",
                         deep};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cons_answer a;
        cr_assert_eq(cons_answer_parse(bad[i], strlen(bad[i]), &a), KILN_EINVAL, "body %s",
                     bad[i]);
    }
}

/* Answers are megabytes of base64 for real images: each string comes back
 * whole, whatever its size. */
Test(answer, megabyte_strings_come_back_whole)
{
    const size_t big = 3 * 1024 * 1024;
    size_t cap = 2 * big + 256;
    char *body = malloc(cap);
    cr_assert_not_null(body);
    size_t n = (size_t)snprintf(body, cap, "{\"created\":1,\"data\":[");
    for (int k = 0; k < 2; k++) {
        n += (size_t)snprintf(body + n, cap - n, "%s{\"b64_json\":\"", k > 0 ? "," : "");
        for (size_t i = 0; i < big; i++) body[n + i] = "ABCD"[(i + (size_t)k) % 4];
        n += big;
        n += (size_t)snprintf(body + n, cap - n, "\"}");
    }
    n += (size_t)snprintf(body + n, cap - n, "]}");
    cons_answer a;
    cr_assert_eq(cons_answer_parse(body, n, &a), KILN_OK);
    cr_assert_eq(a.n_items, 2);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(a.items[k].b64_len, big);
        cr_assert_eq(strlen(a.items[k].b64), big);
        cr_assert_eq(a.items[k].b64[0], "ABCD"[k]);
        cr_assert_eq(a.items[k].b64[big - 1], "ABCD"[(big - 1 + (size_t)k) % 4]);
    }
    cons_answer_free(&a);
    free(body);
}

/* Items past CONS_MAX_IMAGES are counted but not kept. */
Test(answer, items_past_the_limit_are_counted_not_kept)
{
    char body[4096] = "{\"data\":[";
    for (int i = 0; i < CONS_MAX_IMAGES + 3; i++)
        snprintf(body + strlen(body), sizeof body - strlen(body), "%s{\"url\":\"u%d\"}",
                 i > 0 ? "," : "", i);
    snprintf(body + strlen(body), sizeof body - strlen(body), "]}");
    cons_answer a;
    answer_ok(body, &a);
    cr_assert_eq(a.n_items, CONS_MAX_IMAGES + 3);
    char last[16];
    snprintf(last, sizeof last, "u%d", CONS_MAX_IMAGES - 1);
    cr_assert_str_eq(a.items[CONS_MAX_IMAGES - 1].url, last);
    cons_answer_free(&a);
}

/* A 2xx body that is not the expected JSON is treated as retryable: a
 * truncated or garbled answer is most often transient (a proxy, a dropped
 * connection), and max_attempts bounds the cost. */
Test(provider, malformed_success_body_is_retryable)
{
    const char *bodies[] = {"{\"data\":[{\"b64_json\":", "not json", "{}", "{\"data\":[]}",
                            "{\"data\":[{}]}", "{\"data\":[{\"b64_json\":\"!!!not base64!!!\"}]}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        pjob *p = pjob_new(bodies[i]);
        cr_assert_eq(run(p, CURLE_OK, 200), OPENAI_RETRY, "body %s", bodies[i]);
        cr_assert_str_eq(p->j.err_code, "bad_response", "body %s", bodies[i]);
        cr_assert_eq(p->j.n_images, 0);
        pjob_free(p);
    }
}

Test(provider, http_status_classification)
{
    const long fatal[] = {400, 401, 403, 404, 405, 413, 415, 422};
    const long retry[] = {408, 409, 429, 500, 501, 502, 503, 504, 599};
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++) {
        pjob *p = pjob_new("{\"error\":{\"message\":\"no\"}}");
        cr_assert_eq(run(p, CURLE_OK, fatal[i]), OPENAI_FATAL, "HTTP %ld", fatal[i]);
        cr_assert_str_eq(p->j.err_code, "provider_rejected");
        pjob_free(p);
    }
    for (size_t i = 0; i < sizeof retry / sizeof retry[0]; i++) {
        pjob *p = pjob_new("{\"error\":{\"message\":\"later\"}}");
        cr_assert_eq(run(p, CURLE_OK, retry[i]), OPENAI_RETRY, "HTTP %ld", retry[i]);
        cr_assert_str_eq(p->j.err_msg, "later");
        pjob_free(p);
    }
    pjob *p = pjob_new(NULL);
    cr_assert_eq(run(p, CURLE_OK, 429), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "rate_limited");
    cr_assert_str_eq(p->j.provider_code, "");
    pjob_free(p);
    /* A 429 without Retry-After waits until OpenAI's request limit resets;
     * a Retry-After wins. */
    p = pjob_new(NULL);
    p->j.ratelimit_reset_ms = 7000;
    cr_assert_eq(run(p, CURLE_OK, 429), OPENAI_RETRY);
    cr_assert_eq(p->j.retry_after_ms, 7000);
    pjob_free(p);
    /* ... but no longer than the backoff's cap: it is when the limit is
     * whole again, not when one call may go. */
    cons_settings capped = {.retry_cap_ms = 5000};
    const cons_settings *was = cons_g.set;
    cons_g.set = &capped;
    p = pjob_new(NULL);
    p->j.ratelimit_reset_ms = 360000;
    cr_assert_eq(run(p, CURLE_OK, 429), OPENAI_RETRY);
    cons_g.set = was;
    cr_assert_eq(p->j.retry_after_ms, 5000);
    pjob_free(p);
    p = pjob_new(NULL);
    p->j.retry_after_ms = 2000;
    p->j.ratelimit_reset_ms = 7000;
    cr_assert_eq(run(p, CURLE_OK, 429), OPENAI_RETRY);
    cr_assert_eq(p->j.retry_after_ms, 2000);
    pjob_free(p);
    p = pjob_new(NULL);
    p->j.ratelimit_reset_ms = 7000;
    cr_assert_eq(run(p, CURLE_OK, 503), OPENAI_RETRY);
    cr_assert_eq(p->j.retry_after_ms, 0, "only a 429 waits for the limit's reset");
    pjob_free(p);
    /* OpenAI's answer for an account out of credit keeps its code for the gate. */
    p = pjob_new("{\"error\":{\"message\":\"You exceeded your current quota\","
                 "\"code\":\"insufficient_quota\"}}");
    cr_assert_eq(run(p, CURLE_OK, 429), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "rate_limited");
    cr_assert_str_eq(p->j.provider_code, "insufficient_quota");
    cr_assert_str_eq(p->j.err_msg, "You exceeded your current quota");
    pjob_free(p);
}

Test(provider, transport_errors)
{
    pjob *p = pjob_new(NULL);
    cr_assert_eq(run(p, CURLE_COULDNT_CONNECT, 0), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "provider_unavailable");
    pjob_free(p);

    p = pjob_new(NULL);
    cr_assert_eq(run(p, CURLE_OPERATION_TIMEDOUT, 0), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "timeout");
    pjob_free(p);

    /* Timed out before the request went out: the provider is unreachable. */
    p = pjob_new(NULL);
    p->j.never_connected = true;
    cr_assert_eq(run(p, CURLE_OPERATION_TIMEDOUT, 0), OPENAI_RETRY);
    cr_assert_str_eq(p->j.err_code, "provider_unavailable");
    pjob_free(p);

    p = pjob_new(NULL);
    p->j.resp_too_large = true;
    cr_assert_eq(run(p, CURLE_WRITE_ERROR, 200), OPENAI_FATAL);
    pjob_free(p);
}

Test(provider, request_body)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    Kiln__V1__JobRequest__ParamsEntry e = KILN__V1__JOB_REQUEST__PARAMS_ENTRY__INIT;
    Kiln__V1__JobRequest__ParamsEntry *ep = &e;
    char *body = NULL;
    e.key = "prompt"; /* a param may not override what Kiln sets */
    e.value = "evil";
    r.id = "x";
    r.user_id = "u";
    r.prompt = "a \"quoted\" fox";
    r.n = 2;
    r.size = "512x512";
    r.n_params = 1;
    r.params = &ep;
    cr_assert_eq(openai_build_request(&r, &body), KILN_OK);
    cr_assert_not_null(strstr(body, "\"prompt\":\"a \\\"quoted\\\" fox\""), "%s", body);
    cr_assert_not_null(strstr(body, "\"n\":2"), "%s", body);
    cr_assert_not_null(strstr(body, "\"size\":\"512x512\""), "%s", body);
    cr_assert_not_null(strstr(body, "\"response_format\":\"b64_json\""), "%s", body);
    cr_assert_null(strstr(body, "evil"), "%s", body);
    free(body);
}

/* ---- job state machine --------------------------------------------------- */

Test(job_state, allowed_moves)
{
    enum { N = CONS_JOB_ABANDONED + 1 };
    /* allowed[from][to] */
    static const bool allowed[N][N] = {
        [CONS_JOB_FETCHED] = {[CONS_JOB_CHECKED] = true, [CONS_JOB_PUBLISHING] = true},
        [CONS_JOB_CHECKED] = {[CONS_JOB_RUNNING] = true, [CONS_JOB_PUBLISHING] = true,
                              [CONS_JOB_ACKED] = true, [CONS_JOB_NAKED] = true},
        [CONS_JOB_RUNNING] = {[CONS_JOB_PUBLISHING] = true, [CONS_JOB_NAKED] = true},
        [CONS_JOB_PUBLISHING] = {[CONS_JOB_ACKED] = true, [CONS_JOB_NAKED] = true,
                                 [CONS_JOB_TERMINATED] = true, [CONS_JOB_ABANDONED] = true},
    };
    for (int f = 0; f < N; f++)
        for (int t = 0; t < N; t++)
            cr_assert_eq(cons_job_move_ok((cons_job_state)f, (cons_job_state)t), allowed[f][t],
                         "%s -> %s", cons_job_state_name((cons_job_state)f),
                         cons_job_state_name((cons_job_state)t));
    cr_assert_str_eq(cons_job_state_name(CONS_JOB_PUBLISHING), "publishing");
}

/* ---- duplicate copies ---------------------------------------------------- */

Test(job, duplicate_copy)
{
    cons_job j;
    cons_store_info si;
    memset(&j, 0, sizeof j);
    memset(&si, 0, sizeof si);
    j.num_delivered = 1;
    j.stream_seq = 42;
    si.answered = si.known = true;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    si.request_seq = 7;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "first delivery, other sequence");
    si.request_seq = 42;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "the copy that created the record");
    si.request_seq = 0;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "store without request_seq");
    si.request_seq = 7;
    j.num_delivered = 2;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "redeliveries finish what they started");
    j.num_delivered = 1;
    si.known = false;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "no record yet");
    si.known = true;
    si.answered = false;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "store did not answer");
    /* A re-drive of the job's own copy (Kiln-Redrive: 7). */
    si.answered = true;
    j.redrive_of = 7;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "a re-drive runs while the job is pending");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "not while an attempt may be running");
    si.abandoned = true;
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "a re-drive runs once the attempt was abandoned");
}

/* Which redeliveries are asked about in the other consumers (peers.c), and
 * which are held back when nobody answers. */
/* During a burst of redeliveries a first delivery is asked about too: it
 * may be the second copy nats-server 2.9 hands out after a failed
 * redelivery. Not a redelivery (the usual rule), not a copy this consumer
 * handed back, not a job the store says is over. */
Test(job, ask_in_burst)
{
    cons_job j = {0};
    cons_store_info si = {0};
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    j.req = &r;
    j.num_delivered = 1;
    j.stream_seq = 42;
    cr_assert(cons_job_ask_in_burst(&j, &si, false), "the store did not answer");
    si.answered = si.known = true;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    cr_assert(cons_job_ask_in_burst(&j, &si, false), "a new job: its first copy may run elsewhere");
    cr_assert_not(cons_job_ask_in_burst(&j, &si, true), "handed back untried here");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    cr_assert_not(cons_job_ask_in_burst(&j, &si, false), "over: it is skipped anyway");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    j.num_delivered = 2;
    cr_assert_not(cons_job_ask_in_burst(&j, &si, false), "a redelivery follows cons_job_ask_rule");
    j.num_delivered = 1;
    j.stream_seq = 0;
    cr_assert_not(cons_job_ask_in_burst(&j, &si, false), "no stream sequence to ask about");
    j.stream_seq = 42;
    j.req = NULL;
    cr_assert_not(cons_job_ask_in_burst(&j, &si, false), "undecodable: never runs");
}

Test(job, ask_rule)
{
    cons_job j = {0};
    cons_store_info si = {0};
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    const int64_t now = 1000000, ack_wait = 30000, margin = 3000;
    j.req = &r;
    j.num_delivered = 2;
    j.stream_seq = 42;
    si.answered = si.known = true;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    si.attempts = 1;
    r.created_at_ms = now - 1000; /* a processing record is asked about however young */
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_OR_HOLD, "a call began");
    cr_assert_eq(cons_job_ask_rule(&j, &si, true, now, ack_wait), CONS_ASK_NONE,
                 "handed back untried here");
    si.abandoned = true;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "processing for longer than an attempt can run");
    si.abandoned = false;
    j.num_delivered = 1;
    si.request_seq = 7;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "a first delivery of another copy of the id");
    si.request_seq = 42;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_OR_HOLD,
                 "a first delivery of the very message whose call began: delivered again, count reset");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_ONLY,
                 "the same, after a failed attempt");
    si.attempts = 0;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "an ordinary first delivery");
    si.attempts = 1;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    si.request_seq = 0;
    j.num_delivered = 2;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE, "already terminal");

    /* Pending: asked (never held) only if nats-server could have given up a
     * call begun since: due about AckWait ago or more. */
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    si.attempts = 1;
    r.created_at_ms = now - 10 * ack_wait;
    si.retry_at_ms = now - 1000;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE, "a retry on time");
    si.retry_at_ms = now - (ack_wait - margin);
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_ONLY,
                 "a retry about an AckWait late (clock margin): its call may have begun elsewhere");
    si.retry_at_ms = now - (ack_wait - margin) + 1;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "just inside the margin");
    si.attempts = 0;
    si.retry_at_ms = 0;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_ONLY,
                 "a call younger than its PROCESSING announcement");
    r.created_at_ms = now - 1000;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "created less than AckWait ago");
    r.created_at_ms = now - 10 * ack_wait;
    r.not_before_ms = now - 1000;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "a delayed job coming due");
    r.not_before_ms = 0;
    si.answered = false;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_OR_HOLD,
                 "the store did not answer: a call may have begun");
    si.retry_at_ms = now - 1000; /* what the store would have said is not known */
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_OR_HOLD);
    r.created_at_ms = now - 1000;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "the store did not answer, but the job is younger than AckWait");
    r.created_at_ms = now - 10 * ack_wait;
    /* The margin is at least a second (whole-second timestamps). */
    si.answered = true;
    si.retry_at_ms = now - 1000;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, 2000), CONS_ASK_ONLY, "AckWait 2 s");
    si.retry_at_ms = now - 999;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, 2000), CONS_ASK_NONE, "AckWait 2 s");
}

/* A re-drive's first delivery is asked about its original message while
 * its job is pending (another consumer may hold a copy of that one back);
 * a redelivery of it follows the rules above, about its own sequence. */
Test(job, ask_rule_for_a_redrive)
{
    cons_job j = {0};
    cons_store_info si = {0};
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    const int64_t now = 1000000, ack_wait = 30000;
    j.req = &r;
    j.num_delivered = 1;
    j.stream_seq = 591;
    j.redrive_of = 400;
    r.created_at_ms = now - 1000;
    si.answered = si.known = true;
    si.request_seq = 400;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_ONLY,
                 "a re-drive of a pending job's own message");
    cr_assert_eq(cons_job_ask_seq(&j), 400, "asked about the original message");
    cr_assert_eq(cons_job_ask_rule(&j, &si, true, now, ack_wait), CONS_ASK_NONE, "handed back untried here");
    si.request_seq = 7;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "a re-drive of another copy of the id");
    si.request_seq = 400;
    si.answered = false;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE,
                 "without the store's word (the fetcher keeps it until it answers)");
    si.answered = true;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    cr_assert_eq(cons_job_ask_rule(&j, &si, false, now, ack_wait), CONS_ASK_NONE, "already terminal");
    j.num_delivered = 2;
    cr_assert_eq(cons_job_ask_seq(&j), 591, "a redelivered re-drive is asked about as itself");
    j.redrive_of = 0;
    j.num_delivered = 1;
    cr_assert_eq(cons_job_ask_seq(&j), 591);
}

/* ---- recently cancelled ids ---------------------------------------------- */

/* One copy of a message in flight per process: a second copy of its stream
 * sequence is refused, whatever its delivery count (a redelivery whose
 * in-progress acks came late, or a copy nats-server 2.9 delivered again
 * with its count back at 1), until the first leaves. */
Test(registry, one_copy_per_sequence)
{
    enum { N = 200 };
    cr_assert_eq(cons_registry_init(16), KILN_OK); /* 64 buckets: chains */
    static cons_job first[N], again[N];
    for (size_t i = 0; i < N; i++) {
        first[i] = (cons_job){.stream_seq = 1000 + 64 * i, .num_delivered = 1};
        cr_assert(cons_registry_add(&first[i]), "seq %zu refused", i);
    }
    for (size_t i = 0; i < N; i++) {
        again[i] = (cons_job){.stream_seq = first[i].stream_seq, .num_delivered = i % 2 ? 2 : 1};
        cr_assert_not(cons_registry_add(&again[i]), "a second copy of seq %llu (delivered %llu) was added",
                      (unsigned long long)again[i].stream_seq, (unsigned long long)again[i].num_delivered);
    }
    cons_job unknown[2] = {{.stream_seq = 0}, {.stream_seq = 0}};
    cr_assert(cons_registry_add(&unknown[0]) && cons_registry_add(&unknown[1]),
              "messages without metadata are not compared");
    for (size_t i = 0; i < N; i += 2) cons_registry_remove(&first[i]);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(cons_registry_add(&again[i]), i % 2 == 0, "seq %zu after %s first copy left", i,
                     i % 2 == 0 ? "its" : "another");
    for (size_t i = 0; i < N; i++) {
        if (i % 2) cons_registry_remove(&first[i]);
        else cons_registry_remove(&again[i]);
    }
    cons_registry_remove(&unknown[0]);
    cons_registry_remove(&unknown[1]);
    cr_assert(cons_registry_add(&first[0]), "an emptied registry takes the sequence again");
    cons_registry_remove(&first[0]);
    cons_registry_destroy();
}

/* Asked which sequences it holds, a process names a re-drive's original
 * message too: another consumer may hold a copy of that one. */
Test(registry, a_redrive_holds_its_original_sequence)
{
    cr_assert_eq(cons_registry_init(16), KILN_OK);
    static cons_job plain = {.stream_seq = 500, .num_delivered = 1};
    static cons_job redrive = {.stream_seq = 591, .redrive_of = 400, .num_delivered = 1};
    cr_assert(cons_registry_add(&plain));
    cr_assert(cons_registry_add(&redrive));
    const uint64_t asked[] = {700, 400, 500};
    uint64_t held[3] = {0};
    size_t n = cons_registry_held_seqs(asked, 3, held);
    cr_assert_eq(n, 2, "held %zu of 400 and 500", n);
    cr_expect((held[0] == 400 && held[1] == 500) || (held[0] == 500 && held[1] == 400),
              "held %llu and %llu", (unsigned long long)held[0], (unsigned long long)held[1]);
    const uint64_t own[] = {591, 400};
    n = cons_registry_held_seqs(own, 2, held);
    cr_expect_eq(n, 2, "a re-drive is named by its own sequence and its original's");
    cons_registry_remove(&plain);
    cons_registry_remove(&redrive);
    cr_expect_eq(cons_registry_held_seqs(asked, 3, held), 0);
    cons_registry_destroy();
}

/* A re-drive is a new message of the same job: it does not run here beside
 * a copy of its original, nor the original beside it, nor two re-drives of
 * one original side by side. */
Test(registry, a_redrive_and_its_original_are_one_job_here)
{
    cr_assert_eq(cons_registry_init(16), KILN_OK);
    static cons_job original = {.stream_seq = 400, .num_delivered = 1};
    static cons_job redrive = {.stream_seq = 591, .redrive_of = 400, .num_delivered = 1};
    static cons_job redrive2 = {.stream_seq = 777, .redrive_of = 400, .num_delivered = 1};
    static cons_job other = {.stream_seq = 592, .redrive_of = 401, .num_delivered = 1};
    cr_assert(cons_registry_add(&original));
    cr_expect_not(cons_registry_add(&redrive), "a re-drive was taken beside a copy of its original");
    cr_expect(cons_registry_add(&other), "a re-drive of another message was refused");
    cons_registry_remove(&original);
    cr_assert(cons_registry_add(&redrive), "the re-drive was refused with its original gone");
    static cons_job original_again = {.stream_seq = 400, .num_delivered = 2};
    cr_expect_not(cons_registry_add(&original_again), "the original was taken beside its re-drive");
    cr_expect_not(cons_registry_add(&redrive2), "two re-drives of one message were taken");
    cons_registry_remove(&redrive);
    cr_expect(cons_registry_add(&original_again), "the original was refused with its re-drive gone");
    cons_registry_remove(&original_again);
    cons_registry_remove(&other);
    cons_registry_destroy();
}

Test(cancel, recent_ids)
{
    cr_assert_not(cons_cancel_recent("job-a"));
    cons_cancel_remember("job-a");
    cons_cancel_remember("job-b");
    cr_assert(cons_cancel_recent("job-a"));
    cr_assert(cons_cancel_recent("job-b"));
    cr_assert_not(cons_cancel_recent("job-c"));
    cr_assert_not(cons_cancel_recent(""));
    cons_cancel_remember("bad id with spaces");
    cr_assert_not(cons_cancel_recent("bad id with spaces"));
}

/* ---- memory floor -------------------------------------------------------- */

static uint64_t bytes_of(const char *s)
{
    uint64_t v = 12345;
    cr_assert_eq(cons_memwatch_parse_bytes(s, &v), KILN_OK, "parse(%s)", s);
    return v;
}

Test(memwatch, parse_bytes)
{
    cr_assert_eq(bytes_of("0"), 0);
    cr_assert_eq(bytes_of("4096"), 4096);
    cr_assert_eq(bytes_of("10B"), 10);
    cr_assert_eq(bytes_of("64MB"), 64ULL << 20);
    cr_assert_eq(bytes_of("64 mb"), 64ULL << 20);
    cr_assert_eq(bytes_of("64MiB"), 64ULL << 20);
    cr_assert_eq(bytes_of("512k"), 512ULL << 10);
    cr_assert_eq(bytes_of("1GB"), 1ULL << 30);
    cr_assert_eq(bytes_of("2g"), 2ULL << 30);
    cr_assert_eq(bytes_of("1TiB"), 1ULL << 40);
    uint64_t v = 0;
    const char *bad[] = {"", "MB", "-1", "1.5GB", "12 parsecs", "1PB", "99999999999999999999",
                         "20000000000TB", "1 G B"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(cons_memwatch_parse_bytes(bad[i], &v), KILN_EINVAL, "parse(%s)", bad[i]);
}

Test(memwatch, parse_meminfo)
{
    uint64_t v = 0;
    cr_assert_eq(cons_memwatch_parse_meminfo("MemTotal:       24576000 kB\n"
                                             "MemFree:         1000000 kB\n"
                                             "MemAvailable:    2048000 kB\n"
                                             "Buffers:           10000 kB\n",
                                             &v),
                 KILN_OK);
    cr_assert_eq(v, 2048000ULL * 1024);
    cr_assert_eq(cons_memwatch_parse_meminfo("MemTotal: 1 kB\n", &v), KILN_ENOTFOUND);
    cr_assert_eq(cons_memwatch_parse_meminfo("MemAvailable: x kB\n", &v), KILN_EINVAL);
}

static void write_meminfo(const char *path, unsigned long long kb)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "MemTotal: 99999999 kB\nMemAvailable: %llu kB\n", kb);
    fclose(f);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

Test(memwatch, pauses_below_floor_and_resumes)
{
    char path[] = "/tmp/kiln-ut-meminfo.XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    write_meminfo(path, 100 * 1024); /* 100 MiB available */
    cons_memwatch_set_source(path);

    cr_assert_eq(cons_memwatch_init("0"), KILN_OK);
    cr_assert_not(cons_memwatch_paused(), "floor 0 = off");

    cr_assert_eq(cons_memwatch_init("1GB"), KILN_OK);
    cr_assert(cons_memwatch_paused());
    write_meminfo(path, 4 * 1024 * 1024); /* 4 GiB */
    cr_assert(cons_memwatch_paused(), "re-read at most every 250 ms");
    sleep_ms(300);
    cr_assert_not(cons_memwatch_paused(), "resumed");
    write_meminfo(path, 1024);
    sleep_ms(300);
    cr_assert(cons_memwatch_paused(), "paused again");

    cr_assert_eq(cons_memwatch_init("lots"), KILN_EINVAL);
    cons_memwatch_set_source("/nonexistent/meminfo");
    cr_assert_eq(cons_memwatch_init("1GB"), KILN_EIO);
    cons_memwatch_set_source(NULL);
    unlink(path);
}

/* ---- store check replies ------------------------------------------------- */

typedef struct {
    Kiln__V1__JobRecord rec;
    Kiln__V1__JobRequest req;
    Kiln__V1__JobStatus st;
} check_rec;

static void check_rec_init(check_rec *c, const char *id, Kiln__V1__JobState state, uint32_t attempts)
{
    kiln__v1__job_record__init(&c->rec);
    kiln__v1__job_request__init(&c->req);
    kiln__v1__job_status__init(&c->st);
    c->req.id = (char *)id;
    c->st.state = state;
    c->st.attempts = attempts;
    c->rec.request = &c->req;
    c->rec.status = &c->st;
    c->rec.request_seq = attempts + 100;
}

/* Matches ids against the reply made of recs (in the given order). */
static void check_match(const char *const *ids, size_t n, check_rec *recs, size_t nrecs,
                        cons_store_info *info)
{
    Kiln__V1__JobRecord *ptrs[8];
    Kiln__V1__StoreReply rep = KILN__V1__STORE_REPLY__INIT;
    for (size_t i = 0; i < nrecs; i++) ptrs[i] = &recs[i].rec;
    rep.n_jobs = nrecs;
    rep.jobs = ptrs;
    memset(info, 0, n * sizeof *info);
    cons_store_match(ids, n, &rep, info);
}

Test(store_check, reply_in_request_order_with_gaps)
{
    const char *ids[] = {"a", "b", "", "c", "d", "b"};
    check_rec recs[3];
    check_rec_init(&recs[0], "b", KILN__V1__JOB_STATE__JOB_STATE_PENDING, 1);
    check_rec_init(&recs[1], "d", KILN__V1__JOB_STATE__JOB_STATE_CANCELLED, 2);
    check_rec_init(&recs[2], "b", KILN__V1__JOB_STATE__JOB_STATE_PENDING, 1);
    cons_store_info info[6];
    check_match(ids, 6, recs, 3, info);
    cr_assert(info[0].answered && !info[0].known, "a is unknown");
    cr_assert(info[1].known);
    cr_assert_eq(info[1].attempts, 1);
    cr_assert_eq(info[1].request_seq, 101);
    cr_assert(!info[2].answered, "an empty id is not asked");
    cr_assert(info[3].answered && !info[3].known, "c is unknown");
    cr_assert(info[4].known);
    cr_assert_eq(info[4].state, KILN__V1__JOB_STATE__JOB_STATE_CANCELLED);
    cr_assert_eq(info[4].attempts, 2);
    cr_assert(info[5].known, "a repeated id gets its own record");
    cr_assert_eq(info[5].state, KILN__V1__JOB_STATE__JOB_STATE_PENDING);
}

Test(store_check, processing_for_longer_than_an_attempt_can_run_is_abandoned)
{
    const char *ids[] = {"old", "new", "waiting"};
    check_rec recs[3];
    check_rec_init(&recs[0], "old", KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 1);
    check_rec_init(&recs[1], "new", KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 1);
    check_rec_init(&recs[2], "waiting", KILN__V1__JOB_STATE__JOB_STATE_PENDING, 1);
    recs[0].req.timeout_s = recs[1].req.timeout_s = 5;
    recs[0].rec.updated_at_ms = kiln_now_ms() - 5000 - KILN_ABANDONED_GRACE_MS - 1000;
    recs[1].rec.updated_at_ms = kiln_now_ms() - 5000;
    recs[2].rec.updated_at_ms = 1;
    cons_store_info info[3];
    check_match(ids, 3, recs, 3, info);
    cr_assert(info[0].abandoned, "processing past its 5 s timeout and the grace");
    cr_assert_not(info[1].abandoned, "within the grace: its worker may still publish");
    cr_assert_not(info[2].abandoned, "pending is never abandoned");
}

Test(store_check, reply_in_another_order_still_matches)
{
    const char *ids[] = {"a", "b", "c"};
    check_rec recs[3];
    check_rec_init(&recs[0], "c", KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, 3);
    check_rec_init(&recs[1], "a", KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 1);
    check_rec_init(&recs[2], "b", KILN__V1__JOB_STATE__JOB_STATE_FAILED, 2);
    cons_store_info info[3];
    check_match(ids, 3, recs, 3, info);
    cr_assert(info[0].known && info[1].known && info[2].known);
    cr_assert_eq(info[0].state, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING);
    cr_assert_eq(info[1].state, KILN__V1__JOB_STATE__JOB_STATE_FAILED);
    cr_assert_eq(info[2].state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_assert_eq(info[2].attempts, 3);
}
