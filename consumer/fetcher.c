/* fetcher.c - the fetch thread: pulls jobs from the three lane durables,
 * never more than there are free slots, high lane first with a rotation
 * that gives normal and low the first pick every few rounds; lanes found
 * empty rest briefly (high and low are woken by a publish hint, any lane by
 * the due time of a message this consumer handed back with a delay); with
 * every lane empty it long-polls the normal lane, and a hint or a new due
 * time wakes that poll; one store check per batch; then hands each job to
 * its state machine. A lane paused with `kiln pause` (pause.c) is skipped. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "queuestats.h"
#include "subjects.h"

/* A round polls each lane with no_wait and no expiry: nats-server answers at
 * once, with what the lane holds or a 404. Only when a whole round found
 * nothing does the thread wait, in one long poll (no_wait + expires: nats-server
 * 2.9 answers as soon as a first message arrives) on the normal lane. A round
 * must never wait on an empty lane: with 5 ms long polls on the empty high and
 * low lanes every 100 ms, normal jobs queued behind them for ~10 ms (W3 p99). */
#define FETCH_IDLE_WAIT_MS 50      /* long poll on the normal lane when all lanes are empty */
/* An idle consumer's polls cost nats-server a request and its end each: at
 * 50 ms, with the hinted lanes' 100 ms pauses, ~40 requests a second, 1.6 %
 * of a core per idle consumer. Each idle poll that finds nothing doubles
 * the next one's length and the hinted lanes' pause, up to this; the first
 * job fetched ends it. A long poll answers at the first arrival, hints and
 * due times end it, so only unhinted arrivals on high and low
 * (redeliveries, another consumer's delayed naks) can be seen later. */
#define FETCH_IDLE_WAIT_MAX_MS 1000
#define FETCH_SLOT_WAIT_MS 200
#define FETCH_CHECK_TIMEOUT_MS 1000
/* How long after a redelivery first deliveries are asked about too
 * (cons_job_ask_in_burst). */
#define FETCH_BURST_ASK_MS 2000
/* And how long after this process reconnected to NATS: a nats-server
 * restart can forget deliveries it made (after a SIGKILL, a job whose call
 * ran in one consumer came to another 0.3 s after the restart with
 * NumDelivered 1). Consumers reconnect within ~250 ms of each other, and the
 * runner may answer too late for the first ask (25 ms late in a chaos run),
 * so such a copy nobody claims is held once, as a redelivery whose call
 * began: asked about again after the hold, and run on the store's word. */
#define FETCH_RECONNECT_ASK_MS 5000
#define FETCH_ROTATION 8           /* every 8 rounds normal, and low, get the first pick once */
#define FETCH_ERR_BACKOFF_MS 250
#define FETCH_MEM_PAUSE_MS 50      /* sleep per round while memory is low */
#define FETCH_GATE_NAP_MAX_MS 50   /* longest sleep while provider calls wait (gate.c) */
/* An empty poll costs a round trip, so a lane found empty is left alone for
 * a while instead of being polled every round. High and low have a publish
 * hint (a core subscription to their subject) that ends the pause at once;
 * normal, the bulk lane, has none (its copies would double the traffic) and
 * is caught by the idle long poll. The pause still bounds how late a
 * redelivery after AckWait, or a delayed nak of another consumer, is seen. */
#define FETCH_EMPTY_SKIP_MS 100    /* high, low: pause after an empty poll (hinted) */
#define FETCH_EMPTY_SKIP_NORMAL_MS 20
/* Messages this consumer handed back with a delay (delayed jobs, retries)
 * are due again at a known time: the lane is polled then, not when its pause
 * ends, and the idle long poll ends by then. Kept per lane (at most
 * FETCH_DUE_MAX; beyond that the pause bounds how late they are seen). */
#define FETCH_DUE_MAX 64
#define FETCH_DUE_MARGIN_MS 2      /* the server releases the message at about ack time + delay */
/* A due poll that finds nothing looks again after 2, 4, 8 and 16 ms: under
 * load nats-server may release the message a few ms after its due time, and
 * past the last look only the lane's pause (up to FETCH_EMPTY_SKIP_MS) finds
 * it. Another consumer may have taken it, so the looks are few. */
#define FETCH_DUE_RETRY_MS 2
#define FETCH_DUE_RETRIES 4
/* Gather: when only a few slots are free, wait this long for more, so a
 * round (fetch + store check) carries a useful batch. */
#define FETCH_GATHER_MS 5
#define FETCH_GATHER_DIV 8         /* gather target: concurrency / 8, capped */
#define FETCH_GATHER_MAX 64

/* A late fetch arrival beyond the free slots is kept for the next round
 * rather than nak'd at once: under a backlog that happened to ~10% of all
 * messages, each then redelivered. Kept at most a quarter of AckWait (at
 * least FETCH_CARRY_MIN_AGE_MS), then handed back, so a message never waits
 * near its AckWait without a slot. */
#define FETCH_CARRY_MAX (2 * CONS_FETCH_MAX)
#define FETCH_CARRY_MIN_AGE_MS 1000

/* Indexed like common/queuestats.h's lanes (pause.c's state too). */
enum {
    LANE_HIGH = KILN_LANE_HIGH,
    LANE_NORMAL = KILN_LANE_NORMAL,
    LANE_LOW = KILN_LANE_LOW,
    LANE_COUNT = KILN_LANES
};

typedef struct {
    const kiln_lane_info *def; /* name, subject, durable (common/queuestats.h) */
    bool hinted;                /* has a publish-hint subscription */
    kiln_pull *pull;
    natsSubscription *hint_sub;
    atomic_bool hint;           /* set by the hint subscription (libnats thread) */
    int64_t skip_until;         /* fetch thread: monotonic ms; the lane was empty */
    bool leave_to_idle;         /* fetch thread: the next round leaves it to the idle poll */
    pthread_mutex_t due_mu;     /* due[]: any thread adds, the fetch thread takes */
    int64_t due[FETCH_DUE_MAX]; /* monotonic ms when handed-back messages are due */
    uint8_t due_tries[FETCH_DUE_MAX]; /* looks already taken for this due time */
    int due_n;
    /* Late arrivals beyond the free slots, taken first next round (fetch thread). */
    natsMsg *carry[FETCH_CARRY_MAX];
    int carry_n;
    int64_t carry_since;        /* monotonic ms the oldest carried message arrived */
    atomic_int_least64_t empty_at; /* kiln_pull_empty_sent_at of its pull (stall.c reads it) */
} fetch_lane;

static fetch_lane fetch_lanes[LANE_COUNT] = {
    {.def = &kiln_lanes[KILN_LANE_HIGH], .hinted = true,
     .due_mu = PTHREAD_MUTEX_INITIALIZER},
    {.def = &kiln_lanes[KILN_LANE_NORMAL],
     .due_mu = PTHREAD_MUTEX_INITIALIZER},
    {.def = &kiln_lanes[KILN_LANE_LOW], .hinted = true,
     .due_mu = PTHREAD_MUTEX_INITIALIZER},
};

/* Stream sequences of first deliveries this thread handed back untried (late
 * fetch arrivals beyond the free slots). Their redelivery ran nowhere, so its
 * store check need not wait for the store to catch up (a sync check would,
 * for up to seconds after a burst, with the fetch thread blocked meanwhile).
 * Direct-mapped: a collision only costs the sync check. Fetch thread only. */
#define FETCH_UNTRIED_SLOTS 4096
static uint64_t fetch_untried[FETCH_UNTRIED_SLOTS];

static void fetch_mark_untried(natsMsg *m)
{
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, m) != NATS_OK) return;
    if (meta->NumDelivered == 1) {
        uint64_t seq = meta->Sequence.Stream;
        fetch_untried[seq % FETCH_UNTRIED_SLOTS] = seq;
    }
    jsMsgMetaData_Destroy(meta);
}

/* The second delivery of a message this thread handed back untried. */
static bool fetch_untried_here(const cons_job *j)
{
    return j->num_delivered == 2 && j->stream_seq != 0 &&
           fetch_untried[j->stream_seq % FETCH_UNTRIED_SLOTS] == j->stream_seq;
}

/* A redelivery whose earlier deliveries may have run needs the sync check. */
static bool fetch_may_have_run(const cons_job *j)
{
    return j->num_delivered > 1 && !fetch_untried_here(j);
}

/* When (monotonic ms) this thread last fetched a redelivery. Fetch thread only. */
static int64_t fetch_redelivery_at = INT64_MIN / 2;

/* Stream sequences this thread already held back once for a consumer that
 * may still run their call (fetch_ask_peers); direct-mapped like
 * fetch_untried: a collision only holds a copy once more. Fetch thread only. */
static uint64_t fetch_peer_held[FETCH_UNTRIED_SLOTS];

/* The copies held back now, each until its due time (monotonic ms). Kept
 * here, unacked, with their slot and registry entry, not nak'd with a
 * delay: nats-server 2.9.10 can drop a message nak'd with a delay when it
 * stops, and a nak raises the delivery count, which is the attempt number
 * while the store does not answer. The registry's in-progress acks keep
 * nats-server from redelivering them meanwhile. Each holds a slot, so there
 * are at most concurrency of them. Fetch thread only. */
typedef struct {
    cons_job *job;
    int64_t due;
    bool waits_for_store; /* its hold ended without the store's word */
} fetch_held_job;
static fetch_held_job *fetch_held;
static size_t fetch_held_n, fetch_held_cap;

/* Keeps j for CONS_PEER_GRACE_MS; the caller checked there is room. */
static void fetch_hold(cons_job *j, bool waits_for_store)
{
    fetch_held[fetch_held_n++] =
        (fetch_held_job){j, kiln_mono_ms() + CONS_PEER_GRACE_MS, waits_for_store};
}

/* Gives a fetched message back to JetStream untried. */
static void fetch_hand_back(natsMsg *m)
{
    fetch_mark_untried(m);
    (void)kiln_msg_ack(cons_g.ack_nc, m, KILN_ACK_NAK, 0);
    natsMsg_Destroy(m);
}

/* Keeps a late arrival for the next round, or hands it back when full. */
static void fetch_carry(fetch_lane *lane, natsMsg *m)
{
    if (lane->carry_n >= FETCH_CARRY_MAX) {
        fetch_hand_back(m);
        return;
    }
    if (lane->carry_n == 0) lane->carry_since = kiln_mono_ms();
    lane->carry[lane->carry_n++] = m;
}

/* Hands back what a lane carried (too old, or fetching stops). */
static void fetch_carry_release(fetch_lane *lane)
{
    for (int i = 0; i < lane->carry_n; i++) fetch_hand_back(lane->carry[i]);
    lane->carry_n = 0;
}

/* Set while the fetch thread long-polls the normal lane (all lanes were
 * empty); a hint for high or low then wakes that poll, or a high job on an
 * idle consumer would wait for it to expire (up to FETCH_IDLE_WAIT_MAX_MS). */
static atomic_bool fetch_idle_polling;
/* The next idle poll's length (fetch thread only): FETCH_IDLE_WAIT_MS after
 * a fetch that got jobs, doubled by each idle poll that got none. */
static int64_t fetch_idle_ms = FETCH_IDLE_WAIT_MS;

/* An idle round found nothing again: the next idle wait is twice as long. */
static void fetch_idle_grow(void)
{
    fetch_idle_ms = fetch_idle_ms * 2 < FETCH_IDLE_WAIT_MAX_MS ? fetch_idle_ms * 2 : FETCH_IDLE_WAIT_MAX_MS;
}
/* The normal lane's wake subject, copied at start: wakers publish it on a
 * connection of theirs and never touch the lane's kiln_pull. */
static char fetch_wake_subject[KILN_PULL_WAKE_SUBJECT_MAX];

/* Ends the idle long poll, if the fetch thread is in it (any thread). */
static void fetch_wake_idle(natsConnection *nc)
{
    if (atomic_exchange(&fetch_idle_polling, false))
        (void)natsConnection_Publish(nc, fetch_wake_subject, NULL, 0);
}
static pthread_t fetch_thread;
static bool fetch_started;
static int64_t fetch_last_err_log;

static void fetch_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One kiln.store.check for the batch (sync when asked, or when any job is a
 * redelivery that may have run, so its attempt count is current); fills
 * info[i] for each job. */
static void fetch_store_check(cons_job **jobs, size_t n, bool sync, cons_store_info *info)
{
    const char **ids = calloc(n, sizeof *ids);
    if (ids == NULL) {
        memset(info, 0, n * sizeof *info);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        ids[i] = jobs[i]->id;
        if (fetch_may_have_run(jobs[i])) sync = true;
    }
    kiln_status st = cons_store_check(ids, n, sync, FETCH_CHECK_TIMEOUT_MS, info);
    if (st != KILN_OK)
        LOG_WARN("store check failed, redeliveries wait for it jobs=%zu status=%s", n,
                 kiln_status_str(st));
    free(ids);
}

/* Redeliveries whose call may still run in another consumer are asked about
 * in one question (cons_job_ask_rule says which). A copy another consumer
 * holds (fetched, held back or running) is left to it (a second copy here
 * never got this far: cons_registry_add). One ruled CONS_ASK_OR_HOLD that nobody
 * answered for is held back once for CONS_PEER_GRACE_MS (its consumer may
 * still be reconnecting) and asked again, with a longer wait, when its hold
 * ends; the others run. Skips NULL entries; sets jobs[i] to NULL for every
 * job it took. */
static void fetch_ask_peers(cons_job **jobs, const cons_store_info *info, size_t n)
{
    /* A batch holds at most CONS_FETCH_MAX jobs: the candidates fit on the stack. */
    size_t idx[CONS_FETCH_MAX], k = 0;
    cons_ask_rule rule[CONS_FETCH_MAX];
    uint64_t seqs[CONS_FETCH_MAX];
    bool held[CONS_FETCH_MAX];
    int64_t now = kiln_now_ms(), wait_ms = CONS_PEER_ASK_MS;
    int64_t mono = kiln_mono_ms();
    bool reconnected = mono - kiln_nats_reconnected_at() < FETCH_RECONNECT_ASK_MS;
    bool burst = reconnected || mono - fetch_redelivery_at < FETCH_BURST_ASK_MS;
    for (size_t i = 0; i < n && k < CONS_FETCH_MAX; i++) {
        if (jobs[i] == NULL) continue;
        bool untried = fetch_untried_here(jobs[i]);
        cons_ask_rule r = cons_job_ask_rule(jobs[i], &info[i], untried, now, cons_g.set->ack_wait_ms);
        if (r == CONS_ASK_NONE && burst && cons_job_ask_in_burst(jobs[i], &info[i], untried))
            r = reconnected ? CONS_ASK_OR_HOLD : CONS_ASK_ONLY;
        if (r == CONS_ASK_NONE) continue;
        if (fetch_peer_held[jobs[i]->stream_seq % FETCH_UNTRIED_SLOTS] == jobs[i]->stream_seq)
            wait_ms = CONS_PEER_REASK_MS;
        seqs[k] = cons_job_ask_seq(jobs[i]);
        rule[k] = r;
        idx[k++] = i;
    }
    if (k == 0) return;
    cons_peers_ask(seqs, k, wait_ms, held);
    for (size_t c = 0; c < k; c++) {
        cons_job *j = jobs[idx[c]];
        uint64_t *mark = &fetch_peer_held[j->stream_seq % FETCH_UNTRIED_SLOTS];
        if (held[c]) {
            cons_job_leave_to_peer(j);
        } else if (rule[c] == CONS_ASK_OR_HOLD && *mark != j->stream_seq &&
                   fetch_held_n < fetch_held_cap) {
            *mark = j->stream_seq;
            cons_job_hold_for_peer(j, CONS_PEER_GRACE_MS);
            fetch_hold(j, false);
        } else {
            continue; /* nobody runs it (or held once already): it runs */
        }
        jobs[idx[c]] = NULL;
    }
}

/* Whether j, just checked with the store (info), must wait here for the
 * store's word: kept with its slot, unacked, and checked again every
 * CONS_PEER_GRACE_MS (held: its entry when taken back from a hold).
 * - A copy taken back from a hold: the consumer it was held for may have
 *   finished the job and acked it meanwhile; nats-server then forgets the
 *   message, but this copy is still here. Only a store that caught up can
 *   say so.
 * - A redelivery or re-drive: its attempt number is the store's record
 *   plus one. Its delivery count is no stand-in, as every hand-back without
 *   a call raises it (a closed provider gate, a job not due yet, a stop
 *   while held), and a job could run out of attempts it never used. Not
 *   nak'd with a delay to wait in JetStream either: nats-server 2.9.10 can
 *   keep such a message delivered and unacked for good when it stops. */
static bool fetch_waits_for_store(const cons_job *j, const cons_store_info *info,
                                  const fetch_held_job *held)
{
    if (held != NULL) return !(info->answered && info->synced);
    return !info->answered && (j->num_delivered > 1 || j->redrive_of != 0);
}

/* Store check, peer ask and dispatch of n jobs in the registry (fetched
 * now, or taken back from a hold: then held[i] is each one's entry, NULL
 * otherwise); each is run, left to a peer or held. */
static void fetch_run(cons_job **jobs, size_t n, const fetch_held_job *held)
{
    cons_store_info *info = calloc(n, sizeof *info);
    if (info == NULL) {
        for (size_t i = 0; i < n; i++) cons_job_abandon(jobs[i], "out of memory");
        return;
    }
    fetch_store_check(jobs, n, held != NULL, info);
    for (size_t i = 0; i < n; i++) {
        /* Room: a held copy was just taken out, a fetched one has a slot,
         * and the held list has room for every slot. */
        if (!fetch_waits_for_store(jobs[i], &info[i], held != NULL ? &held[i] : NULL) ||
            fetch_held_n >= fetch_held_cap)
            continue;
        if (held == NULL || !held[i].waits_for_store) {
            LOG_INFO("%s job waits for the store's word job=%s seq=%llu delivered=%llu",
                     held == NULL ? "redelivered" : "held", jobs[i]->id,
                     (unsigned long long)jobs[i]->stream_seq,
                     (unsigned long long)jobs[i]->num_delivered);
            kiln_metric_add(cons_g.m_store_waits, 1);
        }
        fetch_hold(jobs[i], true);
        jobs[i] = NULL;
    }
    fetch_ask_peers(jobs, info, n);
    for (size_t i = 0; i < n; i++)
        if (jobs[i] != NULL) cons_job_dispatch(jobs[i], &info[i]);
    free(info);
}

/* Whether j's lane was paused (`kiln pause`) since it was fetched. */
static bool fetch_lane_paused_for(const cons_job *j)
{
    for (int k = 0; k < LANE_COUNT; k++)
        if (strcmp(kiln_lanes[k].name, j->lane) == 0) return cons_pause_lane(k);
    return false;
}

/* Runs the held copies whose hold has ended. One whose lane was paused
 * meanwhile is left unacked (no nak, no delay): it comes back after
 * AckWait and waits in JetStream with its lane, not here with a slot. */
static void fetch_take_held(void)
{
    cons_job *jobs[CONS_FETCH_MAX];
    fetch_held_job taken[CONS_FETCH_MAX];
    size_t n = 0;
    int64_t now = kiln_mono_ms();
    for (size_t i = 0; i < fetch_held_n && n < CONS_FETCH_MAX;) {
        if (fetch_held[i].due > now) {
            i++;
            continue;
        }
        fetch_held_job e = fetch_held[i];
        fetch_held[i] = fetch_held[--fetch_held_n];
        if (fetch_lane_paused_for(e.job)) {
            cons_job_abandon(e.job, "its lane was paused while it was held");
            continue;
        }
        taken[n] = e;
        jobs[n++] = e.job;
    }
    if (n > 0) fetch_run(jobs, n, taken);
}

/* The earliest end of a hold (INT64_MAX: none). */
static int64_t fetch_held_next(void)
{
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < fetch_held_n; i++)
        if (fetch_held[i].due < next) next = fetch_held[i].due;
    return next;
}

/* Takes ownership of the fetched messages. */
static void fetch_process(const fetch_lane *lane, natsMsgList *list)
{
    size_t n = (size_t)list->Count, made = 0;
    cons_job **jobs = calloc(n, sizeof *jobs);
    cons_slots_take((int64_t)n);
    for (size_t i = 0; i < n; i++) {
        cons_job *j = NULL;
        if (jobs == NULL || cons_job_create(list->Msgs[i], lane->def->name, &j) != KILN_OK) {
            /* Out of memory: leave it unacked; it comes back after AckWait. */
            natsMsg_Destroy(list->Msgs[i]);
            list->Msgs[i] = NULL;
            cons_slots_release(1);
            continue;
        }
        list->Msgs[i] = NULL;
        if (j->num_delivered > 1) {
            kiln_metric_add(cons_g.m_redelivered, 1);
            fetch_redelivery_at = kiln_mono_ms();
        }
        if (!cons_registry_add(j)) {
            cons_job_leave_to_running(j);
            continue;
        }
        jobs[made++] = j;
    }
    if (made > 0) fetch_run(jobs, made, NULL);
    free(jobs);
}

/* Runs up to batch of the lane's carried messages, oldest first. */
static int fetch_take_carry(fetch_lane *lane, int batch)
{
    int n = lane->carry_n < batch ? lane->carry_n : batch;
    natsMsgList list = {0};
    list.Msgs = calloc((size_t)n, sizeof *list.Msgs);
    if (list.Msgs == NULL) return 0;
    memcpy(list.Msgs, lane->carry, (size_t)n * sizeof *list.Msgs);
    list.Count = n;
    lane->carry_n -= n;
    memmove(lane->carry, lane->carry + n, (size_t)lane->carry_n * sizeof *lane->carry);
    fetch_process(lane, &list);
    natsMsgList_Destroy(&list);
    return n;
}

/* Fetches up to batch jobs from a lane (carried ones first, without a
 * fetch); returns how many were taken. */
static int fetch_lane_once(fetch_lane *lane, int batch, int64_t expires_ms, int64_t wait_ms)
{
    natsMsgList list = {0};
    if (lane->carry_n > 0) return fetch_take_carry(lane, batch);
    int64_t t0 = kiln_mono_ms();
    kiln_status st = kiln_pull_fetch_wait(lane->pull, batch, expires_ms, wait_ms, &list);
    LOG_DEBUG("fetch lane=%s batch=%d expires_ms=%lld status=%s count=%d ms=%lld", lane->def->name,
              batch, (long long)expires_ms, kiln_status_str(st), list.Count,
              (long long)(kiln_mono_ms() - t0));
    if (st != KILN_OK) {
        natsMsgList_Destroy(&list);
        int64_t now = kiln_mono_ms();
        if (now - fetch_last_err_log > 5000) {
            LOG_WARN("fetch failed lane=%s status=%s error=\"%s\"", lane->def->name,
                     kiln_status_str(st), nats_GetLastError(NULL));
            fetch_last_err_log = now;
        }
        fetch_sleep_ms(FETCH_ERR_BACKOFF_MS);
        return 0;
    }
    atomic_store(&lane->empty_at, kiln_pull_empty_sent_at(lane->pull));
    if (list.Count == 0) {
        natsMsgList_Destroy(&list);
        return 0;
    }
    /* Paused while the request was open (an idle long poll): hand it all back. */
    if (cons_pause_lane((int)(lane - fetch_lanes))) {
        for (int i = 0; i < list.Count; i++) {
            fetch_hand_back(list.Msgs[i]);
            list.Msgs[i] = NULL;
        }
        natsMsgList_Destroy(&list);
        return 0;
    }
    /* Late arrivals beyond the free slots wait for the next round. */
    for (int i = batch; i < list.Count; i++) {
        fetch_carry(lane, list.Msgs[i]);
        list.Msgs[i] = NULL;
    }
    if (list.Count > batch) list.Count = batch;
    int count = list.Count;
    if (count > 0) fetch_process(lane, &list);
    natsMsgList_Destroy(&list);
    return count;
}

int64_t cons_fetcher_empty_at(int lane)
{
    if (lane < 0 || lane >= LANE_COUNT) return 0;
    return atomic_load(&fetch_lanes[lane].empty_at);
}

static void fetch_due_add(fetch_lane *lane, int64_t due, int tries)
{
    pthread_mutex_lock(&lane->due_mu);
    if (lane->due_n < FETCH_DUE_MAX) {
        lane->due[lane->due_n] = due;
        lane->due_tries[lane->due_n] = (uint8_t)tries;
        lane->due_n++;
    }
    pthread_mutex_unlock(&lane->due_mu);
}

/* Removes the lane's due times up to now; true if there were any, and
 * *tries is the fewest looks any of them has had. */
static bool fetch_due_take(fetch_lane *lane, int64_t now, int *tries)
{
    bool any = false;
    *tries = FETCH_DUE_RETRIES;
    pthread_mutex_lock(&lane->due_mu);
    for (int i = 0; i < lane->due_n;) {
        if (lane->due[i] <= now) {
            if (lane->due_tries[i] < *tries) *tries = lane->due_tries[i];
            lane->due_n--;
            lane->due[i] = lane->due[lane->due_n];
            lane->due_tries[i] = lane->due_tries[lane->due_n];
            any = true;
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&lane->due_mu);
    return any;
}

/* The earliest due time of any lane not paused (INT64_MAX: none). */
static int64_t fetch_due_next(void)
{
    int64_t next = INT64_MAX;
    for (int k = 0; k < LANE_COUNT; k++) {
        fetch_lane *lane = &fetch_lanes[k];
        if (cons_pause_lane(k)) continue;
        pthread_mutex_lock(&lane->due_mu);
        for (int i = 0; i < lane->due_n; i++)
            if (lane->due[i] < next) next = lane->due[i];
        pthread_mutex_unlock(&lane->due_mu);
    }
    return next;
}

void cons_fetcher_wake(void) { fetch_wake_idle(cons_g.nc); }

void cons_fetcher_due(const char *lane_name, int64_t delay_ms)
{
    fetch_lane *lane = NULL;
    for (int k = 0; k < LANE_COUNT; k++)
        if (strcmp(fetch_lanes[k].def->name, lane_name) == 0) lane = &fetch_lanes[k];
    if (lane == NULL || delay_ms <= 0) return;
    fetch_due_add(lane, kiln_mono_ms() + delay_ms + FETCH_DUE_MARGIN_MS, 0);
    fetch_wake_idle(cons_g.nc); /* the idle long poll may be set to end later than this */
}

/* A paused lane is not fetched from: what it carried goes back, and its due
 * times are forgotten (after the resume its polls find those messages). */
static bool fetch_lane_paused(fetch_lane *lane)
{
    if (!cons_pause_lane((int)(lane - fetch_lanes))) return false;
    fetch_carry_release(lane);
    pthread_mutex_lock(&lane->due_mu);
    lane->due_n = 0;
    pthread_mutex_unlock(&lane->due_mu);
    lane->leave_to_idle = false;
    return true;
}

/* Polls one lane unless it is paused, or was found empty lately and has no
 * hint since. */
static int64_t fetch_lane_maybe(fetch_lane *lane, int64_t want, int64_t now)
{
    int tries = 0;
    if (fetch_lane_paused(lane)) return 0;
    bool due = fetch_due_take(lane, now, &tries);
    bool leave = lane->leave_to_idle;
    lane->leave_to_idle = false;
    if (!due && leave) return 0;
    if (!due && now < lane->skip_until && !(lane->hinted && atomic_load(&lane->hint))) return 0;
    /* Clear before polling: a publish during the poll sets it again. */
    atomic_store(&lane->hint, false);
    int got = fetch_lane_once(lane, (int)want, 0, INT64_MAX);
    if (got > 0) {
        lane->skip_until = 0;
    } else {
        int64_t skip = lane->hinted ? FETCH_EMPTY_SKIP_MS : FETCH_EMPTY_SKIP_NORMAL_MS;
        if (lane->hinted && fetch_idle_ms > skip) skip = fetch_idle_ms; /* a hint ends it */
        lane->skip_until = now + skip;
        /* Due but not there: maybe not released yet (or another consumer
         * took it); look again soon, a little later each time. */
        if (due && tries < FETCH_DUE_RETRIES)
            fetch_due_add(lane, now + ((int64_t)FETCH_DUE_RETRY_MS << tries), tries + 1);
    }
    return got;
}

static void *fetch_main(void *arg)
{
    (void)arg;
    static const int orders[3][LANE_COUNT] = {
        {LANE_HIGH, LANE_NORMAL, LANE_LOW},
        {LANE_NORMAL, LANE_HIGH, LANE_LOW},
        {LANE_LOW, LANE_HIGH, LANE_NORMAL},
    };
    int64_t gather = cons_g.set->concurrency / FETCH_GATHER_DIV;
    if (gather > FETCH_GATHER_MAX) gather = FETCH_GATHER_MAX;
    if (gather < 1) gather = 1;
    uint64_t round = 0;
    int64_t carry_max_age = cons_g.set->ack_wait_ms / 4;
    if (carry_max_age < FETCH_CARRY_MIN_AGE_MS) carry_max_age = FETCH_CARRY_MIN_AGE_MS;
    while (!atomic_load(&cons_g.stopping)) {
        fetch_take_held();
        int64_t t = kiln_mono_ms();
        for (int k = 0; k < LANE_COUNT; k++)
            if (fetch_lanes[k].carry_n > 0 && t - fetch_lanes[k].carry_since > carry_max_age)
                fetch_carry_release(&fetch_lanes[k]);
        if (cons_memwatch_paused()) {
            /* In-flight jobs go on; nothing new is taken until memory is back. */
            fetch_sleep_ms(FETCH_MEM_PAUSE_MS);
            continue;
        }
        /* The provider asked for a pause, is down, or the rate is used up:
         * jobs wait in JetStream, without a slot or an attempt. */
        int64_t gate_wait = 0;
        if (cons_gate_calls_allowed(&gate_wait) <= 0) {
            fetch_sleep_ms(gate_wait < FETCH_GATE_NAP_MAX_MS ? gate_wait : FETCH_GATE_NAP_MAX_MS);
            continue;
        }
        int64_t free_n = cons_slots_wait_free(1, FETCH_SLOT_WAIT_MS);
        if (free_n <= 0) continue;
        /* Busy: let a few more slots free up so the round carries a batch. */
        if (free_n < gather) free_n = cons_slots_wait_free(gather, FETCH_GATHER_MS);
        /* Asked again after the slot waits: a 429 may have come meanwhile.
         * (Each job asks once more just before its call starts.) */
        int64_t allowed = cons_gate_calls_allowed(&gate_wait);
        if (allowed <= 0) continue;
        if (free_n > allowed) free_n = allowed;
        if (free_n > CONS_FETCH_MAX) free_n = CONS_FETCH_MAX;
        /* Round-robin fairness: mostly high first, sometimes normal or low first. */
        unsigned r = (unsigned)(round++ % FETCH_ROTATION);
        const int *order = orders[r == 3 ? 1 : r == 7 ? 2 : 0];
        int64_t got = 0, now = kiln_mono_ms();
        for (int k = 0; k < LANE_COUNT && got < free_n; k++) {
            if (atomic_load(&cons_g.stopping)) break;
            got += fetch_lane_maybe(&fetch_lanes[order[k]], free_n - got, now);
        }
        if (got > 0) fetch_idle_ms = FETCH_IDLE_WAIT_MS;
        if (got == 0 && !atomic_load(&cons_g.stopping) && cons_pause_lane(LANE_NORMAL)) {
            /* Nothing fetched and the long poll's lane paused: rest instead
             * (the hinted lanes' pauses grow as in an idle poll; a hint is
             * seen after the rest). */
            fetch_sleep_ms(FETCH_IDLE_WAIT_MS);
            fetch_idle_grow();
        } else if (got == 0 && !atomic_load(&cons_g.stopping)) {
            /* Nothing fetched: long poll the normal lane (returns on the first arrival). */
            fetch_lane *nl = &fetch_lanes[LANE_NORMAL];
            /* Stop waiting at the next due time, but leave the request's
             * expiry alone (kiln_pull_fetch_wait says why). */
            int64_t next_due = fetch_due_next(), held_due = fetch_held_next();
            if (held_due < next_due) next_due = held_due;
            int64_t wait_ms = INT64_MAX, until_due = next_due - kiln_mono_ms();
            if (until_due < fetch_idle_ms) wait_ms = until_due > 1 ? until_due : 1;
            atomic_store(&fetch_idle_polling, true);
            kiln_metric_add(cons_g.m_idle_polls, 1);
            int got_idle = fetch_lane_once(nl, (int)free_n, fetch_idle_ms, wait_ms);
            atomic_store(&fetch_idle_polling, false);
            /* The next round does not poll normal with no_wait first (at
             * low load a 404 each time): its idle poll, if it comes to one,
             * answers at once when more is there. */
            if (got_idle > 0) {
                nl->skip_until = 0;
                nl->leave_to_idle = true;
                fetch_idle_ms = FETCH_IDLE_WAIT_MS;
            } else {
                fetch_idle_grow();
            }
        }
    }
    for (int k = 0; k < LANE_COUNT; k++) fetch_carry_release(&fetch_lanes[k]);
    /* Not handed back: a nak would let a third consumer start it at once,
     * while the one it was held for may still be reconnecting. */
    for (size_t i = 0; i < fetch_held_n; i++)
        cons_job_abandon(fetch_held[i].job, fetch_held[i].waits_for_store
                                                ? "stopping while it waits for the store's word"
                                                : "stopping while held for another consumer");
    fetch_held_n = 0;
    LOG_INFO("fetching stopped");
    return NULL;
}

/* Runs on a libnats thread for every publish on a hinted lane's subject. */
static void fetch_on_hint(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    fetch_lane *lane = closure;
    atomic_store(&lane->hint, true);
    fetch_wake_idle(nc);
    natsMsg_Destroy(msg);
}

kiln_status cons_fetcher_start(void)
{
    fetch_held_cap = (size_t)cons_g.set->concurrency;
    fetch_held_n = 0;
    fetch_held = calloc(fetch_held_cap, sizeof *fetch_held);
    if (fetch_held == NULL) return KILN_ENOMEM;
    for (int i = 0; i < LANE_COUNT; i++) {
        kiln_status pst = kiln_pull_open(cons_g.nc, KILN_STREAM_JOBS, fetch_lanes[i].def->durable,
                                         &fetch_lanes[i].pull);
        if (pst != KILN_OK) return pst;
        atomic_init(&fetch_lanes[i].hint, false);
        pthread_mutex_lock(&fetch_lanes[i].due_mu);
        fetch_lanes[i].due_n = 0;
        pthread_mutex_unlock(&fetch_lanes[i].due_mu);
        if (i == LANE_NORMAL)
            snprintf(fetch_wake_subject, sizeof fetch_wake_subject, "%s",
                     kiln_pull_wake_subject(fetch_lanes[i].pull));
        fetch_lanes[i].skip_until = 0;
        if (!fetch_lanes[i].hinted) continue;
        natsStatus s = natsConnection_Subscribe(&fetch_lanes[i].hint_sub, cons_g.nc,
                                                fetch_lanes[i].def->subject, fetch_on_hint,
                                                &fetch_lanes[i]);
        if (s != NATS_OK) {
            LOG_ERROR("hint subscribe failed subject=%s status=%s", fetch_lanes[i].def->subject,
                      natsStatus_GetText(s));
            fetch_lanes[i].hint_sub = NULL;
            return kiln_nats_status(s);
        }
    }
    LOG_INFO("fetcher started idle_wait_ms=%d", FETCH_IDLE_WAIT_MS);
    if (pthread_create(&fetch_thread, NULL, fetch_main, NULL) != 0) return KILN_ERR;
    pthread_setname_np(fetch_thread, "kiln-fetch");
    fetch_started = true;
    return KILN_OK;
}

void cons_fetcher_stop(void)
{
    if (fetch_started) {
        fetch_wake_idle(cons_g.nc); /* an idle poll can last FETCH_IDLE_WAIT_MAX_MS */
        pthread_join(fetch_thread, NULL);
        fetch_started = false;
    }
    for (int i = 0; i < LANE_COUNT; i++) {
        kiln_nats_unsubscribe(&fetch_lanes[i].hint_sub);
        kiln_pull_close(fetch_lanes[i].pull);
        fetch_lanes[i].pull = NULL;
    }
    free(fetch_held);
    fetch_held = NULL;
    fetch_held_cap = 0;
}
