/* test_e2e.c - a job's whole life through the real stack: HTTP submit, GET,
 * image bytes, jobs.done event, jobs.status, listing, viewed, the CLI. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "imagepath.h"
#include "pb.h"
#include "subjects.h"

TestSuite(e2e, .fini = h_fini, .timeout = 120);

Test(e2e, submit_get_complete_image)
{
    h_stack s;
    h_start(&s, NULL);

    h_resp r;
    long st = h_api(&s, &r, "POST", "/v1/jobs", H_TOKEN_ALICE, "{\"prompt\":\"a red fox in snow\"}");
    cr_assert_eq(st, 202, "POST /v1/jobs: want 202, got %ld: %s %s", st, r.body, r.error);
    const char *id = h_jstr(r.json, "id");
    cr_assert(id != NULL && id[0] != '\0', "202 body has no id: %s", r.body);
    char jid[65];
    snprintf(jid, sizeof jid, "%s", id);
    cr_expect_str_eq(h_jstr(r.json, "status"), "pending");
    cr_expect(h_ts_ms(h_jstr(r.json, "created_at")) > 0, "created_at not RFC 3339 ms: %s", r.body);
    cr_expect(h_jint(r.json, "poll_after_ms") > 0, "poll_after_ms missing: %s", r.body);
    char ctype[128] = "", loc[256] = "";
    cr_expect(h_resp_header(&r, "Content-Type", ctype, sizeof ctype) &&
                  strncmp(ctype, "application/json", 16) == 0,
              "content type %s", ctype);
    cr_assert(h_resp_header(&r, "Location", loc, sizeof loc), "no Location header");
    char want_loc[128];
    snprintf(want_loc, sizeof want_loc, "/v1/jobs/%s", jid);
    size_t ll = strlen(loc), wl = strlen(want_loc);
    cr_expect(ll >= wl && strcmp(loc + ll - wl, want_loc) == 0, "Location %s, want %s", loc, want_loc);
    h_resp_free(&r);

    /* Right after the 202: never 404. */
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, jid, &gst);
    cr_assert_eq(gst, 200, "GET right after 202 answered %ld", gst);
    cr_expect_str_eq(h_jstr(j, "id"), jid);
    cr_expect_str_eq(h_jstr(j, "prompt"), "a red fox in snow");
    json_decref(j);

    j = h_wait_job(&s, H_TOKEN_ALICE, jid, "completed", 30000);
    cr_assert(j != NULL, "job vanished");
    char *dump = h_job_dump(j);
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "job: %s", dump);
    cr_expect_eq(h_jint(j, "attempts"), 1, "attempts: %s", dump);
    cr_expect(h_job_ms(j, "started_at") > 0, "started_at: %s", dump);
    cr_expect(h_job_ms(j, "completed_at") > 0, "completed_at: %s", dump);
    cr_expect(json_is_null(json_object_get(j, "error")), "error should be null: %s", dump);
    cr_expect(json_object_get(j, "poll_after_ms") == NULL, "poll_after_ms only while not terminal: %s", dump);
    json_t *images = json_object_get(j, "images");
    cr_assert(json_is_array(images) && json_array_size(images) == 1, "images: %s", dump);
    json_t *img = json_array_get(images, 0);
    cr_expect_eq(h_jint(img, "index"), 0);
    cr_expect_str_eq(h_jstr(img, "content_type"), "image/png");
    const char *url = h_jstr(img, "url");
    cr_assert(url != NULL && url[0] != '\0', "image url: %s", dump);
    char full[1024];
    if (url[0] == '/') snprintf(full, sizeof full, "%s%s", s.gw_url, url);
    else snprintf(full, sizeof full, "%s", url);

    st = h_http(&r, "GET", full, H_TOKEN_ALICE, NULL, NULL, NULL);
    cr_assert_eq(st, 200, "GET %s: %ld %s", full, st, r.error);
    cr_expect(h_resp_header(&r, "Content-Type", ctype, sizeof ctype) && strncmp(ctype, "image/png", 9) == 0,
              "image content type %s", ctype);
    cr_assert(r.body_len > 8 && memcmp(r.body, "\x89PNG\r\n\x1a\n", 8) == 0, "not a PNG (%zu bytes)", r.body_len);
    h_resp_free(&r);
    free(dump);
    json_decref(j);

    h_stop(&s);
}

Test(e2e, done_event_and_status_request)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a blue heron at dawn", id), 202);

    cr_assert(h_collect_wait(n.done, id, 1, 30000) >= 1, "no jobs.done for %s within 30 s", id);
    natsMsg *m = h_collect_msg(n.done, id, 0);
    /* jobs.done comes only after the terminal state is durable: query at once. */
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, &gst);
    cr_expect_eq(gst, 200);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "GET right after jobs.done is not terminal");
    json_decref(j);

    char v[128];
    cr_expect(h_msg_header(m, "Kiln-Job-Id", v, sizeof v) && strcmp(v, id) == 0, "Kiln-Job-Id");
    cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "completed") == 0,
              "Kiln-Status header: %s", v);
    cr_expect(h_msg_header(m, "Nats-Msg-Id", v, sizeof v) && v[0] != '\0', "Nats-Msg-Id header missing");
    Kiln__V1__JobStatus *js_st = h_msg_status(m);
    cr_assert(js_st != NULL, "jobs.done payload is not a JobStatus");
    cr_expect_str_eq(js_st->id, id);
    cr_expect_str_eq(js_st->user_id, "alice");
    cr_expect_eq(js_st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_eq(js_st->n_images, 1);
    cr_expect_eq(js_st->attempts, 1);
    cr_expect(js_st->completed_at_ms > 0 && js_st->started_at_ms > 0 && js_st->created_at_ms > 0);
    cr_expect_str_eq(js_st->prompt, "a blue heron at dawn");
    kiln__v1__job_status__free_unpacked(js_st, NULL);

    /* jobs.status for the known id. */
    char err[128];
    Kiln__V1__JobStatus *q = h_status_request(&n, id, err, sizeof err);
    cr_assert(q != NULL, "jobs.status for %s: %s", id, err);
    cr_expect_str_eq(q->id, id);
    cr_expect_eq(q->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(q->user_id, "alice");
    kiln__v1__job_status__free_unpacked(q, NULL);

    /* jobs.status for an unknown id: empty body, Kiln-Error: not_found. */
    q = h_status_request(&n, "no-such-job-42", err, sizeof err);
    cr_expect(q == NULL, "jobs.status answered a JobStatus for an unknown id");
    if (q != NULL) kiln__v1__job_status__free_unpacked(q, NULL);
    cr_expect_str_eq(err, "not_found", "unknown id: want Kiln-Error: not_found and an empty body, got: %s", err);

    /* Exactly one copy in the KILN_DONE stream. */
    h_expect_done_once(&n, id, "completed", 5000);
    h_nats_free(&n);
    h_stop(&s);
}

/* The ids of one listing page, appended to ids[]; returns next_cursor (malloc'ed) or NULL. */
static char *list_page(h_stack *s, const char *token, const char *query, char ids[][65], int *nids,
                       int cap)
{
    char path[512];
    snprintf(path, sizeof path, "/v1/jobs%s", query);
    h_resp r;
    long st = h_api(s, &r, "GET", path, token, NULL);
    cr_assert_eq(st, 200, "GET %s: %ld %s", path, st, r.body);
    json_t *jobs = json_object_get(r.json, "jobs");
    cr_assert(json_is_array(jobs), "no jobs array: %s", r.body);
    const char *prev_created = NULL;
    for (size_t i = 0; i < json_array_size(jobs); i++) {
        json_t *jb = json_array_get(jobs, i);
        const char *created = h_jstr(jb, "created_at");
        cr_expect(prev_created == NULL || created == NULL || strcmp(prev_created, created) >= 0,
                  "not newest first: %s then %s", prev_created, created);
        prev_created = created;
        if (*nids < cap) snprintf(ids[(*nids)++], 65, "%s", h_jstr(jb, "id"));
    }
    json_t *nc = json_object_get(r.json, "next_cursor");
    char *next = json_is_string(nc) ? strdup(json_string_value(nc)) : NULL;
    cr_expect(nc != NULL, "next_cursor must be present (string or null): %s", r.body);
    h_resp_free(&r);
    return next;
}

static int in_list(char ids[][65], int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0) return 1;
    return 0;
}

Test(e2e, list_paginate_filter_viewed)
{
    h_stack s;
    h_start(&s, NULL);
    enum { N = 7 };
    char ids[N][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"list fox %d\"}", N - 1, ids);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!fail=400 list bad", ids[N - 1]), 202);
    char bob_id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_BOB, "bob's fox", bob_id), 202);
    for (int i = 0; i < N; i++)
        h_expect_job(&s, H_TOKEN_ALICE, ids[i], i < N - 1 ? "completed" : "failed", -1, 30000, "list job");
    h_expect_job(&s, H_TOKEN_BOB, bob_id, "completed", -1, 30000, "bob's job");

    /* Pages of 3 cover every job once, newest first. */
    char seen[64][65];
    int nseen = 0, pages = 0;
    char *cursor = NULL;
    do {
        char q[512];
        if (cursor != NULL) snprintf(q, sizeof q, "?limit=3&cursor=%s", cursor);
        else snprintf(q, sizeof q, "?limit=3");
        free(cursor);
        int before = nseen;
        cursor = list_page(&s, H_TOKEN_ALICE, q, seen, &nseen, 64);
        cr_assert(nseen - before <= 3, "page larger than limit");
        pages++;
    } while (cursor != NULL && pages < 10);
    free(cursor);
    cr_expect_eq(nseen, N, "pagination returned %d jobs, want %d", nseen, N);
    for (int i = 0; i < nseen; i++)
        for (int k = i + 1; k < nseen; k++) cr_expect_str_neq(seen[i], seen[k], "duplicate in pages");
    for (int i = 0; i < N; i++) cr_expect(in_list(seen, nseen, ids[i]), "job %s missing from pages", ids[i]);
    cr_expect(!in_list(seen, nseen, bob_id), "bob's job in alice's list");
    /* Newest first: the last submitted job comes first. */
    if (nseen == N) cr_expect_str_eq(seen[0], ids[N - 1], "newest job is not first");

    /* Bad limits. */
    h_expect_api_error(&s, "GET", "/v1/jobs?limit=0", H_TOKEN_ALICE, NULL, 400, "invalid_argument", NULL);
    h_expect_api_error(&s, "GET", "/v1/jobs?limit=201", H_TOKEN_ALICE, NULL, 400, "invalid_argument", NULL);

    /* Status filter. */
    char f[16][65];
    int nf = 0;
    free(list_page(&s, H_TOKEN_ALICE, "?status=failed", f, &nf, 16));
    cr_expect_eq(nf, 1, "status=failed listed %d jobs", nf);
    if (nf == 1) cr_expect_str_eq(f[0], ids[N - 1]);
    nf = 0;
    free(list_page(&s, H_TOKEN_ALICE, "?status=completed", f, &nf, 16));
    cr_expect_eq(nf, N - 1, "status=completed listed %d jobs", nf);
    cr_expect(!in_list(f, nf, ids[N - 1]), "failed job in status=completed");

    /* Counters: a slow job is active; all others terminal and unviewed. */
    char slow[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=6000 slow list fox", slow), 202);
    /* A GET by id is guaranteed to see the job (CONTRACT §3); a list is not
     * required to be that fresh, so read the job first. */
    json_t *w = h_get_job(&s, H_TOKEN_ALICE, slow, NULL);
    cr_expect(w != NULL && !h_state_terminal(h_jstr(w, "status")), "slow job not active");
    json_decref(w);
    w = h_list(&s, H_TOKEN_ALICE, "");
    cr_expect_eq(h_jint(w, "active_count"), 1, "active_count with one slow job: %lld", h_jint(w, "active_count"));
    cr_expect_eq(h_jint(w, "unviewed_count"), N, "unviewed_count: %lld", h_jint(w, "unviewed_count"));
    json_decref(w);

    /* viewed */
    h_resp r;
    long st = h_job_post(&s, &r, H_TOKEN_ALICE, ids[0], "viewed");
    cr_expect_eq(st, 200, "POST viewed: %ld %s", st, r.body);
    cr_expect(json_is_true(json_object_get(r.json, "viewed")), "viewed not true: %s", r.body);
    h_resp_free(&r);
    st = h_job_post(&s, &r, H_TOKEN_ALICE, ids[0], "viewed"); /* idempotent */
    cr_expect_eq(st, 200);
    h_resp_free(&r);
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, ids[0], NULL);
    cr_expect(json_is_true(json_object_get(j, "viewed")), "GET after viewed: viewed not true");
    json_decref(j);
    w = h_list(&s, H_TOKEN_ALICE, "");
    cr_expect_eq(h_jint(w, "unviewed_count"), N - 1, "unviewed_count after viewed: %lld", h_jint(w, "unviewed_count"));
    json_decref(w);
    nf = 0;
    free(list_page(&s, H_TOKEN_ALICE, "?unviewed=true", f, &nf, 16));
    cr_expect(!in_list(f, nf, ids[0]), "viewed job listed with unviewed=true");
    cr_expect(in_list(f, nf, ids[1]), "unviewed job missing with unviewed=true");

    /* Bob's counters are his own. */
    w = h_list(&s, H_TOKEN_BOB, "");
    cr_expect_eq(json_array_size(json_object_get(w, "jobs")), 1);
    cr_expect_eq(h_jint(w, "active_count"), 0);
    cr_expect_eq(h_jint(w, "unviewed_count"), 1);
    json_decref(w);

    h_expect_job(&s, H_TOKEN_ALICE, slow, "completed", 1, 30000, "slow list job");
    w = h_list(&s, H_TOKEN_ALICE, "");
    cr_expect_eq(h_jint(w, "active_count"), 0, "active_count after the slow job finished: %lld", h_jint(w, "active_count"));
    cr_expect_eq(h_jint(w, "unviewed_count"), N, "unviewed_count after the slow job finished: %lld",
                 h_jint(w, "unviewed_count"));
    json_decref(w);

    h_stop(&s);
}

static int find_uuid(const char *s, char *out)
{
    /* A 36-char lower-case UUID-like token: 8-4-4-4-12 hex. */
    for (const char *p = s; p != NULL && *p != '\0'; p++) {
        int ok = 1;
        for (int i = 0; i < 36 && ok; i++) {
            char c = p[i];
            if (c == '\0') return 0;
            if (i == 8 || i == 13 || i == 18 || i == 23) ok = c == '-';
            else ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        }
        if (ok) {
            memcpy(out, p, 36);
            out[36] = '\0';
            return 1;
        }
    }
    return 0;
}

Test(e2e, cli_submit_wait_get)
{
    h_stack s;
    h_start(&s, NULL);
    char *out = NULL;
    char *argv1[] = {"kiln", "submit", "a cli fox", "--user", "alice", "--wait", NULL};
    int rc = h_run_cli(&s, argv1, &out, 60000);
    cr_expect_eq(rc, 0, "kiln submit --wait exited %d; stdout: %s", rc, out);
    char id[64];
    cr_assert(find_uuid(out, id), "kiln submit printed no job id: %s", out);
    free(out);

    char *argv2[] = {"kiln", "get", id, NULL};
    rc = h_run_cli(&s, argv2, &out, 30000);
    cr_expect_eq(rc, 0, "kiln get exited %d; stdout: %s", rc, out);
    cr_expect(strstr(out, "completed") != NULL, "kiln get does not say completed: %s", out);
    free(out);

    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "CLI job not visible to alice over HTTP");
    json_decref(j);

    char *argv3[] = {"kiln", "get", "no-such-job", NULL};
    rc = h_run_cli(&s, argv3, &out, 30000);
    cr_expect_neq(rc, 0, "kiln get of an unknown id should fail");
    free(out);
    h_stop(&s);
}

/* GETs image index of job id (alice's) into r; cr_asserts a 200 with a whole
 * PNG: the signature first, the IEND chunk last. */
static void get_png(h_stack *s, const char *id, int index, h_resp *r)
{
    char url[512];
    snprintf(url, sizeof url, "%s/v1/jobs/%s/images/%d", s->gw_url, id, index);
    long st = h_http(r, "GET", url, H_TOKEN_ALICE, NULL, NULL, NULL);
    cr_assert_eq(st, 200, "GET %s: %ld %s", url, st, r->error);
    static const char iend[] = "IEND\xae\x42\x60\x82";
    cr_assert(r->body_len > 20 && memcmp(r->body, "\x89PNG\r\n\x1a\n", 8) == 0 &&
                  memcmp(r->body + r->body_len - 8, iend, 8) == 0,
              "image %d of %s is not one whole PNG (%zu bytes)", index, id, r->body_len);
}

/* One consumer appends every image to one pack: each job's image is served
 * from its own range (another prompt gives another picture), whole. */
Test(e2e, images_from_a_pack_are_each_jobs_own)
{
    h_stack s;
    h_start(&s, NULL);
    const char *prompts[3] = {"a red fox", "a blue whale in a storm", "two cats"};
    char ids[3][65];
    for (int i = 0; i < 3; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"n\":2}", prompts[i]);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, ids[i]), 202);
    }
    h_resp r[3];
    for (int i = 0; i < 3; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, ids[i], "completed", 30000);
        cr_assert_str_eq(h_jstr(j, "status"), "completed");
        json_decref(j);
        get_png(&s, ids[i], 0, &r[i]);
        h_resp rb;
        get_png(&s, ids[i], 1, &rb);
        h_resp_free(&rb);
    }
    for (int i = 0; i < 3; i++)
        for (int k = i + 1; k < 3; k++)
            cr_expect(r[i].body_len != r[k].body_len ||
                          memcmp(r[i].body, r[k].body, r[i].body_len) != 0,
                      "jobs %d and %d were served the same image", i, k);
    for (int i = 0; i < 3; i++) h_resp_free(&r[i]);
    h_stop(&s);
}

/* A job completed before packs has no ImageBlob in its record: its image
 * is served from its own file (<data_dir>/images/<shard>/<id>.0.png). */
Test(e2e, an_image_saved_before_packs_is_still_served)
{
    h_stack_opts o = {.no_consumer = 1};
    h_stack s;
    h_start(&s, &o);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "an old fox", id), 202);

    static const unsigned char png[] = "\x89PNG\r\n\x1a\nold bytes of an old imageIEND\xae\x42\x60\x82";
    char dir[1400], path[1500];
    cr_assert_eq(kiln_image_dir(dir, sizeof dir, s.data_dir, id), KILN_OK);
    cr_assert_eq(kiln_image_path(path, sizeof path, s.data_dir, id, 0), KILN_OK);
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(png, 1, sizeof png - 1, f), sizeof png - 1);
    fclose(f);

    /* What an earlier consumer published: images, no blobs. */
    h_nats n;
    h_nats_open(&s, &n);
    uint8_t *buf = NULL;
    size_t len = 0;
    h_pack_completed(id, "an old fox", sizeof png - 1, &buf, &len);
    jsPubAck *pa = NULL;
    cr_assert_eq(js_Publish(&pa, n.js, KILN_SUBJ_TRANSITION, buf, (int)len, NULL, NULL), NATS_OK);
    jsPubAck_Destroy(pa);
    free(buf);

    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 30000);
    cr_assert_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);
    h_resp r;
    get_png(&s, id, 0, &r);
    cr_expect_eq(r.body_len, sizeof png - 1);
    cr_expect_eq(memcmp(r.body, png, sizeof png - 1), 0, "served other bytes than the file's");
    h_resp_free(&r);
    h_nats_free(&n);
    h_stop(&s);
}

/* Whether this machine can bind the IPv6 loopback (some containers cannot). */
static bool ipv6_loopback_works(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* KILN_HTTP_ADDR takes "[v6]:port"; the gateway listens there and takes
 * jobs (libmicrohttpd needs MHD_USE_IPv6 for it: without, it failed with
 * "Address family not supported by protocol"). */
Test(e2e, gateway_listens_on_an_ipv6_address)
{
    if (!ipv6_loopback_works()) cr_skip_test("no IPv6 loopback here");
    h_stack s;
    h_start(&s, NULL);
    char kv[64];
    snprintf(kv, sizeof kv, "KILN_HTTP_ADDR=[::1]:%d", s.gw_port);
    cr_assert_eq(h_proc_term(&s, H_GATEWAY), 0);
    cr_assert_eq(h_proc_setenv(&s, H_GATEWAY, kv), 0);
    cr_assert_eq(h_proc_start(&s, H_GATEWAY), 0);
    snprintf(s.gw_url, sizeof s.gw_url, "http://[::1]:%d", s.gw_port);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "the gateway did not come up on %s", s.gw_url);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "a fox over IPv6", id), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);
    h_stop(&s);
}

/* The store applies a consumer's TransitionBatch entry by entry: an entry it
 * cannot decode is skipped, the others are applied and announced once. */
Test(e2e, store_applies_each_transition_of_a_batch)
{
    h_stack_opts o = {.no_consumer = 1};
    h_stack s;
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char a[65], b[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "batch fox a", a), 202);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "batch fox b", b), 202);

    ProtobufCBinaryData tx[3];
    h_pack_completed(a, "batch fox a", 10, &tx[0].data, &tx[0].len);
    tx[1].data = (uint8_t *)strdup("\xff\xff not a transition");
    tx[1].len = strlen((char *)tx[1].data);
    h_pack_completed(b, "batch fox b", 10, &tx[2].data, &tx[2].len);
    Kiln__V1__TransitionBatch tb = KILN__V1__TRANSITION_BATCH__INIT;
    tb.n_transitions = 3;
    tb.transitions = tx;
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_pb_pack(&tb.base, &buf, &len), KILN_OK);
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, KILN_SUBJ_TRANSITION, NULL, (const char *)buf, (int)len), NATS_OK);
    cr_assert_eq(natsMsgHeader_Set(m, KILN_HDR_TX_BATCH, "3"), NATS_OK);
    jsPubAck *pa = NULL;
    cr_assert_eq(js_PublishMsg(&pa, n.js, m, NULL, NULL), NATS_OK);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    free(buf);
    for (int i = 0; i < 3; i++) free(tx[i].data);

    h_expect_job(&s, H_TOKEN_ALICE, a, "completed", 1, 10000, "first of the batch");
    h_expect_job(&s, H_TOKEN_ALICE, b, "completed", 1, 10000, "after the undecodable entry");
    h_expect_done_once(&n, a, "completed", 5000);
    h_expect_done_once(&n, b, "completed", 5000);
    h_nats_free(&n);
    h_stop(&s);
}
