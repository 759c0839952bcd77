/* test_nats.c - the NATS contract (CONTRACT §4) for services that skip the
 * gateway: raw JobRequests on the three lanes, invalid input to jobs.dead,
 * the C client library. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "kiln_client.h"

TestSuite(nats, .fini = h_fini, .timeout = 120);

Test(nats, raw_publish_is_tracked_and_announced)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    /* One job per lane: all three are consumed. */
    char id[65], hi[65], lo[65];
    h_unique_id(id, "raw");
    h_unique_id(hi, "hi");
    h_unique_id(lo, "lo");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "a raw published fox"), 0);
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate.high", hi, "alice", "high lane fox"), 0);
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate.low", lo, "alice", "low lane fox"), 0);

    cr_assert(h_collect_wait(n.done, id, 1, 30000) >= 1, "raw job %s never announced on jobs.done", id);
    natsMsg *m = h_collect_msg(n.done, id, 0);
    char v[64];
    cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "completed") == 0, "Kiln-Status %s", v);
    Kiln__V1__JobStatus *st = h_msg_status(m);
    cr_assert(st != NULL, "jobs.done payload is not a JobStatus");
    cr_expect_str_eq(st->id, id);
    cr_expect_eq(st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    kiln__v1__job_status__free_unpacked(st, NULL);
    h_expect_job(&s, H_TOKEN_ALICE, hi, "completed", 1, 30000, "high lane job");
    h_expect_job(&s, H_TOKEN_ALICE, lo, "completed", 1, 30000, "low lane job");

    /* Visible to its user over HTTP, hidden from others. */
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, &gst);
    cr_expect_eq(gst, 200, "raw job not visible to alice over HTTP");
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    cr_expect_str_eq(h_jstr(j, "prompt"), "a raw published fox");
    json_decref(j);
    j = h_get_job(&s, H_TOKEN_BOB, id, &gst);
    cr_expect_eq(gst, 404, "raw alice job visible to bob");
    json_decref(j);

    /* Queryable over jobs.status like a gateway job. */
    char err[128];
    Kiln__V1__JobStatus *q = h_status_request(&n, id, err, sizeof err);
    cr_assert(q != NULL, "jobs.status for a raw job: %s", err);
    cr_expect_eq(q->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(q->user_id, "alice");
    kiln__v1__job_status__free_unpacked(q, NULL);

    /* Re-publishing the same id after it finished is de-duplicated: still one
     * job, one jobs.done. */
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "a raw published fox"), 0);
    json_t *l = h_list(&s, H_TOKEN_ALICE, "");
    size_t count = 0;
    json_t *jobs = json_object_get(l, "jobs");
    for (size_t i = 0; i < json_array_size(jobs); i++)
        if (strcmp(h_jstr(json_array_get(jobs, i), "id"), id) == 0) count++;
    cr_expect_eq(count, 1, "job listed %zu times", count);
    json_decref(l);
    h_expect_done_once(&n, id, "completed", 5000);

    h_nats_free(&n);
    h_stop(&s);
}

Test(nats, invalid_input_goes_to_dead_and_processing_goes_on)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    /* Field 1 claims 80 bytes, only 8 follow: never a valid protobuf. */
    static const char garbage[] = "\x0a\x50garbage!";
    int glen = (int)sizeof garbage - 1;
    cr_assert_eq(h_js_publish(n.js, "jobs.generate", garbage, glen, NULL), 0);
    /* Valid id and user, no prompt: dead-lettered and failed. */
    char noprompt[65];
    h_unique_id(noprompt, "noprompt");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", noprompt, "alice", ""), 0);

    cr_assert(h_collect_wait(n.dead, noprompt, 1, 30000) >= 1,
                 "job without prompt never reached jobs.dead with Kiln-Job-Id %s", noprompt);
    char v[256] = "";
    cr_expect(h_msg_header(h_collect_msg(n.dead, noprompt, 0), "Kiln-Reason", v, sizeof v) && v[0] != '\0',
              "jobs.dead copy of the job without prompt has no Kiln-Reason");
    cr_assert(h_collect_wait(n.dead, NULL, 2, 30000) >= 2, "garbage never reached jobs.dead");
    natsMsg *gm = NULL;
    for (int k = 0; (gm = h_collect_msg(n.dead, NULL, k)) != NULL; k++)
        if (!h_msg_header(gm, "Kiln-Job-Id", v, sizeof v)) break;
    cr_assert(gm != NULL, "no jobs.dead message without Kiln-Job-Id (the garbage)");
    v[0] = '\0';
    cr_expect(h_msg_header(gm, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "jobs.dead without Kiln-Reason");
    cr_expect(natsMsg_GetDataLength(gm) == glen && memcmp(natsMsg_GetData(gm), garbage, (size_t)glen) == 0,
              "jobs.dead payload is not the original bytes (%d bytes)", natsMsg_GetDataLength(gm));

    /* The job without prompt is queryable and announced as failed. */
    cr_expect(h_collect_wait(n.done, noprompt, 1, 30000) >= 1, "invalid job not announced on jobs.done");
    natsMsg *m = h_collect_msg(n.done, noprompt, 0);
    cr_expect(m != NULL && h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "failed") == 0,
              "Kiln-Status %s", v);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, noprompt, "failed", 15000);
    char *d = h_job_dump(j);
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "job: %s", d);
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "invalid_argument", "job: %s", d);
    free(d);
    json_decref(j);

    /* Processing goes on, for NATS and HTTP jobs. */
    char id[65];
    h_unique_id(id, "after-garbage");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", id, "alice", "fox after garbage"), 0);
    cr_expect(h_collect_wait(n.done, id, 1, 30000) >= 1, "valid job after garbage did not complete");
    char hid[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "http fox after garbage", hid), 202);
    h_expect_job(&s, H_TOKEN_ALICE, hid, "completed", 1, 30000, "HTTP job after garbage");

    /* The garbage is not retried forever: no second copy on jobs.dead
     * (observation window, not a wait for success). */
    h_collect_wait(n.dead, NULL, 3, 3000);
    int garbage_copies = 0;
    for (int k = 0; (gm = h_collect_msg(n.dead, NULL, k)) != NULL; k++)
        garbage_copies += !h_msg_header(gm, "Kiln-Job-Id", v, sizeof v);
    cr_expect_eq(garbage_copies, 1, "garbage reached jobs.dead %d times", garbage_copies);

    h_nats_free(&n);
    h_stop(&s);
}

Test(nats, client_library_submit_wait_get)
{
    h_stack s;
    h_start(&s, NULL);
    kiln_client *c = NULL;
    cr_assert_eq(kiln_client_connect(s.nats_url, &c), KILN_OK);
    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    spec.user_id = "alice";
    spec.prompt = "a client library fox";
    char id[65], err[256] = "";
    cr_assert_eq(kiln_client_submit(c, &spec, id, sizeof id, err, sizeof err), KILN_OK, "submit: %s", err);
    Kiln__V1__JobStatus *st = NULL;
    cr_assert_eq(kiln_client_wait(c, id, 30000, &st), KILN_OK, "wait for %s", id);
    cr_expect_eq(st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(st->id, id);
    kiln__v1__job_status__free_unpacked(st, NULL);
    st = NULL;
    cr_expect_eq(kiln_client_get(c, id, &st), KILN_OK);
    if (st != NULL) kiln__v1__job_status__free_unpacked(st, NULL);
    st = NULL;
    cr_expect_eq(kiln_client_get(c, "no-such-job", &st), KILN_ENOTFOUND);
    /* Invalid input is refused before publishing, naming the field. */
    spec.prompt = "";
    char bad_id[65] = "";
    cr_expect_eq(kiln_client_submit(c, &spec, bad_id, sizeof bad_id, err, sizeof err), KILN_EINVAL);
    cr_expect(strstr(err, "prompt") != NULL, "error should name prompt: %s", err);
    kiln_client_destroy(c);
    long gst = 0;
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, &gst);
    cr_expect_eq(gst, 200, "client-submitted job not visible to alice over HTTP");
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);
    h_stop(&s);
}
