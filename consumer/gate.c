/* gate.c - when provider calls may start. Three rules, kept by each
 * consumer process:
 *   - a 429 stops new calls until its Retry-After has passed (1 s without
 *     one, at most KILN_RETRY_CAP): the provider said so for the account,
 *     not for one job, so the jobs still queued wait instead of each
 *     spending an attempt on a certain 429;
 *   - KILN_PROVIDER_RATE/BURST, a token bucket at this process's share of
 *     the deployment's rate (status.c works the share out);
 *   - a breaker: KILN_PROVIDER_TRIP_AFTER calls in a row that found the
 *     provider unreachable or answering 502/503/504 stop new calls for a
 *     cool-down (1 s, doubling up to KILN_RETRY_CAP), then one call at a
 *     time goes out until one gets any other answer.
 * Jobs that wait stay in JetStream: no slot, no attempt. Calls already
 * running finish as they would have. The fetch thread asks how many calls
 * may start before it fetches, and again for each job just before its call
 * starts (a job fetched before the gate closed is handed back); transfer
 * threads report outcomes. */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"

#define GATE_RATE_PAUSE_MS 1000   /* after a 429 without Retry-After */
#define GATE_COOLDOWN_MIN_MS 1000 /* first pause of a tripped breaker */
#define GATE_PROBE_POLL_MS 50     /* how often the fetcher asks while a probe is out */
#define GATE_HOLD_CAPS 2          /* a peer's outage holds calls back at most this many caps */
#define GATE_HOLD_POLL_MS 1000    /* the longest wait named while a peer's outage holds calls */
#define GATE_PEER_JITTER_DIV 5    /* a peer's 429 pauses up to 1/5 longer here */

void cons_gate_init(cons_gate *g, const cons_gate_config *cfg, int64_t now_us) {
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    kiln_bucket_init(&g->rate, cfg->rate_per_s, cfg->burst, now_us);
    g->trip_after = cfg->trip_after;
    g->cap_ms = cfg->cap_ms > GATE_COOLDOWN_MIN_MS ? cfg->cap_ms : GATE_COOLDOWN_MIN_MS;
    g->cooldown_ms = GATE_COOLDOWN_MIN_MS;
}

void cons_gate_destroy(cons_gate *g) {
    pthread_mutex_destroy(&g->mu);
}

static int64_t gate_ceil_ms(int64_t us) {
    return (us + 999) / 1000;
}

/* Under g->mu. */
static bool gate_is_closed(const cons_gate *g, int64_t now_us) {
    return g->tripped || now_us < g->closed_until_us || now_us < g->held_until_us;
}

/* Under g->mu: the breaker trips (one call at a time from now on); false
 * when it was tripped already. */
static bool gate_trip(cons_gate *g) {
    if (g->tripped) return false;
    g->tripped = true;
    g->trips++;
    g->probes_out = 0;
    return true;
}

/* Under g->mu: the provider answered (here or at another consumer): the
 * run of failures ends and the breaker closes; true when it was tripped. */
static bool gate_answered(cons_gate *g) {
    g->unavailable_run = 0;
    g->cooldown_ms = GATE_COOLDOWN_MIN_MS;
    if (!g->tripped) return false;
    g->tripped = false;
    g->probes_out = 0;
    return true;
}

/* Under g->mu: a peer's hold that ran out without word of the outage's
 * end (its teller may be gone) hands the probing over, as a HANDOVER would. */
static void gate_hold_lapse(cons_gate *g, int64_t now_us) {
    if (g->held_until_us == 0 || now_us < g->held_until_us) return;
    g->held_until_us = 0;
    /* The probing of the outage becomes this gate's (a HANDOVER would do
     * the same): one call at a time, not every call into a provider last
     * seen down. */
    g->hold_lapsed = gate_trip(g);
}

/* Under g->mu: the gauges as the state is now. */
static void gate_show(cons_gate *g, int64_t now_us) {
    kiln_metric_set(g->waiting_gauge, gate_is_closed(g, now_us) ? 1 : 0);
    kiln_metric_set(g->tripped_gauge, g->tripped ? 1 : 0);
}

/* Under g->mu: 0 when a call may start now, else how long to wait (ms). */
static int64_t gate_wait_ms(cons_gate *g, int64_t now_us) {
    if (now_us < g->closed_until_us) return gate_ceil_ms(g->closed_until_us - now_us);
    /* A peer's outage may end any moment (its OUTAGE_OVER): a job handed
     * back meanwhile comes back this soon, not at the hold's far end. */
    if (now_us < g->held_until_us) {
        int64_t ms = gate_ceil_ms(g->held_until_us - now_us);
        return ms < GATE_HOLD_POLL_MS ? ms : GATE_HOLD_POLL_MS;
    }
    if (g->tripped && g->probes_out > 0) return GATE_PROBE_POLL_MS;
    if (kiln_bucket_available(&g->rate, now_us) < 1)
        return gate_ceil_ms(kiln_bucket_wait_us(&g->rate, now_us));
    return 0;
}

int64_t cons_gate_allowance(cons_gate *g, int64_t now_us, int64_t *wait_ms, bool *closed) {
    int64_t allow = 0;
    pthread_mutex_lock(&g->mu);
    gate_hold_lapse(g, now_us);
    if (closed != NULL) *closed = gate_is_closed(g, now_us);
    *wait_ms = gate_wait_ms(g, now_us);
    /* gate_wait_ms 0: open, not probing, and at least one token. */
    if (*wait_ms == 0) allow = g->tripped ? 1 : kiln_bucket_available(&g->rate, now_us);
    gate_show(g, now_us);
    pthread_mutex_unlock(&g->mu);
    return allow;
}

bool cons_gate_try_start(cons_gate *g, int64_t now_us, uint64_t *probe_trip, int64_t *wait_ms) {
    *probe_trip = 0;
    pthread_mutex_lock(&g->mu);
    gate_hold_lapse(g, now_us);
    *wait_ms = gate_wait_ms(g, now_us);
    bool ok = *wait_ms == 0 && kiln_bucket_take(&g->rate, 1, now_us);
    if (ok && g->tripped) {
        g->probes_out++;
        *probe_trip = g->trips;
    }
    pthread_mutex_unlock(&g->mu);
    if (!ok && *wait_ms < 1) *wait_ms = 1;
    return ok;
}

void cons_gate_probe_over(cons_gate *g, uint64_t probe_trip) {
    if (probe_trip == 0) return;
    pthread_mutex_lock(&g->mu);
    /* A probe of an earlier trip no longer holds anything. */
    if (probe_trip == g->trips && g->probes_out > 0) g->probes_out--;
    pthread_mutex_unlock(&g->mu);
}

/* Closes the gate until now + ms unless it is closed longer already; true
 * when it was open. */
static bool gate_close(cons_gate *g, int64_t ms, int64_t now_us) {
    bool was_open = now_us >= g->closed_until_us;
    int64_t until = now_us + ms * 1000;
    if (until > g->closed_until_us) g->closed_until_us = until;
    return was_open;
}

/* Under g->mu: a cool-down of the breaker starts. */
static void gate_cool_down(cons_gate *g, int64_t now_us, int64_t *pause_ms) {
    *pause_ms = g->cooldown_ms;
    gate_close(g, g->cooldown_ms, now_us);
    g->cooldown_ms = g->cooldown_ms * 2 < g->cap_ms ? g->cooldown_ms * 2 : g->cap_ms;
}

cons_gate_change cons_gate_learn(cons_gate *g, cons_call_outcome o, int64_t retry_after_ms,
                                 int64_t now_us, int64_t *pause_ms) {
    cons_gate_change change = CONS_GATE_SAME;
    *pause_ms = 0;
    /* Out of credit is an outage for the breaker; with the breaker off it
     * still pauses everyone, as a 429. */
    if (o == CONS_CALL_NO_CREDIT)
        o = g->trip_after > 0 ? CONS_CALL_UNAVAILABLE : CONS_CALL_RATE_LIMITED;
    pthread_mutex_lock(&g->mu);
    switch (o) {
    case CONS_CALL_OK:
    case CONS_CALL_ANSWERED:
    case CONS_CALL_RATE_LIMITED:
        /* Any of these is an answer: the provider is up. */
        if (gate_answered(g)) change = CONS_GATE_RECOVERED;
        if (o != CONS_CALL_RATE_LIMITED) break;
        *pause_ms = retry_after_ms > 0 ? retry_after_ms : GATE_RATE_PAUSE_MS;
        if (*pause_ms > g->cap_ms) *pause_ms = g->cap_ms;
        if (gate_close(g, *pause_ms, now_us) && change == CONS_GATE_SAME)
            change = CONS_GATE_RATE_PAUSE;
        break;
    case CONS_CALL_UNAVAILABLE:
        g->unavailable_run++;
        if (g->trip_after <= 0) break;
        if (g->tripped) {
            /* Calls that started before the trip are old news; a failure
             * while a probe is out is taken as the probe's. */
            if (g->probes_out == 0 || now_us < g->closed_until_us) break;
            change = CONS_GATE_PROBE_FAILED;
        } else if (g->unavailable_run >= g->trip_after) {
            (void)gate_trip(g);
            change = CONS_GATE_TRIPPED;
        } else {
            break;
        }
        gate_cool_down(g, now_us, pause_ms);
        break;
    case CONS_CALL_NO_CREDIT: /* mapped above */
    case CONS_CALL_OTHER:
        break;
    }
    gate_show(g, now_us);
    pthread_mutex_unlock(&g->mu);
    return change;
}

bool cons_gate_hear(cons_gate *g, cons_news news, int64_t pause_ms, int64_t now_us) {
    pthread_mutex_lock(&g->mu);
    bool was_closed = gate_is_closed(g, now_us);
    switch (news) {
    case CONS_NEWS_RATE_LIMITED:
        if (pause_ms <= 0) pause_ms = GATE_RATE_PAUSE_MS;
        (void)gate_close(g, pause_ms < g->cap_ms ? pause_ms : g->cap_ms, now_us);
        break;
    case CONS_NEWS_OUTAGE:
        /* The teller's next probe comes within the cap of its last failed one,
         * and the probe itself takes a while; a teller gone without a word
         * holds no one longer than this. */
        if (g->trip_after > 0) g->held_until_us = now_us + GATE_HOLD_CAPS * g->cap_ms * 1000;
        break;
    case CONS_NEWS_OUTAGE_OVER:
        g->held_until_us = 0;
        if (g->tripped) (void)gate_answered(g); /* the teller's call was answered: as one of ours */
        break;
    case CONS_NEWS_HANDOVER:
        g->held_until_us = 0;
        if (g->trip_after > 0) (void)gate_trip(g); /* the first probe may go at once */
        break;
    }
    bool changed = gate_is_closed(g, now_us) != was_closed;
    gate_show(g, now_us);
    pthread_mutex_unlock(&g->mu);
    return changed;
}

bool cons_gate_hold_lapsed(cons_gate *g) {
    pthread_mutex_lock(&g->mu);
    bool lapsed = g->hold_lapsed;
    g->hold_lapsed = false;
    pthread_mutex_unlock(&g->mu);
    return lapsed;
}

bool cons_gate_news_now(cons_gate *g, int64_t now_us, cons_news *news, int64_t *pause_ms) {
    pthread_mutex_lock(&g->mu);
    bool any = true;
    if (g->tripped) {
        *news = CONS_NEWS_OUTAGE;
        *pause_ms = g->cooldown_ms;
    } else if (now_us < g->closed_until_us) {
        *news = CONS_NEWS_RATE_LIMITED;
        *pause_ms = gate_ceil_ms(g->closed_until_us - now_us);
    } else {
        any = false;
    }
    pthread_mutex_unlock(&g->mu);
    return any;
}

void cons_gate_set_rate(cons_gate *g, double rate_per_s, int64_t now_us) {
    pthread_mutex_lock(&g->mu);
    kiln_bucket_set_rate(&g->rate, rate_per_s, now_us);
    pthread_mutex_unlock(&g->mu);
}

bool cons_gate_closed(cons_gate *g, int64_t now_us) {
    pthread_mutex_lock(&g->mu);
    gate_hold_lapse(g, now_us);
    bool closed = gate_is_closed(g, now_us);
    pthread_mutex_unlock(&g->mu);
    return closed;
}

cons_call_outcome cons_gate_outcome(openai_verdict v, const char *err_code,
                                    const char *provider_code, long http_status) {
    if (v == OPENAI_OK) return CONS_CALL_OK;
    /* OpenAI's 429 for an account out of credit: no pause ends it, only a
     * payment does, so it is an outage for the breaker, not a rate limit. */
    if (strcmp(err_code, "rate_limited") == 0 && strcmp(provider_code, "insufficient_quota") == 0)
        return CONS_CALL_NO_CREDIT;
    if (strcmp(err_code, "rate_limited") == 0) return CONS_CALL_RATE_LIMITED;
    if (strcmp(err_code, "provider_unavailable") == 0) return CONS_CALL_UNAVAILABLE;
    /* timeout and transfer errors say nothing about the provider as a whole */
    return http_status > 0 && strcmp(err_code, "timeout") != 0 ? CONS_CALL_ANSWERED
                                                               : CONS_CALL_OTHER;
}

/* ---- the process's gate ---- */

static cons_gate gate_g;
/* Read by libnats threads (status.c) that may outlive the teardown. */
static atomic_bool gate_ready;
/* The fetch thread's view: the gate was closed when it last asked (for the
 * "calls resume" line). */
static bool gate_seen_closed;

void cons_gate_setup(void) {
    const cons_settings *set = cons_g.set;
    cons_gate_config cfg = {
        .rate_per_s = set->provider_rate,
        .burst = (double)set->provider_burst,
        .trip_after = (int)set->provider_trip_after,
        .cap_ms = set->retry_cap_ms,
    };
    cons_gate_init(&gate_g, &cfg, kiln_mono_us());
    gate_g.waiting_gauge = cons_g.m_gate_waiting;
    gate_g.tripped_gauge = cons_g.m_gate_tripped;
    atomic_store(&gate_ready, true);
}

void cons_gate_teardown(void) {
    /* The mutex is not destroyed: a status request's callback may still be
     * running on a libnats thread; it sees the gate off and leaves it alone. */
    atomic_store(&gate_ready, false);
}

int64_t cons_gate_calls_allowed(int64_t *wait_ms) {
    *wait_ms = 0;
    if (!atomic_load(&gate_ready)) return INT64_MAX;
    int64_t now = kiln_mono_us();
    bool closed = false;
    int64_t allow = cons_gate_allowance(&gate_g, now, wait_ms, &closed);
    if (cons_gate_hold_lapsed(&gate_g))
        LOG_WARN("provider breaker taken over: no word of another consumer's outage for ms=%lld, one "
                 "call at a time until one is answered",
                 (long long)(GATE_HOLD_CAPS * gate_g.cap_ms));
    if (gate_seen_closed && !closed) LOG_INFO("provider calls resume");
    gate_seen_closed = closed;
    return allow;
}

bool cons_gate_call_starts(cons_job *j, int64_t *wait_ms) {
    *wait_ms = 0;
    j->gate_probe_trip = 0;
    if (!atomic_load(&gate_ready)) return true;
    if (!cons_gate_try_start(&gate_g, kiln_mono_us(), &j->gate_probe_trip, wait_ms)) return false;
    if (j->gate_probe_trip != 0) LOG_INFO("provider breaker: trying one call job=%s", j->id);
    return true;
}

void cons_gate_call_ended(const cons_job *j, openai_verdict v, long http_status) {
    if (!atomic_load(&gate_ready)) return;
    int64_t pause_ms = 0;
    cons_call_outcome o = cons_gate_outcome(v, j->err_code, j->provider_code, http_status);
    cons_gate_change change =
        cons_gate_learn(&gate_g, o, j->retry_after_ms, kiln_mono_us(), &pause_ms);
    if (change == CONS_GATE_RECOVERED)
        LOG_INFO("provider breaker closed: the provider answers again http=%ld", http_status);
    if (change == CONS_GATE_RATE_PAUSE ||
        (change == CONS_GATE_RECOVERED && o == CONS_CALL_RATE_LIMITED)) {
        kiln_metric_add(cons_g.m_gate_rate_pauses, 1);
        LOG_WARN("provider rate limit (429), no new calls for ms=%lld job=%s", (long long)pause_ms,
                 j->id);
    } else if (change == CONS_GATE_TRIPPED) {
        kiln_metric_add(cons_g.m_gate_trips, 1);
        LOG_WARN("provider breaker tripped: %lld calls in a row found it unavailable, no new "
                 "calls for ms=%lld, then one at a time until one is answered code=%s "
                 "error=\"%s\"",
                 (long long)cons_g.set->provider_trip_after, (long long)pause_ms, j->err_code,
                 j->err_msg);
    } else if (change == CONS_GATE_PROBE_FAILED) {
        LOG_WARN("provider still unavailable, next try in ms=%lld code=%s", (long long)pause_ms,
                 j->err_code);
    }
    /* The account's other consumers would each find out with a job's attempt. */
    if (change == CONS_GATE_RATE_PAUSE || (change == CONS_GATE_RECOVERED && o == CONS_CALL_RATE_LIMITED))
        cons_gatenews_tell(CONS_NEWS_RATE_LIMITED, pause_ms);
    else if (change == CONS_GATE_TRIPPED || change == CONS_GATE_PROBE_FAILED)
        cons_gatenews_tell(CONS_NEWS_OUTAGE, pause_ms);
    if (change == CONS_GATE_RECOVERED) cons_gatenews_tell(CONS_NEWS_OUTAGE_OVER, 0);
}

void cons_gate_heard(cons_news news, int64_t pause_ms, const char *teller) {
    if (!atomic_load(&gate_ready)) return;
    if (news == CONS_NEWS_RATE_LIMITED) {
        /* Up to a fifth longer than the teller's own pause: the teller's
         * calls go first and find out whether the limit is back, instead of
         * every consumer's at the same instant (another 429 extends all). */
        if (pause_ms <= 0) pause_ms = GATE_RATE_PAUSE_MS;
        if (pause_ms > gate_g.cap_ms) pause_ms = gate_g.cap_ms;
        pause_ms += (int64_t)arc4random_uniform((uint32_t)(pause_ms / GATE_PEER_JITTER_DIV) + 1);
    }
    bool changed = cons_gate_hear(&gate_g, news, pause_ms, kiln_mono_us());
    switch (news) {
    case CONS_NEWS_RATE_LIMITED:
        kiln_metric_add(cons_g.m_gate_peer_pauses, 1);
        LOG_WARN("provider rate limit (429) at another consumer, no new calls for ms=%lld consumer=%s",
                 (long long)pause_ms, teller);
        break;
    case CONS_NEWS_OUTAGE:
        if (gate_g.trip_after <= 0) break; /* no breaker here: calls go on */
        kiln_metric_add(cons_g.m_gate_peer_pauses, 1);
        LOG_WARN("provider unavailable at another consumer (its breaker), no new calls until it "
                 "answers again or ms=%lld consumer=%s",
                 (long long)(GATE_HOLD_CAPS * gate_g.cap_ms), teller);
        break;
    case CONS_NEWS_OUTAGE_OVER:
        if (changed) LOG_INFO("provider outage over at another consumer consumer=%s", teller);
        break;
    case CONS_NEWS_HANDOVER:
        if (gate_g.trip_after > 0)
            LOG_WARN("provider breaker taken over from a stopping consumer: one call at a time until "
                     "one is answered consumer=%s",
                     teller);
        break;
    }
}

void cons_gate_job_over(const cons_job *j) {
    if (atomic_load(&gate_ready)) cons_gate_probe_over(&gate_g, j->gate_probe_trip);
}

bool cons_gate_news(cons_news *news, int64_t *pause_ms) {
    return atomic_load(&gate_ready) && cons_gate_news_now(&gate_g, kiln_mono_us(), news, pause_ms);
}

const char *cons_gate_state_name(void) {
    if (!atomic_load(&gate_ready)) return "ok";
    pthread_mutex_lock(&gate_g.mu);
    int64_t now = kiln_mono_us();
    const char *name = gate_g.tripped                      ? "tripped"
                       : now < gate_g.closed_until_us      ? "paused"
                       : now < gate_g.held_until_us        ? "held"
                                                           : "ok";
    pthread_mutex_unlock(&gate_g.mu);
    return name;
}

void cons_gate_share_rate(double rate_per_s) {
    if (atomic_load(&gate_ready)) cons_gate_set_rate(&gate_g, rate_per_s, kiln_mono_us());
}
