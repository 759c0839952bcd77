/* test_retention.c - KILN_RESULT_TTL on the whole stack: a finished job's
 * record, list entry and image file go once the TTL has passed; a job with
 * an Idempotency-Key stays while its key is honoured; and a consumer whose
 * pack was removed saves the next image into a new one. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../harness.h"

TestSuite(retention, .fini = h_fini, .timeout = 150);

#define RET_TTL "KILN_RESULT_TTL=2s"
#define RET_TTL_WARNING "KILN_RESULT_TTL differs from the store's"

typedef struct {
    h_stack *s;
    const char *id;
} ret_job;

static int ret_job_gone(void *arg)
{
    ret_job *j = arg;
    long status = 0;
    json_t *o = h_get_job(j->s, H_TOKEN_ALICE, j->id, &status);
    json_decref(o);
    return status == 404;
}

/* Whether <data_dir>/images/packs/<pack> exists. */
static int ret_pack_present(h_stack *s, const char *pack)
{
    char path[1600];
    struct stat sb;
    snprintf(path, sizeof path, "%s/images/packs/%s", s->data_dir, pack);
    return stat(path, &sb) == 0;
}

#define RET_MAX_PACKS 8

typedef struct {
    h_stack *s;
    char name[RET_MAX_PACKS][256];
    int n;
} ret_packs;

/* The packs under <data_dir>/images/packs (one per transfer thread that saved). */
static void ret_list_packs(h_stack *s, ret_packs *p)
{
    char dir[1400];
    p->s = s;
    p->n = 0;
    snprintf(dir, sizeof dir, "%s/images/packs", s->data_dir);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no packs directory %s", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && p->n < RET_MAX_PACKS)
        if (e->d_name[0] != '.') snprintf(p->name[p->n++], sizeof p->name[0], "%s", e->d_name);
    closedir(d);
    cr_assert(p->n > 0, "no pack in %s", dir);
}

static int ret_packs_gone(void *arg)
{
    ret_packs *p = arg;
    for (int i = 0; i < p->n; i++)
        if (ret_pack_present(p->s, p->name[i])) return 0;
    return 1;
}

static long ret_get_image(h_stack *s, const char *id)
{
    char url[512];
    h_resp r;
    snprintf(url, sizeof url, "%s/v1/jobs/%s/images/0", s->gw_url, id);
    long st = h_http(&r, "GET", url, H_TOKEN_ALICE, NULL, NULL, NULL);
    h_resp_free(&r);
    return st;
}

static long ret_post_keyed(h_stack *s, const char *body, const char *key, char *id_out)
{
    char url[256], hdr[256];
    h_resp r;
    snprintf(url, sizeof url, "%s/v1/jobs", s->gw_url);
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    long st = h_http(&r, "POST", url, H_TOKEN_ALICE, "application/json", body, hdr);
    snprintf(id_out, 65, "%s", r.json != NULL && h_jstr(r.json, "id") ? h_jstr(r.json, "id") : "");
    h_resp_free(&r);
    return st;
}

Test(retention, finished_jobs_and_their_images_go_after_the_ttl)
{
    h_stack_opts o = {.env = {RET_TTL, NULL}};
    h_stack s;
    h_start(&s, &o);
    const char *keyed_body = "{\"prompt\":\"a kept fox\"}";
    char plain[65], keyed[65], again[65], later[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a passing fox", plain), 202);
    cr_assert_eq(ret_post_keyed(&s, keyed_body, "order-42", keyed), 202);
    h_expect_job(&s, H_TOKEN_ALICE, plain, "completed", 1, 30000, "the plain job");
    h_expect_job(&s, H_TOKEN_ALICE, keyed, "completed", 1, 30000, "the keyed job");
    cr_assert_eq(ret_get_image(&s, plain), 200);
    ret_packs p;
    ret_list_packs(&s, &p);

    /* The record goes about 2 s after the job ended (the store's pass runs every second). */
    ret_job j = {&s, plain};
    cr_assert(h_wait_for(ret_job_gone, &j, 20000, 200),
              "the finished job is still answered 20 s after a 2 s TTL");
    cr_expect_eq(ret_get_image(&s, plain), 404);
    /* Its events outlive it in KILN_EVENTS (1 h); its event stream answers as its GET does. */
    char events[128];
    snprintf(events, sizeof events, "/v1/jobs/%s/events", plain);
    h_resp r;
    cr_expect_eq(h_api(&s, &r, "GET", events, H_TOKEN_ALICE, NULL), 404,
                 "the removed job's event stream still opens");
    h_resp_free(&r);
    json_t *list = h_list(&s, H_TOKEN_ALICE, "");
    json_t *data = json_object_get(list, "jobs");
    cr_assert(json_is_array(data), "no jobs array in the list");
    for (size_t i = 0; i < json_array_size(data); i++)
        cr_expect_str_neq(h_jstr(json_array_get(data, i), "id"), plain, "the list still has it");
    json_decref(list);
    cr_expect(h_wait_metric_above(&s, H_STORE, "kiln_store_jobs_expired_total", 0,
                                  5000));

    /* The keyed job stays: its key is honoured for KILN_IDEM_TTL (>= 24 h). */
    long status = 0;
    json_t *k = h_get_job(&s, H_TOKEN_ALICE, keyed, &status);
    cr_expect_eq(status, 200, "a job whose Idempotency-Key is honoured was removed");
    json_decref(k);
    cr_expect_eq(ret_post_keyed(&s, keyed_body, "order-42", again), 200);
    cr_expect_str_eq(again, keyed, "a replay of the key must name the same job");

    /* The packs go once their last write is ttl + margin (2 s + 2 s) old. */
    cr_assert(h_wait_for(ret_packs_gone, &p, 20000, 200),
              "a pack (of %d) is still there 20 s after a 2 s TTL", p.n);
    cr_expect(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_image_files_expired_total", 0,
                                  5000));

    /* The consumer left that pack before it looked old: the next image is
     * saved into a new one and served. */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a later fox", later), 202);
    h_expect_job(&s, H_TOKEN_ALICE, later, "completed", 1, 30000, "the later job");
    cr_expect_eq(ret_get_image(&s, later), 200, "the image after a removed pack is lost");
    cr_expect(h_wait_log(&s, H_CONSUMER, "KILN_RESULT_TTL matches the store's", 10000),
              "the consumer never compared its TTL with the store's");
    cr_expect(!h_log_contains(&s, H_CONSUMER, RET_TTL_WARNING),
              "the consumer warned although its TTL is the store's");
    h_stop(&s);
}

/* A consumer whose KILN_RESULT_TTL is not the store's says so: its images
 * would go before their records (or outlive them). */
Test(retention, a_consumer_ttl_unlike_the_stores_is_warned_about)
{
    h_stack_opts o = {.env = {RET_TTL, NULL}, .consumer_env = {"KILN_RESULT_TTL=1s"}};
    h_stack s;
    h_start(&s, &o);
    cr_assert(h_wait_log(&s, H_CONSUMER, RET_TTL_WARNING, 10000),
              "the consumer never warned that its TTL (1s) is not the store's (2s)");
    cr_expect(h_log_contains(&s, H_CONSUMER, "images go before their job records"),
              "the warning does not say the images go first");
    h_stop(&s);
}
