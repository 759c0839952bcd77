/* test_nats.c - the NATS contract (CONTRACT §4) for services that skip the
 * gateway: raw JobRequests on jobs.generate, invalid input to jobs.dead. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "kiln.pb-c.h"
#include "kiln_client.h"

TestSuite(nats, .fini = h_fini, .timeout = 120);

Test(nats, raw_publish_is_tracked_and_announced)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *done = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&done, nc, "jobs.done"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    char id[65];
    h_unique_id(id, "raw");
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate", id, "alice", "a raw published fox"), 0);

    natsMsg *m = h_next_msg_for(done, id, 30000);
    cr_assert(m != NULL, "raw job %s never announced on jobs.done", id);
    char v[64];
    cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "completed") == 0,
              "Kiln-Status %s", v);
    Kiln__V1__JobStatus *st = kiln__v1__job_status__unpack(
        NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    cr_assert(st != NULL);
    cr_expect_str_eq(st->id, id);
    cr_expect_eq(st->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    kiln__v1__job_status__free_unpacked(st, NULL);
    natsMsg_Destroy(m);

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

    /* jobs.status */
    natsMsg *rep = NULL;
    cr_assert_eq(natsConnection_RequestString(&rep, nc, "jobs.status", id, 5000), NATS_OK);
    Kiln__V1__JobStatus *q = kiln__v1__job_status__unpack(
        NULL, (size_t)natsMsg_GetDataLength(rep), (const uint8_t *)natsMsg_GetData(rep));
    cr_assert(q != NULL, "jobs.status reply not a JobStatus");
    cr_expect_eq(q->state, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED);
    cr_expect_str_eq(q->user_id, "alice");
    kiln__v1__job_status__free_unpacked(q, NULL);
    natsMsg_Destroy(rep);

    /* Re-publishing the same id is de-duplicated: still one job, one done. */
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate", id, "alice", "a raw published fox"), 0);
    h_resp r;
    h_api(&s, &r, "GET", "/v1/jobs", H_TOKEN_ALICE, NULL);
    size_t count = 0;
    json_t *jobs = json_object_get(r.json, "jobs");
    for (size_t i = 0; i < json_array_size(jobs); i++)
        if (strcmp(h_jstr(json_array_get(jobs, i), "id"), id) == 0) count++;
    cr_expect_eq(count, 1, "job listed %zu times", count);
    h_resp_free(&r);
    cr_expect_eq(h_done_count(js, id, v, sizeof v), 1, "KILN_DONE copies of the raw job");

    natsSubscription_Destroy(done);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(nats, garbage_goes_to_dead_and_processing_goes_on)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *dead = NULL, *done = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&dead, nc, "jobs.dead"), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&done, nc, "jobs.done"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    /* Field 1 claims 80 bytes, only 8 follow: never a valid protobuf. */
    static const char garbage[] = "\x0a\x50garbage!";
    int glen = (int)sizeof garbage - 1;
    cr_assert_eq(h_js_publish(js, "jobs.generate", garbage, glen, NULL), 0);

    natsMsg *m = h_next_msg_for(dead, NULL, 30000);
    cr_assert(m != NULL, "garbage never reached jobs.dead");
    char v[256] = "";
    cr_expect(h_msg_header(m, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "jobs.dead without Kiln-Reason");
    cr_expect_eq(natsMsg_GetDataLength(m), glen, "jobs.dead payload length");
    cr_expect(natsMsg_GetDataLength(m) == glen && memcmp(natsMsg_GetData(m), garbage, (size_t)glen) == 0,
              "jobs.dead payload is not the original bytes");
    natsMsg_Destroy(m);

    /* Processing goes on. */
    char id[65];
    h_unique_id(id, "after-garbage");
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate", id, "alice", "fox after garbage"), 0);
    m = h_next_msg_for(done, id, 30000);
    cr_expect(m != NULL, "valid job after garbage did not complete");
    natsMsg_Destroy(m);
    char hid[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "http fox after garbage", hid), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, hid, "completed", 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed");
    json_decref(j);

    /* The garbage is not retried forever: no second copy on jobs.dead. */
    m = h_next_msg_for(dead, NULL, 3000); /* observation window, not a wait for success */
    cr_expect(m == NULL, "garbage reached jobs.dead twice");
    natsMsg_Destroy(m);

    natsSubscription_Destroy(dead);
    natsSubscription_Destroy(done);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(nats, missing_prompt_fails_and_goes_to_dead)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *dead = NULL, *done = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&dead, nc, "jobs.dead"), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&done, nc, "jobs.done"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    char id[65];
    h_unique_id(id, "noprompt");
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate", id, "alice", ""), 0);

    natsMsg *m = h_next_msg_for(dead, id, 30000);
    cr_assert(m != NULL, "job without prompt never reached jobs.dead with Kiln-Job-Id %s", id);
    char v[256] = "";
    cr_expect(h_msg_header(m, "Kiln-Reason", v, sizeof v) && v[0] != '\0', "no Kiln-Reason");
    natsMsg_Destroy(m);

    m = h_next_msg_for(done, id, 30000);
    cr_expect(m != NULL, "invalid job not announced on jobs.done");
    if (m != NULL) {
        cr_expect(h_msg_header(m, "Kiln-Status", v, sizeof v) && strcmp(v, "failed") == 0,
                  "Kiln-Status %s", v);
        natsMsg_Destroy(m);
    }
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "failed", 15000);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "job: %s", d);
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "invalid_argument", "job: %s", d);
    free(d);
    json_decref(j);

    natsSubscription_Destroy(dead);
    natsSubscription_Destroy(done);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(nats, priority_lanes_complete)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    char hi[65], lo[65];
    h_unique_id(hi, "hi");
    h_unique_id(lo, "lo");
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate.high", hi, "alice", "high lane fox"), 0);
    cr_assert_eq(h_publish_jobreq(js, "jobs.generate.low", lo, "alice", "low lane fox"), 0);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, hi, "completed", 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "high lane job");
    json_decref(j);
    j = h_wait_job(&s, H_TOKEN_ALICE, lo, "completed", 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "low lane job");
    json_decref(j);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(nats, client_library_submit_wait_get)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
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
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}
