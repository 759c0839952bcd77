/* test_consumer_gate.c - unit tests for consumer/gate.c: a 429 pauses new
 * provider calls for its Retry-After, the steady rate, the breaker that trips
 * after calls in a row find the provider down and probes it one call at a
 * time, and which call outcomes count as what. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "../../consumer/cons.h"

#define MS 1000LL /* the gate's times are microseconds */
#define T0 (1000000LL * MS)

static cons_gate g;

static void gate_setup(double rate, double burst, int trip_after, int64_t cap_ms) {
    cons_gate_config cfg = {
        .rate_per_s = rate, .burst = burst, .trip_after = trip_after, .cap_ms = cap_ms};
    cons_gate_init(&g, &cfg, T0);
}

static int64_t allowed(int64_t at_us, int64_t *wait_ms) {
    int64_t w = 0;
    int64_t n = cons_gate_allowance(&g, at_us, &w, NULL);
    if (wait_ms != NULL) *wait_ms = w;
    return n;
}

/* Starts one call at at_us, asserting the gate lets it; its probe trip (0: not a probe). */
static uint64_t start(int64_t at_us) {
    uint64_t trip = 0;
    int64_t w = 0;
    cr_assert(cons_gate_try_start(&g, at_us, &trip, &w), "the gate refused a call (wait %lld ms)",
              (long long)w);
    return trip;
}

static cons_gate_change learn(cons_call_outcome o, int64_t retry_after_ms, int64_t at_us,
                              int64_t *pause_ms) {
    int64_t p = 0;
    cons_gate_change c = cons_gate_learn(&g, o, retry_after_ms, at_us, &p);
    if (pause_ms != NULL) *pause_ms = p;
    return c;
}

/* A breaker tripped at T0 by one unavailable call (trip_after 1) whose 1 s
 * cool-down is over: returns that time, when one probe may start. */
static int64_t gate_tripped_and_cooled(void) {
    gate_setup(0, 0, 1, 60000);
    learn(CONS_CALL_UNAVAILABLE, 0, T0, NULL);
    return T0 + 1000 * MS;
}

Test(gate, open_and_unlimited_by_default) {
    gate_setup(0, 0, 5, 60000);
    cr_assert_eq(allowed(T0, NULL), INT64_MAX);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(start(T0), 0, "not a probe");
    cr_assert_eq(learn(CONS_CALL_OK, 0, T0, NULL), CONS_GATE_SAME);
    cr_assert_eq(allowed(T0, NULL), INT64_MAX);
    cr_assert_not(cons_gate_closed(&g, T0));
    cons_gate_destroy(&g);
}

Test(gate, a_429_pauses_new_calls_for_its_retry_after) {
    gate_setup(0, 0, 5, 60000);
    int64_t pause = 0, wait = 0;
    cr_assert_eq(learn(CONS_CALL_RATE_LIMITED, 2000, T0, &pause), CONS_GATE_RATE_PAUSE);
    cr_assert_eq(pause, 2000);
    cr_assert(cons_gate_closed(&g, T0));
    cr_assert_eq(allowed(T0, &wait), 0);
    cr_assert_eq(wait, 2000);
    cr_assert_eq(allowed(T0 + 1500 * MS, &wait), 0);
    cr_assert_eq(wait, 500);
    /* Another 429 of the same burst: no second pause, but the later end counts. */
    cr_assert_eq(learn(CONS_CALL_RATE_LIMITED, 1000, T0 + 1500 * MS, NULL), CONS_GATE_SAME);
    cr_assert_eq(allowed(T0 + 2000 * MS, &wait), 0, "the later Retry-After holds");
    cr_assert_eq(allowed(T0 + 2500 * MS, NULL), INT64_MAX);
    cr_assert_not(cons_gate_closed(&g, T0 + 2500 * MS));
    /* A 429 after the pause ended is a new pause. */
    cr_assert_eq(learn(CONS_CALL_RATE_LIMITED, 0, T0 + 3000 * MS, &pause), CONS_GATE_RATE_PAUSE);
    cr_assert_eq(pause, 1000, "no Retry-After: 1 s");
    cons_gate_destroy(&g);
}

Test(gate, a_long_retry_after_is_capped) {
    gate_setup(0, 0, 5, 60000);
    int64_t pause = 0;
    cr_assert_eq(learn(CONS_CALL_RATE_LIMITED, 3600 * 1000, T0, &pause), CONS_GATE_RATE_PAUSE);
    cr_assert_eq(pause, 60000);
    cr_assert_eq(allowed(T0 + 60000 * MS, NULL), INT64_MAX);
    cons_gate_destroy(&g);
}

Test(gate, the_rate_spaces_calls) {
    gate_setup(2.0, 1, 5, 60000);
    int64_t wait = 0;
    cr_assert_eq(allowed(T0, NULL), 1);
    start(T0);
    cr_assert_eq(allowed(T0, &wait), 0);
    cr_assert_eq(wait, 500);
    cr_assert_not(cons_gate_closed(&g, T0), "waiting for a token is not a pause");
    cr_assert_eq(allowed(T0 + 499 * MS, NULL), 0);
    cr_assert_eq(allowed(T0 + 500 * MS, NULL), 1);
    /* Idle for long: still only the burst at once. */
    cr_assert_eq(allowed(T0 + 60000 * MS, NULL), 1);
    cons_gate_destroy(&g);

    gate_setup(10.0, 5, 5, 60000);
    cr_assert_eq(allowed(T0, NULL), 5);
    for (int i = 0; i < 5; i++)
        start(T0);
    cr_assert_eq(allowed(T0, NULL), 0);
    cr_assert_eq(allowed(T0 + 300 * MS, NULL), 3);
    cons_gate_destroy(&g);
}

Test(gate, the_breaker_trips_after_calls_in_a_row_and_probes) {
    gate_setup(0, 0, 3, 60000);
    int64_t pause = 0, wait = 0, t = T0;
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, NULL), CONS_GATE_SAME);
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, NULL), CONS_GATE_SAME);
    cr_assert_eq(learn(CONS_CALL_ANSWERED, 0, t, NULL), CONS_GATE_SAME, "a 500 is an answer");
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, NULL), CONS_GATE_SAME);
    cr_assert_eq(learn(CONS_CALL_OTHER, 0, t, NULL), CONS_GATE_SAME, "a timeout breaks no run");
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, NULL), CONS_GATE_SAME);
    cr_assert_eq(allowed(t, NULL), INT64_MAX);
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_TRIPPED);
    cr_assert_eq(pause, 1000);
    cr_assert(cons_gate_closed(&g, t));
    cr_assert_eq(allowed(t, &wait), 0);
    cr_assert_eq(wait, 1000);
    /* Calls that started before the trip end while it cools down: old news. */
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t + 10 * MS, NULL), CONS_GATE_SAME);
    cr_assert_eq(allowed(t + 999 * MS, NULL), 0);

    /* After the cool-down, one call at a time. */
    t += 1000 * MS;
    cr_assert_eq(allowed(t, NULL), 1);
    uint64_t probe = start(t);
    cr_assert_neq(probe, 0, "a call while tripped is a probe");
    cr_assert_eq(allowed(t, &wait), 0, "one probe at a time");
    cr_assert_eq(wait, 50);
    uint64_t none = 0;
    cr_assert_not(cons_gate_try_start(&g, t, &none, &wait), "a second probe may not start");
    cr_assert(cons_gate_closed(&g, t), "tripped counts as closed");
    /* The probe fails: a longer pause. */
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_PROBE_FAILED);
    cr_assert_eq(pause, 2000);
    cons_gate_probe_over(&g, probe);
    cr_assert_eq(allowed(t + 1999 * MS, NULL), 0);
    t += 2000 * MS;
    cr_assert_eq(allowed(t, NULL), 1);
    probe = start(t);
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_PROBE_FAILED);
    cr_assert_eq(pause, 4000, "doubling");
    cons_gate_probe_over(&g, probe);
    t += 4000 * MS;
    probe = start(t);
    cr_assert_neq(probe, 0);
    /* Answered: calls go out freely again, and the next trip starts at 1 s. */
    cr_assert_eq(learn(CONS_CALL_OK, 0, t, NULL), CONS_GATE_RECOVERED);
    cons_gate_probe_over(&g, probe);
    cr_assert_eq(allowed(t, NULL), INT64_MAX);
    cr_assert_not(cons_gate_closed(&g, t));
    for (int i = 0; i < 2; i++)
        learn(CONS_CALL_UNAVAILABLE, 0, t, NULL);
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_TRIPPED);
    cr_assert_eq(pause, 1000);
    cons_gate_destroy(&g);
}

Test(gate, the_cool_down_stops_at_the_cap) {
    gate_setup(0, 0, 1, 3000);
    int64_t pause = 0, t = T0;
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_TRIPPED);
    int64_t seen[4];
    for (int i = 0; i < 4; i++) {
        t += pause * MS;
        uint64_t probe = start(t);
        cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, &pause), CONS_GATE_PROBE_FAILED);
        cons_gate_probe_over(&g, probe);
        seen[i] = pause;
    }
    cr_assert_eq(seen[0], 2000);
    cr_assert_eq(seen[1], 3000);
    cr_assert_eq(seen[3], 3000);
    cons_gate_destroy(&g);
}

Test(gate, a_cancelled_probe_frees_the_way) {
    int64_t t = gate_tripped_and_cooled();
    uint64_t probe = start(t);
    cr_assert_eq(allowed(t, NULL), 0);
    cons_gate_probe_over(&g, probe); /* ended without an outcome (cancelled) */
    cr_assert_eq(allowed(t, NULL), 1);
    cons_gate_destroy(&g);
}

Test(gate, a_probe_of_an_earlier_trip_holds_nothing) {
    int64_t t = gate_tripped_and_cooled();
    uint64_t old_probe = start(t);
    /* Another call's answer closes the breaker while that probe still runs. */
    cr_assert_eq(learn(CONS_CALL_OK, 0, t, NULL), CONS_GATE_RECOVERED);
    cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, t, NULL), CONS_GATE_TRIPPED);
    t += 1000 * MS;
    cr_assert_eq(allowed(t, NULL), 1, "the old probe does not count against the new trip");
    uint64_t probe = start(t);
    cr_assert_neq(probe, old_probe);
    cons_gate_probe_over(&g, old_probe);
    cr_assert_eq(allowed(t, NULL), 0, "the old probe's end frees nothing of the new trip");
    cons_gate_probe_over(&g, probe);
    cr_assert_eq(allowed(t, NULL), 1);
    cons_gate_destroy(&g);
}

Test(gate, a_call_fetched_before_a_429_does_not_start) {
    gate_setup(0, 0, 5, 60000);
    cr_assert_eq(allowed(T0, NULL), INT64_MAX, "the batch was fetched while open");
    learn(CONS_CALL_RATE_LIMITED, 1000, T0 + 1 * MS, NULL);
    uint64_t probe = 0;
    int64_t wait = 0;
    cr_assert_not(cons_gate_try_start(&g, T0 + 2 * MS, &probe, &wait));
    cr_assert_eq(wait, 999, "handed back until the pause ends");
    cr_assert(cons_gate_try_start(&g, T0 + 1001 * MS, &probe, &wait));
    cr_assert_eq(probe, 0);
    cons_gate_destroy(&g);
}

Test(gate, a_429_while_tripped_is_an_answer) {
    int64_t pause = 0, t = gate_tripped_and_cooled();
    uint64_t probe = start(t);
    cr_assert_eq(learn(CONS_CALL_RATE_LIMITED, 3000, t, &pause), CONS_GATE_RECOVERED);
    cr_assert_eq(pause, 3000, "and its Retry-After still pauses");
    cr_assert_eq(allowed(t + 2999 * MS, NULL), 0);
    cons_gate_probe_over(&g, probe);
    cr_assert_eq(allowed(t + 3000 * MS, NULL), INT64_MAX);
    cons_gate_destroy(&g);
}

Test(gate, no_breaker_when_off) {
    gate_setup(0, 0, 0, 60000);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(learn(CONS_CALL_UNAVAILABLE, 0, T0, NULL), CONS_GATE_SAME);
    cr_assert_eq(allowed(T0, NULL), INT64_MAX);
    cons_gate_destroy(&g);
}

Test(gate, outcomes) {
    cr_assert_eq(cons_gate_outcome(OPENAI_OK, "", "", 200), CONS_CALL_OK);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "rate_limited", "", 429), CONS_CALL_RATE_LIMITED);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "rate_limited", "insufficient_quota", 429),
                 CONS_CALL_NO_CREDIT);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "rate_limited", "rate_limit_exceeded", 429),
                 CONS_CALL_RATE_LIMITED);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "provider_unavailable", "", 503),
                 CONS_CALL_UNAVAILABLE);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "provider_unavailable", "", 0),
                 CONS_CALL_UNAVAILABLE, "connection refused");
    cr_assert_eq(cons_gate_outcome(OPENAI_FATAL, "provider_rejected", "", 400), CONS_CALL_ANSWERED);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "provider_error", "", 500), CONS_CALL_ANSWERED);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "timeout", "", 0), CONS_CALL_OTHER);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "timeout", "", 408), CONS_CALL_OTHER);
    cr_assert_eq(cons_gate_outcome(OPENAI_RETRY, "provider_error", "", 0), CONS_CALL_OTHER);
}

Test(gate, the_rate_is_shared_by_concurrency) {
    cr_assert(cons_status_rate_share(4.0, 16, 16) == 4.0, "alone: the whole rate");
    cr_assert(cons_status_rate_share(4.0, 16, 32) == 2.0);
    cr_assert(cons_status_rate_share(6.0, 10, 30) == 2.0, "by concurrency, not by head count");
    cr_assert(cons_status_rate_share(4.0, 16, 0) == 4.0, "nobody counted: the whole rate");
    cr_assert(cons_status_rate_share(0.0, 16, 32) == 0.0, "no limit stays no limit");
}

Test(gate, a_new_rate_applies_from_then_on) {
    gate_setup(10.0, 1, 5, 60000);
    int64_t wait = 0;
    start(T0);
    cr_assert_eq(allowed(T0 + 100 * MS, NULL), 1, "10/s: a token after 100 ms");
    start(T0 + 100 * MS);
    cons_gate_set_rate(&g, 2.0, T0 + 100 * MS);
    cr_assert_eq(allowed(T0 + 200 * MS, &wait), 0, "2/s: none after another 100 ms");
    cr_assert_eq(wait, 400);
    cr_assert_eq(allowed(T0 + 600 * MS, NULL), 1);
    cons_gate_destroy(&g);
}

Test(gate, out_of_credit_trips_the_breaker_or_pauses_without_one) {
    int64_t pause = 0;
    gate_setup(0, 0, 2, 60000);
    cr_assert_eq(learn(CONS_CALL_NO_CREDIT, 0, T0, &pause), CONS_GATE_SAME, "counts toward it");
    cr_assert_eq(allowed(T0, NULL), INT64_MAX, "no 429 pause for it");
    cr_assert_eq(learn(CONS_CALL_NO_CREDIT, 0, T0, &pause), CONS_GATE_TRIPPED);
    cons_gate_destroy(&g);

    gate_setup(0, 0, 0, 60000);
    cr_assert_eq(learn(CONS_CALL_NO_CREDIT, 0, T0, &pause), CONS_GATE_RATE_PAUSE,
                 "breaker off: at least the 429's pause");
    cr_assert_eq(pause, 1000);
    cons_gate_destroy(&g);
}

/* Another consumer's 429 closes the gate for its Retry-After (capped), as
 * one of this process's own would; its breaker holds new calls back until
 * its OUTAGE_OVER, at most twice the cap (then it probes itself); a process
 * without a breaker goes on. */
Test(gate, a_peers_429_pauses_new_calls_for_its_retry_after) {
    gate_setup(0, 0, 5, 10000);
    int64_t w = 0;
    cr_assert(cons_gate_hear(&g, CONS_NEWS_RATE_LIMITED, 3000, T0), "the gate did not close");
    cr_assert_eq(allowed(T0, &w), 0);
    cr_expect_eq(w, 3000);
    cr_assert_eq(allowed(T0 + 2999 * MS, NULL), 0);
    cr_assert_eq(allowed(T0 + 3000 * MS, NULL), INT64_MAX);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_RATE_LIMITED, 0, T0 + 5000 * MS));
    cr_expect_eq(allowed(T0 + 5999 * MS, NULL), 0, "a 429 without Retry-After pauses 1 s");
    cr_expect_eq(allowed(T0 + 6000 * MS, NULL), INT64_MAX);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_RATE_LIMITED, 3600000, T0 + 7000 * MS));
    cr_expect_eq(allowed(T0 + 16999 * MS, NULL), 0);
    cr_expect_eq(allowed(T0 + 17000 * MS, NULL), INT64_MAX, "a peer's long Retry-After is capped");
}

Test(gate, a_peers_outage_holds_new_calls_until_it_is_over) {
    gate_setup(0, 0, 5, 10000);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0), "the gate did not close");
    cr_assert(cons_gate_closed(&g, T0 + 5000 * MS), "a peer's outage held for its cool-down only");
    int64_t w = 0;
    cr_assert_eq(allowed(T0 + 5000 * MS, &w), 0);
    /* Its end may be told any moment: a job handed back returns soon. */
    cr_expect(w > 0 && w <= 1000, "a peer's outage names a wait of %lld ms", (long long)w);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE_OVER, 0, T0 + 6000 * MS), "the gate did not open");
    cr_assert_eq(allowed(T0 + 6000 * MS, NULL), INT64_MAX);
    cr_assert_eq(start(T0 + 6000 * MS), 0, "a call after a peer's outage is not a probe");
    /* Without news of its end, at most twice the cap. */
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0 + 7000 * MS));
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 2000, T0 + 9000 * MS), "held already: no change");
    cr_expect(cons_gate_closed(&g, T0 + 28999 * MS), "a later failed probe did not extend the hold");
    /* A hold that runs out without word (its teller may be gone) hands the
     * probing over: one call at a time. */
    cr_expect_eq(allowed(T0 + 29000 * MS, NULL), 1, "past twice the cap, not one probe");
    cr_expect(cons_gate_hold_lapsed(&g), "the lapse was not told");
    cr_expect_not(cons_gate_hold_lapsed(&g), "the lapse was told twice");
    cr_expect_neq(start(T0 + 29000 * MS), 0, "the call after a hold ran out is not a probe");
    /* The end of a peer's outage does not end this process's own 429 pause. */
    gate_setup(0, 0, 5, 10000);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0 + 19000 * MS));
    learn(CONS_CALL_RATE_LIMITED, 4000, T0 + 20000 * MS, NULL);
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0 + 20000 * MS));
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_OUTAGE_OVER, 0, T0 + 21000 * MS));
    cr_expect(cons_gate_closed(&g, T0 + 23999 * MS), "a peer's outage's end cut an own 429 short");
    cr_expect_not(cons_gate_closed(&g, T0 + 24000 * MS));
}

Test(gate, a_peers_outage_does_not_hold_a_process_without_a_breaker) {
    gate_setup(0, 0, 0, 10000);
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0));
    cr_expect_eq(allowed(T0, NULL), INT64_MAX);
}

/* What a gate tells a consumer that just started: its own trip, else what
 * is left of a 429's pause, else nothing. */
Test(gate, the_news_for_a_newcomer) {
    gate_setup(0, 0, 1, 10000);
    cons_news news = 0;
    int64_t ms = -1;
    cr_assert_not(cons_gate_news_now(&g, T0, &news, &ms), "an open gate has news");
    learn(CONS_CALL_RATE_LIMITED, 3000, T0, NULL);
    cr_assert(cons_gate_news_now(&g, T0 + 1000 * MS, &news, &ms));
    cr_expect_eq(news, CONS_NEWS_RATE_LIMITED);
    cr_expect_eq(ms, 2000, "what is left of the pause: %lld ms", (long long)ms);
    cr_assert_not(cons_gate_news_now(&g, T0 + 3000 * MS, &news, &ms), "the pause is over");
    learn(CONS_CALL_UNAVAILABLE, 0, T0 + 4000 * MS, NULL);
    cr_assert(cons_gate_news_now(&g, T0 + 60000 * MS, &news, &ms), "a tripped breaker has news after its cool-down too");
    cr_expect_eq(news, CONS_NEWS_OUTAGE);
    /* A peer's hold is the peer's to tell. */
    gate_setup(0, 0, 1, 10000);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0));
    cr_expect_not(cons_gate_news_now(&g, T0, &news, &ms), "a peer's outage was passed on");
}

/* A peer's breaker closing means the provider answered it: a hearer's own
 * trip ends too. A peer stopping while tripped hands its probing over: the
 * hearer's breaker trips, and one call at a time goes out, at once. */
Test(gate, a_peers_recovery_closes_the_breaker_and_its_stop_hands_the_probing_over) {
    gate_setup(0, 0, 1, 10000);
    learn(CONS_CALL_UNAVAILABLE, 0, T0, NULL);
    cr_assert(cons_gate_closed(&g, T0 + 5000 * MS), "not tripped");
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE_OVER, 0, T0 + 5000 * MS), "a peer's recovery left it tripped");
    cr_assert_eq(allowed(T0 + 5000 * MS, NULL), INT64_MAX);
    cr_expect_eq(start(T0 + 5000 * MS), 0, "a call after a peer's recovery is a probe");

    gate_setup(0, 0, 5, 10000);
    cr_assert(cons_gate_hear(&g, CONS_NEWS_OUTAGE, 1000, T0));
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_HANDOVER, 0, T0 + 1000 * MS), "still closed: now tripped");
    uint64_t trip = start(T0 + 1000 * MS);
    cr_expect_neq(trip, 0, "the first call after a handover is not a probe");
    uint64_t t2 = 0;
    int64_t w = 0;
    cr_expect_not(cons_gate_try_start(&g, T0 + 1000 * MS, &t2, &w), "two probes at once after a handover");
    cr_assert_eq(learn(CONS_CALL_OK, 0, T0 + 1100 * MS, NULL), CONS_GATE_RECOVERED);
    cons_gate_probe_over(&g, trip);
    cr_expect_eq(allowed(T0 + 1100 * MS, NULL), INT64_MAX);

    gate_setup(0, 0, 0, 10000); /* no breaker: a handover leaves it open */
    cr_assert_not(cons_gate_hear(&g, CONS_NEWS_HANDOVER, 0, T0));
    cr_expect_eq(allowed(T0, NULL), INT64_MAX);
}
