/* test_deadletters.c - `kiln dead`: dead letters on jobs.dead (stream
 * KILN_DEAD) are listed, a dead job is submitted again under a new id and
 * completes, a letter that is not a job is refused and can be dropped. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness.h"

TestSuite(dead, .fini = h_fini, .timeout = 150);

/* `kiln dead list --json`: the first letter whose job_id is job_id ("" = a
 * letter without a job), NULL when none; the caller json_decrefs it. */
static json_t *dead_letter_of(h_stack *s, const char *job_id)
{
    char *out = NULL;
    char *argv[] = {"kiln", "dead", "list", "--json", NULL};
    int rc = h_run_cli(s, argv, &out, 30000);
    cr_assert_eq(rc, 0, "kiln dead list exited %d: %s", rc, out);
    json_t *found = NULL;
    for (char *line = strtok(out, "\n"); line != NULL && found == NULL; line = strtok(NULL, "\n")) {
        json_t *o = json_loads(line, 0, NULL);
        cr_assert_not_null(o, "not a JSON line: %s", line);
        if (json_object_get(o, "seq") != NULL && strcmp(h_jstr(o, "job_id"), job_id) == 0) found = o;
        else json_decref(o);
    }
    free(out);
    return found;
}

/* The seq of dead_letter_of(s, job_id), 0 when none. */
static uint64_t dead_seq_of(h_stack *s, const char *job_id)
{
    json_t *o = dead_letter_of(s, job_id);
    if (o == NULL) return 0;
    uint64_t seq = (uint64_t)h_jint(o, "seq");
    cr_expect(h_jstr(o, "reason")[0] != '\0', "letter %llu has no reason", (unsigned long long)seq);
    json_decref(o);
    return seq;
}

static int dead_cli(h_stack *s, const char *sub, uint64_t seq, char **out)
{
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)seq);
    char *argv[] = {"kiln", "dead", (char *)sub, num, NULL};
    return h_run_cli(s, argv, out, 30000);
}

/* Publishes count messages that are no job to jobs.generate and waits
 * until jobs.dead has at least that many letters. */
static void dead_publish_garbage(h_nats *n, int count)
{
    static const char garbage[] = "\x0a\x50not a job";
    for (int i = 0; i < count; i++)
        cr_assert_eq(h_js_publish(n->js, "jobs.generate", garbage, (int)sizeof garbage - 1, NULL), 0);
    cr_assert(h_collect_wait(n->dead, NULL, count, 30000) >= count,
              "%d letters never reached jobs.dead", count);
}

Test(dead, a_dead_job_is_retried_under_a_new_id_and_completes)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    /* One attempt, and the dev provider fails this prompt's first attempt. */
    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE,
                          "{\"prompt\":\"!fail=500:1 a fox that died once\",\"max_attempts\":1}", id),
                 202);
    h_expect_job(&s, H_TOKEN_ALICE, id, "failed", 1, 30000, "the job with one attempt");
    cr_assert(h_collect_wait(n.dead, id, 1, 30000) >= 1, "job %s never reached jobs.dead", id);
    uint64_t seq = dead_seq_of(&s, id);
    cr_assert(seq > 0, "kiln dead list does not show job %s", id);

    char *out = NULL;
    int rc = dead_cli(&s, "retry", seq, &out);
    cr_assert_eq(rc, 0, "kiln dead retry exited %d: %s", rc, out);
    char again[65] = "";
    unsigned long long of = 0;
    cr_assert_eq(sscanf(out, "id=%64s retry_of=%llu", again, &of), 2, "output: %s", out);
    free(out);
    cr_expect_eq(of, seq);
    cr_assert_str_neq(again, id, "a retry is a new job");
    /* Same owner and request: alice sees it, and the prompt's second attempt succeeds. */
    h_expect_job(&s, H_TOKEN_ALICE, again, "completed", 1, 30000, "the retried job");
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, again, NULL);
    cr_expect_str_eq(h_jstr(j, "prompt"), "!fail=500:1 a fox that died once");
    json_decref(j);
    cr_expect_eq(dead_seq_of(&s, id), 0, "the retried letter is still listed");
    /* The failed job itself is history, unchanged. */
    h_expect_job(&s, H_TOKEN_ALICE, id, "failed", 1, 5000, "the original job");

    rc = dead_cli(&s, "retry", seq, &out);
    cr_expect_eq(rc, 1, "retrying a removed letter must say not found, exited %d: %s", rc, out);
    free(out);
    h_nats_free(&n);
    h_stop(&s);
}

Test(dead, a_letter_that_is_no_job_is_refused_and_dropped)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    dead_publish_garbage(&n, 1);
    uint64_t seq = dead_seq_of(&s, "");
    cr_assert(seq > 0, "kiln dead list does not show the garbage letter");

    char *out = NULL;
    int rc = dead_cli(&s, "retry", seq, &out);
    cr_expect_eq(rc, 2, "retrying bytes that are no job must be refused, exited %d: %s", rc, out);
    free(out);
    cr_expect_eq(dead_seq_of(&s, ""), seq, "a refused retry must keep the letter");

    rc = dead_cli(&s, "drop", seq, &out);
    cr_expect_eq(rc, 0, "kiln dead drop exited %d: %s", rc, out);
    cr_expect(strstr(out, "status=dropped") != NULL, "output: %s", out);
    free(out);
    cr_expect_eq(dead_seq_of(&s, ""), 0, "the dropped letter is still listed");
    rc = dead_cli(&s, "drop", seq, &out);
    cr_expect_eq(rc, 1, "dropping it again must say not found, exited %d: %s", rc, out);
    free(out);

    char *argv[] = {"kiln", "dead", "retry", "many", NULL};
    rc = h_run_cli(&s, argv, &out, 30000);
    cr_expect_eq(rc, 2, "a SEQ that is no number is a usage error, exited %d", rc);
    free(out);
    h_nats_free(&n);
    h_stop(&s);
}

/* `kiln dead --limit N` pages: N letters and next=SEQ, and --from SEQ
 * goes on from there. */
Test(dead, the_list_pages)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    dead_publish_garbage(&n, 3);

    char *out = NULL;
    char *page1[] = {"kiln", "dead", "--limit", "2", NULL};
    int rc = h_run_cli(&s, page1, &out, 30000);
    cr_assert_eq(rc, 0, "kiln dead --limit 2 exited %d: %s", rc, out);
    unsigned long long a = 0, b = 0, next = 0;
    cr_assert_eq(sscanf(out, "seq=%llu %*[^\n]\nseq=%llu %*[^\n]\nnext=%llu", &a, &b, &next), 3,
                 "want two letters and next=: %s", out);
    free(out);
    cr_expect(a < b && b < next, "seq %llu, %llu, next %llu", a, b, next);

    char from[32];
    snprintf(from, sizeof from, "%llu", next);
    char *page2[] = {"kiln", "dead", "list", "--from", from, "--limit", "2", NULL};
    rc = h_run_cli(&s, page2, &out, 30000);
    cr_assert_eq(rc, 0, "kiln dead --from exited %d: %s", rc, out);
    unsigned long long c = 0;
    cr_expect_eq(sscanf(out, "seq=%llu", &c), 1, "want the third letter: %s", out);
    cr_expect_eq(c, next);
    cr_expect(strstr(out, "next=") == NULL, "the last page has no next=: %s", out);
    free(out);

    /* --json: one object per letter, then {"next": SEQ} while more remain. */
    char *json1[] = {"kiln", "dead", "--limit", "2", "--json", NULL};
    rc = h_run_cli(&s, json1, &out, 30000);
    cr_assert_eq(rc, 0, "kiln dead --limit 2 --json exited %d: %s", rc, out);
    int lines = 0;
    long long json_next = 0;
    for (char *line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n"), lines++) {
        json_t *o = json_loads(line, 0, NULL);
        cr_assert_not_null(o, "not a JSON line: %s", line);
        if (json_object_get(o, "next") != NULL) json_next = h_jint(o, "next");
        json_decref(o);
    }
    free(out);
    cr_expect_eq(lines, 3, "want two letters and a next object");
    cr_expect_eq(json_next, (long long)next, "--json next %lld, text next %llu", json_next, next);
    h_nats_free(&n);
    h_stop(&s);
}

/* `kiln dead retry --all` (after a provider outage): every dead job runs
 * again and completes; a letter that is no job is reported and kept. */
Test(dead, retry_all_resubmits_every_dead_job)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char ids[2][65];
    h_submit_each(&s, H_TOKEN_ALICE,
                  "{\"prompt\":\"!fail=500:1 an outage victim %d\",\"max_attempts\":1}", 2, ids);
    for (int i = 0; i < 2; i++) {
        h_expect_job(&s, H_TOKEN_ALICE, ids[i], "failed", 1, 30000, "a job with one attempt");
        cr_assert(h_collect_wait(n.dead, ids[i], 1, 30000) >= 1, "job %s never reached jobs.dead",
                  ids[i]);
    }
    dead_publish_garbage(&n, 1);

    char *out = NULL;
    char *argv[] = {"kiln", "dead", "retry", "--all", NULL};
    int rc = h_run_cli(&s, argv, &out, 60000);
    cr_assert_eq(rc, 0, "kiln dead retry --all exited %d: %s", rc, out);
    cr_expect(strstr(out, "retried=2 skipped=1") != NULL, "want two retried, one skipped: %s", out);
    char again[2][65];
    int found = 0;
    for (char *line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        unsigned long long of = 0;
        if (found < 2 && sscanf(line, "id=%64s retry_of=%llu", again[found], &of) == 2) found++;
    }
    free(out);
    cr_assert_eq(found, 2, "want two id= lines");
    for (int i = 0; i < 2; i++)
        h_expect_job(&s, H_TOKEN_ALICE, again[i], "completed", 1, 30000, "a retried job");
    cr_expect(dead_seq_of(&s, "") > 0, "the letter that is no job was not kept");
    cr_expect_eq(dead_seq_of(&s, ids[0]) + dead_seq_of(&s, ids[1]), 0,
                 "a retried letter is still listed");

    char *usage[] = {"kiln", "dead", "retry", "--all", "7", NULL};
    rc = h_run_cli(&s, usage, &out, 30000);
    cr_expect_eq(rc, 2, "--all with a SEQ is a usage error, exited %d: %s", rc, out);
    free(out);
    h_nats_free(&n);
    h_stop(&s);
}

/* A job another service publishes straight to jobs.generate.high without
 * setting its priority field runs on the high lane: its record says
 * "high", and so does its dead letter's retry, which goes back to that lane
 * (the letter's Kiln-Lane header), not to the lane the field names. */
Test(dead, a_job_keeps_the_lane_it_was_published_on_in_its_record_and_its_retry)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    h_unique_id(id, "lane-born");
    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    req.id = id;
    req.user_id = "alice";
    req.prompt = "!fail=500:1 a lane-born lynx";
    req.max_attempts = 1; /* priority left at its default, normal */
    cr_assert_eq(h_publish_request(n.js, "jobs.generate.high", &req, 0, NULL), 0);
    h_expect_job(&s, H_TOKEN_ALICE, id, "failed", 1, 30000, "the job published on the high lane");
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_str_eq(h_jstr(j, "priority"), "high", "the record names another lane than the job's");
    json_decref(j);

    cr_assert(h_collect_wait(n.dead, id, 1, 30000) >= 1, "job %s never reached jobs.dead", id);
    json_t *letter = dead_letter_of(&s, id);
    cr_assert_not_null(letter, "kiln dead list does not show job %s", id);
    uint64_t seq = (uint64_t)h_jint(letter, "seq");
    cr_expect_str_eq(h_jstr(letter, "lane"), "high", "the letter names another lane than the job's");
    json_decref(letter);
    char *out = NULL;
    int rc = dead_cli(&s, "retry", seq, &out);
    cr_assert_eq(rc, 0, "kiln dead retry exited %d: %s", rc, out);
    char again[65] = "";
    cr_assert_eq(sscanf(out, "id=%64s", again), 1, "output: %s", out);
    free(out);
    h_expect_job(&s, H_TOKEN_ALICE, again, "completed", 1, 30000, "the retried job");
    j = h_get_job(&s, H_TOKEN_ALICE, again, NULL);
    cr_expect_str_eq(h_jstr(j, "priority"), "high", "the retry left the job's lane");
    json_decref(j);
    h_nats_free(&n);
    h_stop(&s);
}
