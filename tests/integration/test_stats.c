/* test_stats.c - queue depths: `kiln stats` and the store's gauges count
 * the jobs waiting in each lane, the ones a worker holds, the store's lag
 * and the dead letters, as the jobs move. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness.h"

TestSuite(stats, .fini = h_fini, .timeout = 150);

/* What `kiln stats --json` reported: per lane (high, normal, low) waiting
 * and held, the store's waiting + held, and the dead letters. */
typedef struct {
    long long waiting[3], held[3], oldest_ms[3];
    long long store_unapplied;
    long long dead;
} st_figures;

static const char *const st_lanes[3] = {"high", "normal", "low"};

static void st_read(h_stack *s, st_figures *f) {
    json_t *o = h_kiln_stats(s);
    json_t *lanes = json_object_get(o, "lanes");
    for (int i = 0; i < 3; i++) {
        json_t *l = json_object_get(lanes, st_lanes[i]);
        cr_assert(json_is_object(l), "lane %s missing", st_lanes[i]);
        f->waiting[i] = h_jint(l, "waiting");
        f->held[i] = h_jint(l, "held");
        f->oldest_ms[i] = h_jint(l, "oldest_waiting_ms");
    }
    json_t *store = json_object_get(o, "store");
    cr_assert(json_is_object(store), "the store's durable is missing");
    f->store_unapplied = h_jint(store, "waiting") + h_jint(store, "held");
    f->dead = json_integer_value(json_object_get(o, "dead_letters"));
    json_decref(o);
}

typedef struct {
    h_stack *s;
    long long waiting[3], held[3]; /* -1: any */
    long long dead;                /* -1: any */
    st_figures last;
} st_want;

static int st_matches(void *arg) {
    st_want *w = arg;
    st_read(w->s, &w->last);
    for (int i = 0; i < 3; i++) {
        if (w->waiting[i] >= 0 && w->last.waiting[i] != w->waiting[i]) return 0;
        if (w->held[i] >= 0 && w->last.held[i] != w->held[i]) return 0;
    }
    if (w->dead >= 0 && w->last.dead != w->dead) return 0;
    return w->last.store_unapplied == 0; /* the store keeps up with a few jobs */
}

static void st_expect(h_stack *s, st_want *w, const char *what) {
    w->s = s;
    int ok = h_wait_for(st_matches, w, 20000, 100);
    cr_assert(ok,
              "%s: kiln stats shows waiting high/normal/low %lld/%lld/%lld, held %lld/%lld/%lld, "
              "store unapplied %lld, dead letters %lld",
              what, w->last.waiting[0], w->last.waiting[1], w->last.waiting[2], w->last.held[0],
              w->last.held[1], w->last.held[2], w->last.store_unapplied, w->last.dead);
}

typedef struct {
    h_stack *s;
    st_figures last;
} st_oldest;

/* Every lane's oldest waiting job has waited at least 500 ms. */
static int st_oldest_grown(void *arg) {
    st_oldest *o = arg;
    st_read(o->s, &o->last);
    for (int i = 0; i < 3; i++)
        if (o->last.oldest_ms[i] < 500) return 0;
    return 1;
}

static void st_expect_metric(h_stack *s, const char *name, double want) {
    cr_assert(h_wait_metric_eq(s, H_STORE, name, want, 10000),
              "the store's %s stayed at %g, not %g", name, h_metric(s, H_STORE, name), want);
}

Test(stats, queue_depths_follow_the_jobs) {
    h_stack s;
    /* No consumer at first: the jobs wait in their lanes. */
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_QUEUE_STATS_INTERVAL=200ms", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);

    char high[2][65], normal[3][65], low[1][65];
    json_t *none = h_kiln_stats(&s);
    json_t *cons = json_object_get(none, "consumers");
    cr_expect(json_is_array(cons) && json_array_size(cons) == 0,
              "no consumer runs, yet kiln stats lists %zu", json_array_size(cons));
    json_decref(none);
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"stats kite %d\",\"priority\":\"high\"}", 2,
                  high);
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"stats heron %d\"}", 3, normal);
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"stats vole %d\",\"priority\":\"low\"}", 1, low);
    st_want queued = {.waiting = {2, 3, 1}, .held = {0, 0, 0}, .dead = 0};
    st_expect(&s, &queued, "six jobs queued, no consumer");
    st_expect_metric(&s, "kiln_queue_waiting{lane=\"high\"}", 2);
    st_expect_metric(&s, "kiln_queue_waiting{lane=\"normal\"}", 3);
    st_expect_metric(&s, "kiln_queue_waiting{lane=\"low\"}", 1);
    /* The oldest waiting job's age grows while nothing takes it. */
    st_oldest oldest = {.s = &s};
    cr_assert(h_wait_for(st_oldest_grown, &oldest, 20000, 100),
              "oldest_waiting_ms high/normal/low %lld/%lld/%lld never all passed 500 ms",
              oldest.last.oldest_ms[0], oldest.last.oldest_ms[1], oldest.last.oldest_ms[2]);
    cr_assert(h_wait_metric_above(&s, H_STORE, "kiln_queue_oldest_waiting_ms{lane=\"normal\"}", 499,
                                  10000),
              "the store's oldest-waiting gauge never passed 500 ms");

    /* A consumer takes them; a slow one is held while it runs. */
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    for (int i = 0; i < 2; i++)
        h_expect_job(&s, H_TOKEN_ALICE, high[i], "completed", 1, 30000, "high");
    for (int i = 0; i < 3; i++)
        h_expect_job(&s, H_TOKEN_ALICE, normal[i], "completed", 1, 30000, "normal");
    h_expect_job(&s, H_TOKEN_ALICE, low[0], "completed", 1, 30000, "low");
    st_want drained = {.waiting = {0, 0, 0}, .held = {0, 0, 0}, .dead = 0};
    st_expect(&s, &drained, "every job completed");
    for (int i = 0; i < 3; i++)
        cr_expect_eq(drained.last.oldest_ms[i], 0, "lane %s: nothing waits, oldest_waiting_ms %lld",
                     st_lanes[i], drained.last.oldest_ms[i]);
    st_expect_metric(&s, "kiln_queue_oldest_waiting_ms{lane=\"normal\"}", 0);

    /* A delayed job was fetched and handed back to wait: held, not waiting. */
    char later[65];
    cr_assert_eq(
        h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"stats dormouse\",\"delay_ms\":4000}", later),
        202);
    st_want delayed = {.waiting = {0, 0, 0}, .held = {0, 1, 0}, .dead = 0};
    st_expect(&s, &delayed, "one delayed job");
    h_expect_job(&s, H_TOKEN_ALICE, later, "completed", 1, 30000, "the delayed job");
    st_expect(&s, &drained, "the delayed job completed");

    char slow[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=60000 stats sloth", slow), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, slow, "processing", 30000);
    cr_assert(j != NULL && strcmp(h_jstr(j, "status"), "processing") == 0,
              "the slow job never ran");
    json_decref(j);
    st_want running = {.waiting = {0, 0, 0}, .held = {0, 1, 0}, .dead = 0};
    st_expect(&s, &running, "one job running");
    st_expect_metric(&s, "kiln_queue_held{lane=\"normal\"}", 1);
    h_resp r;
    cr_assert_eq(h_job_post(&s, &r, H_TOKEN_ALICE, slow, "cancel"), 200);
    h_resp_free(&r);
    h_expect_job(&s, H_TOKEN_ALICE, slow, "cancelled", -1, 30000, "the slow job");

    /* Bytes that are no job become a dead letter. */
    static const char garbage[] = "\x0a\x50not a job";
    cr_assert_eq(h_js_publish(n.js, "jobs.generate", garbage, (int)sizeof garbage - 1, NULL), 0);
    st_want dead = {.waiting = {0, 0, 0}, .held = {0, 0, 0}, .dead = 1};
    st_expect(&s, &dead, "one dead letter");
    st_expect_metric(&s, "kiln_dead_letters", 1);
    st_expect_metric(&s, "kiln_queue_stats_errors_total", 0);

    h_nats_free(&n);
    h_stop(&s);
}

/* The one consumer of a stack as `kiln stats --json` lists it (caller json_decref's o). */
static json_t *st_consumer(h_stack *s, json_t **o) {
    *o = h_kiln_stats(s);
    json_t *list = json_object_get(*o, "consumers");
    cr_assert(json_is_array(list), "kiln stats --json without consumers");
    cr_assert_eq(json_array_size(list), 1, "one consumer runs, kiln stats lists %zu",
                 json_array_size(list));
    return json_array_get(list, 0);
}

Test(stats, running_consumers_answer_with_their_state) {
    h_stack s;
    const h_stack_opts opts = {
        .consumer_env = {"KILN_CONCURRENCY=7", "KILN_PROVIDER_RATE=50/s", NULL}};
    h_start(&s, &opts);
    char ids[3][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"stats wren %d\"}", 3, ids);
    for (int k = 0; k < 3; k++)
        h_expect_job(&s, H_TOKEN_ALICE, ids[k], "completed", 1, 30000, "job");

    /* A slot is free once the result's publish is acked, which can come
     * just after the store announced the job. */
    json_t *o = NULL, *c = NULL;
    int64_t t_idle = h_now_ms();
    for (;;) {
        c = st_consumer(&s, &o);
        if (h_jint(c, "in_flight") == 0 || h_now_ms() - t_idle > 5000) break;
        json_decref(o);
    }
    char *d = json_dumps(c, 0);
    cr_expect_eq(h_jint(c, "concurrency"), 7, "%s", d);
    cr_expect_eq(h_jint(c, "in_flight"), 0, "%s", d);
    cr_expect_eq(h_jint(c, "completed"), 3, "%s", d);
    cr_expect_str_eq(h_jstr(c, "provider"), "ok", "%s", d);
    cr_expect(json_real_value(json_object_get(c, "provider_rate_per_s")) == 50.0, "%s", d);
    cr_expect_eq(json_array_size(json_object_get(c, "paused_lanes")), 0, "%s", d);
    const char *id = h_jstr(c, "id");
    char pid[32];
    snprintf(pid, sizeof pid, ":%d:", (int)s.procs[H_CONSUMER].pid);
    cr_expect(id != NULL && strstr(id, pid) != NULL, "id %s names no pid %s", id, pid);
    free(d);
    json_decref(o);

    /* A paused lane shows in the consumer's own view. */
    char *out = NULL;
    char *argv[] = {"kiln", "pause", "low", NULL};
    cr_assert_eq(h_run_cli(&s, argv, &out, 30000), 0, "kiln pause low: %s", out);
    free(out);
    int64_t t0 = h_now_ms();
    int seen = 0;
    while (!seen && h_now_ms() - t0 < 5000) {
        c = st_consumer(&s, &o);
        json_t *p = json_object_get(c, "paused_lanes");
        seen =
            json_array_size(p) == 1 && strcmp(json_string_value(json_array_get(p, 0)), "low") == 0;
        json_decref(o);
    }
    cr_expect(seen, "the consumer did not report lane low paused within 5 s");

    /* The text form: one line per consumer and the count. */
    char *targv[] = {"kiln", "stats", NULL};
    cr_assert_eq(h_run_cli(&s, targv, &out, 30000), 0, "kiln stats: %s", out);
    cr_expect(strstr(out, "in_flight=0/7 provider=ok completed=3") != NULL, "%s", out);
    cr_expect(strstr(out, "paused_lanes=low") != NULL, "%s", out);
    cr_expect(strstr(out, "consumers=1\n") != NULL, "%s", out);
    free(out);
    h_stop(&s);
}
