/* job.c - the per-job state machine: fetched -> checked -> running ->
 * publishing result -> acked | nak'd with delay | terminated (| abandoned when
 * a publish fails, leaving the message for redelivery; | freed while fetched,
 * unacked, when it is a redelivery of a job still running here or in another
 * consumer). A copy held back for another consumer (fetcher.c) stays fetched
 * meanwhile. Every transition of cons_job.state happens in this file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "pb.h"
#include "subjects.h"

#define JOB_REDRIVE_RETRY_MS 1000 /* a re-drive fetched while the store does not answer */

/* Outcomes since the last summary line (per-job lines are DEBUG). */
enum { SUM_COMPLETED = 0, SUM_FAILED, SUM_RETRIED, SUM_SKIPPED, SUM_CANCELLED, SUM_COUNT };
static atomic_ullong job_sum[SUM_COUNT];
static _Atomic int64_t job_sum_last_mono;

static void job_count(int which)
{
    atomic_fetch_add_explicit(&job_sum[which], 1, memory_order_relaxed);
}

void cons_job_log_summary(int64_t now_mono)
{
    int64_t last = atomic_load(&job_sum_last_mono);
    if (last == 0) {
        atomic_compare_exchange_strong(&job_sum_last_mono, &last, now_mono);
        return;
    }
    if (now_mono - last < CONS_SUMMARY_EVERY_MS ||
        !atomic_compare_exchange_strong(&job_sum_last_mono, &last, now_mono))
        return;
    unsigned long long c[SUM_COUNT], any = 0;
    for (int i = 0; i < SUM_COUNT; i++) {
        c[i] = atomic_exchange(&job_sum[i], 0);
        any |= c[i];
    }
    if (any != 0)
        LOG_INFO("jobs summary secs=%lld completed=%llu failed=%llu retried=%llu skipped=%llu "
                 "cancelled=%llu in_flight=%lld",
                 (long long)((now_mono - last + 500) / 1000), c[SUM_COMPLETED], c[SUM_FAILED],
                 c[SUM_RETRIED], c[SUM_SKIPPED], c[SUM_CANCELLED], (long long)cons_slots_used());
}

const char *cons_job_state_name(cons_job_state s)
{
    switch (s) {
    case CONS_JOB_FETCHED: return "fetched";
    case CONS_JOB_CHECKED: return "checked";
    case CONS_JOB_RUNNING: return "running";
    case CONS_JOB_PUBLISHING: return "publishing";
    case CONS_JOB_ACKED: return "acked";
    case CONS_JOB_NAKED: return "naked";
    case CONS_JOB_TERMINATED: return "terminated";
    case CONS_JOB_ABANDONED: return "abandoned";
    }
    return "unknown";
}

bool cons_job_move_ok(cons_job_state from, cons_job_state to)
{
    switch (from) {
    case CONS_JOB_FETCHED: return to == CONS_JOB_CHECKED || to == CONS_JOB_PUBLISHING;
    case CONS_JOB_CHECKED:
        return to == CONS_JOB_RUNNING || to == CONS_JOB_PUBLISHING || to == CONS_JOB_ACKED ||
               to == CONS_JOB_NAKED;
    case CONS_JOB_RUNNING: return to == CONS_JOB_PUBLISHING || to == CONS_JOB_NAKED;
    case CONS_JOB_PUBLISHING:
        return to == CONS_JOB_ACKED || to == CONS_JOB_NAKED || to == CONS_JOB_TERMINATED ||
               to == CONS_JOB_ABANDONED;
    case CONS_JOB_ACKED:
    case CONS_JOB_NAKED:
    case CONS_JOB_TERMINATED:
    case CONS_JOB_ABANDONED: return false;
    }
    return false;
}

static void job_move(cons_job *j, cons_job_state to)
{
    if (!cons_job_move_ok(j->state, to))
        LOG_ERROR("job bad state move job=%s from=%s to=%s", j->id, cons_job_state_name(j->state),
                  cons_job_state_name(to));
    j->state = to;
}

bool cons_job_is_duplicate_copy(const cons_job *j, const cons_store_info *si)
{
    /* Only a first delivery: a redelivered copy may be one that already ran an
     * attempt (its store check had not answered), and must finish. */
    if (!(si->answered && si->known && si->request_seq != 0 && j->num_delivered == 1 &&
          j->stream_seq != 0 && j->stream_seq != si->request_seq))
        return false;
    /* A re-drive of the job's own lost copy (stall.c, the store's sweep) runs
     * while the job waits, or when its last attempt was abandoned. */
    return !(j->redrive_of == si->request_seq &&
             (si->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING || si->abandoned));
}

kiln_status cons_job_create(natsMsg *msg, const char *lane, cons_job **out)
{
    jsMsgMetaData *meta = NULL;
    cons_job *j = calloc(1, sizeof *j);
    if (j == NULL) return KILN_ENOMEM;
    j->msg = msg;
    j->lane = lane;
    j->state = CONS_JOB_FETCHED;
    j->num_delivered = 1;
    atomic_init(&j->cancel, false);
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        j->num_delivered = meta->NumDelivered;
        j->stream_seq = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
    }
    const char *redrive = NULL;
    if (natsMsgHeader_Get(msg, KILN_HDR_REDRIVE, &redrive) == NATS_OK && redrive != NULL)
        j->redrive_of = strtoull(redrive, NULL, 10);
    int len = natsMsg_GetDataLength(msg);
    if (len > 0 && len <= KILN_PB_MAX_BYTES)
        j->req = kiln__v1__job_request__unpack(NULL, (size_t)len,
                                               (const uint8_t *)natsMsg_GetData(msg));
    if (j->req != NULL) {
        kiln_pb_drop_unknown(&j->req->base); /* transitions carry it */
        /* The lane it came on is its priority (as the store records it). */
        (void)kiln_subject_priority(natsMsg_GetSubject(msg), &j->req->priority);
    }
    if (j->req != NULL && j->req->id != NULL && kiln_jobreq_id_ok(j->req->id))
        snprintf(j->id, sizeof j->id, "%s", j->req->id);
    *out = j;
    return KILN_OK;
}

static void job_free(cons_job *j)
{
    natsMsg_Destroy(j->msg);
    if (j->req != NULL) kiln__v1__job_request__free_unpacked(j->req, NULL);
    for (size_t i = 0; i < j->n_images; i++) free(j->images[i].url);
    free(j->req_body);
    free(j->resp);
    cons_gate_job_over(j);
    free(j);
    cons_slots_release(1);
}

/* Carries out the final action on the original message and frees the job. */
static void job_final(cons_job *j)
{
    kiln_status st = KILN_OK;
    const char *action = "ack";
    cons_registry_remove(j);
    switch (j->final) {
    case CONS_FINAL_ACK:
        job_move(j, CONS_JOB_ACKED);
        st = kiln_msg_ack(cons_g.ack_nc, j->msg, KILN_ACK, 0);
        break;
    case CONS_FINAL_NAK:
        job_move(j, CONS_JOB_NAKED);
        action = "nak";
        st = kiln_msg_ack(cons_g.ack_nc, j->msg, KILN_ACK_NAK, j->nak_delay_ms);
        if (st == KILN_OK) cons_fetcher_due(j->lane, j->nak_delay_ms);
        break;
    case CONS_FINAL_TERM:
        job_move(j, CONS_JOB_TERMINATED);
        action = "term";
        st = kiln_msg_ack(cons_g.ack_nc, j->msg, KILN_ACK_TERM, 0);
        break;
    }
    if (st != KILN_OK)
        LOG_WARN("job %s failed job=%s status=%s (redelivered after ack wait)", action,
                 j->id, kiln_status_str(st));
    else
        LOG_DEBUG("job %s job=%s delay_ms=%lld", action, j->id, (long long)j->nak_delay_ms);
    job_free(j);
}

static void job_abandon_now(cons_job *j, const char *why)
{
    cons_registry_remove(j);
    LOG_WARN("job abandoned, left for redelivery job=%s attempt=%u step=%d reason=\"%s\"", j->id,
             j->attempt, j->step, why);
    j->state = CONS_JOB_ABANDONED;
    job_free(j);
}

void cons_job_leave_to_running(cons_job *j)
{
    /* Unacked and forgotten: the running job's ack or in-progress ack names
     * the same stream sequence, and nats-server acks by that. */
    LOG_INFO("job delivered again while its call runs here, left to the running attempt job=%s lane=%s "
             "seq=%llu delivered=%llu redrive_of=%llu",
             j->id, j->lane, (unsigned long long)j->stream_seq, (unsigned long long)j->num_delivered,
             (unsigned long long)j->redrive_of);
    kiln_metric_add(cons_g.m_duplicates, 1);
    job_free(j);
}

void cons_job_leave_to_peer(cons_job *j)
{
    cons_registry_remove(j);
    LOG_INFO("job delivered again while another consumer (or another copy here) holds it, left to it "
             "job=%s lane=%s "
             "seq=%llu delivered=%llu",
             j->id, j->lane, (unsigned long long)j->stream_seq, (unsigned long long)j->num_delivered);
    kiln_metric_add(cons_g.m_duplicates, 1);
    job_free(j);
}

void cons_job_hold_for_peer(const cons_job *j, int64_t hold_ms)
{
    LOG_INFO("job redelivered while its call may still run elsewhere, waiting for its consumer "
             "job=%s lane=%s seq=%llu delivered=%llu hold_ms=%lld",
             j->id, j->lane, (unsigned long long)j->stream_seq, (unsigned long long)j->num_delivered,
             (long long)hold_ms);
    kiln_metric_add(cons_g.m_peer_holds, 1);
}

uint64_t cons_job_ask_seq(const cons_job *j)
{
    return j->num_delivered <= 1 && j->redrive_of != 0 ? j->redrive_of : j->stream_seq;
}

bool cons_job_ask_in_burst(const cons_job *j, const cons_store_info *si, bool untried)
{
    if (j->stream_seq == 0 || untried || j->req == NULL || j->num_delivered > 1) return false;
    return !(si->answered && si->known && kiln_state_is_terminal(si->state));
}

cons_ask_rule cons_job_ask_rule(const cons_job *j, const cons_store_info *si, bool untried,
                                int64_t now_ms, int64_t ack_wait_ms)
{
    if (j->stream_seq == 0 || untried || j->req == NULL) return CONS_ASK_NONE;
    bool told = si->answered && si->known;
    if (j->num_delivered <= 1 && j->redrive_of != 0)
        return told && si->request_seq == j->redrive_of && si->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING
                   ? CONS_ASK_ONLY
                   : CONS_ASK_NONE;
    if (j->num_delivered <= 1) {
        /* A first delivery of a message the store saw handled already:
         * nats-server 2.9 can deliver a message again with its count back
         * at 1 (fixed upstream in 2.10). */
        if (!told || si->request_seq != j->stream_seq) return CONS_ASK_NONE;
        if (si->state == KILN__V1__JOB_STATE__JOB_STATE_PROCESSING)
            return si->abandoned ? CONS_ASK_NONE : CONS_ASK_OR_HOLD;
        return si->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING && si->attempts > 0 ? CONS_ASK_ONLY
                                                                                     : CONS_ASK_NONE;
    }
    if (told && si->state == KILN__V1__JOB_STATE__JOB_STATE_PROCESSING)
        return si->abandoned ? CONS_ASK_NONE : CONS_ASK_OR_HOLD;
    if (told && si->state != KILN__V1__JOB_STATE__JOB_STATE_PENDING) return CONS_ASK_NONE;
    /* Pending, or not known: a call begun since may not be recorded yet
     * (its PROCESSING goes out after CONS_PROCESSING_AFTER_MS, or sat in a
     * reconnect buffer). A copy due well under AckWait ago is a retry or a
     * delayed job on time, not a call given up. */
    int64_t due = j->req->created_at_ms;
    if (j->req->not_before_ms > due) due = j->req->not_before_ms;
    if (told && si->retry_at_ms > due) due = si->retry_at_ms;
    int64_t margin = ack_wait_ms / 10 > 1000 ? ack_wait_ms / 10 : 1000;
    if (now_ms - due < ack_wait_ms - margin) return CONS_ASK_NONE;
    /* Without the store's word a call may well have begun (right after a
     * NATS restart the store and the runner may both still be reconnecting):
     * held like a processing copy. */
    return told ? CONS_ASK_ONLY : CONS_ASK_OR_HOLD;
}

void cons_job_abandon(cons_job *j, const char *why)
{
    job_abandon_now(j, why);
}

/* Runs the remaining publish steps; each continues from the ack handler. */
static void job_run_chain(cons_job *j)
{
    if (j->step < j->n_steps) {
        kiln_status st = KILN_OK;
        switch (j->steps[j->step]) {
        case CONS_STEP_TX: st = cons_publish_transition(j, j->tx_state, true); break;
        case CONS_STEP_DEAD: st = cons_deadletter_publish(j); break;
        }
        /* On success the ack handler owns j now (it may already be gone). */
        if (st != KILN_OK) job_abandon_now(j, "publish failed");
        return;
    }
    job_final(j);
}

void cons_job_resend(cons_job *j)
{
    if (j->resent >= CONS_RESEND_MAX) {
        job_abandon_now(j, "publish ack lost in reconnects");
        return;
    }
    j->resent++;
    LOG_WARN("publish ack lost in a reconnect, publishing again job=%s attempt=%u step=%d try=%u", j->id,
             j->attempt, j->step, j->resent);
    kiln_metric_add(cons_g.m_resent, 1);
    job_run_chain(j);
}

/* Plans the outcome and starts carrying it out. */
static void job_finish(cons_job *j, Kiln__V1__JobState tx, bool dead, cons_final final,
                       int64_t nak_delay_ms)
{
    j->tx_state = tx;
    j->final = final;
    j->nak_delay_ms = nak_delay_ms;
    j->n_steps = 0;
    j->step = 0;
    /* Dead letter first: for exhausted jobs the copy must exist before the
     * FAILED transition makes the job terminal and announced. */
    if (dead) j->steps[j->n_steps++] = CONS_STEP_DEAD;
    if (tx != KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED) j->steps[j->n_steps++] = CONS_STEP_TX;
    if (j->n_steps > 0) job_move(j, CONS_JOB_PUBLISHING);
    job_run_chain(j);
}

void cons_job_published(cons_job *j, bool ok, const char *err)
{
    if (!ok) {
        job_abandon_now(j, err != NULL ? err : "publish not acknowledged");
        return;
    }
    if (j->steps[j->step] == CONS_STEP_DEAD) kiln_metric_add(cons_g.m_dead, 1);
    j->step++;
    job_run_chain(j);
}

static void job_set_error(cons_job *j, const char *code, const char *msg)
{
    snprintf(j->err_code, sizeof j->err_code, "%s", code);
    snprintf(j->err_msg, sizeof j->err_msg, "%s", msg);
}

/* Input that can never be processed: dead letter (and FAILED when the job is addressable). */
static void job_reject_input(cons_job *j, const char *reason, bool addressable)
{
    snprintf(j->dead_reason, sizeof j->dead_reason, "%s", reason);
    LOG_WARN("job rejected job=%s lane=%s seq=%llu reason=\"%s\"", j->id[0] ? j->id : "-",
             j->lane, (unsigned long long)j->stream_seq, reason);
    if (addressable) {
        j->truncate_prompt = true;
        kiln_metric_add(cons_g.m_failed, 1);
        job_count(SUM_FAILED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_FAILED, true, CONS_FINAL_TERM, 0);
    } else {
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, true, CONS_FINAL_TERM, 0);
    }
}

void cons_job_dispatch(cons_job *j, const cons_store_info *si)
{
    char field[64] = "", msg[256] = "", reason[CONS_REASON_MAX];
    const Kiln__V1__JobRequest *r = j->req;

    if (r == NULL) {
        job_reject_input(j, "undecodable", false);
        return;
    }
    if (j->id[0] == '\0') {
        job_reject_input(j, "invalid_request: id: must match [A-Za-z0-9_-]{1,64}", false);
        return;
    }
    if (r->user_id == NULL || r->user_id[0] == '\0' || strlen(r->user_id) > KILN_USER_MAX_LEN) {
        job_reject_input(j, "invalid_request: user_id: required, at most 128 bytes", false);
        return;
    }
    if (kiln_jobreq_validate(r, field, sizeof field, msg, sizeof msg) != KILN_OK) {
        snprintf(reason, sizeof reason, "invalid_request: %s: %s", field, msg);
        snprintf(j->err_code, sizeof j->err_code, "invalid_argument");
        snprintf(j->err_msg, sizeof j->err_msg, "%s: %s", field, msg);
        job_reject_input(j, reason, true);
        return;
    }

    job_move(j, CONS_JOB_CHECKED);
    j->max_attempts = kiln_jobreq_max_attempts(r);
    if (cons_job_is_duplicate_copy(j, si)) {
        LOG_INFO("job duplicate copy skipped job=%s lane=%s seq=%llu first_seq=%llu state=%s", j->id,
                 j->lane, (unsigned long long)j->stream_seq, (unsigned long long)si->request_seq,
                 kiln_state_name(si->state));
        kiln_metric_add(cons_g.m_duplicates, 1);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_ACK, 0);
        return;
    }
    if (cons_cancel_recent(j->id)) {
        /* Its cancel went out while it was being fetched (the store check may
         * not have answered, or answered just before the cancel was written). */
        LOG_INFO("job skipped, cancelled job=%s", j->id);
        kiln_metric_add(cons_g.m_skipped, 1);
        job_count(SUM_SKIPPED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_ACK, 0);
        return;
    }
    if (si->known && kiln_state_is_terminal(si->state)) {
        LOG_DEBUG("job skipped, already terminal job=%s state=%s", j->id,
                  kiln_state_name(si->state));
        kiln_metric_add(cons_g.m_skipped, 1);
        job_count(SUM_SKIPPED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_ACK, 0);
        return;
    }
    /* Without the store's word only a first delivery should come here: the
     * fetcher keeps redeliveries and re-drives until the store answers
     * (fetch_waits_for_store). Checked again, as a re-drive run on a guess
     * would be worse than late: its attempt number (NumDelivered: 1) could
     * be below the record's, and the store would ignore its transitions. */
    if (j->redrive_of != 0 && !si->answered) {
        LOG_DEBUG("job re-drive waits for the store job=%s", j->id);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_NAK,
                   JOB_REDRIVE_RETRY_MS);
        return;
    }
    if (si->answered) j->attempt = (si->known ? si->attempts : 0) + 1;
    else j->attempt = j->num_delivered > 0 ? (unsigned)j->num_delivered : 1;

    int64_t now = kiln_now_ms();
    /* A retry's copy can come before the retry is due: one held back for
     * another consumer (fetcher.c) while that one handed the job back for
     * its retry. */
    int64_t due = si->known && si->retry_at_ms > r->not_before_ms ? si->retry_at_ms : r->not_before_ms;
    if (due > now) {
        /* Not due yet: hand it back without using an attempt or holding a slot. */
        int64_t delay = due - now;
        LOG_DEBUG("job not due job=%s delay_ms=%lld", j->id, (long long)delay);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_NAK, delay);
        return;
    }
    if (j->attempt > j->max_attempts) {
        /* The last allowed attempt was interrupted (worker lost): nothing left to try. */
        j->attempt = j->max_attempts;
        job_set_error(j, "attempts_exhausted",
                      "the last attempt was interrupted and no attempts are left");
        snprintf(j->dead_reason, sizeof j->dead_reason,
                 "max_attempts_exhausted: attempt %u was interrupted", j->attempt);
        LOG_WARN("job exhausted before start job=%s attempts=%u", j->id, j->attempt);
        kiln_metric_add(cons_g.m_failed, 1);
        job_count(SUM_FAILED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_FAILED, true, CONS_FINAL_ACK, 0);
        return;
    }

    int64_t gate_wait_ms = 0;
    if (!cons_gate_call_starts(j, &gate_wait_ms)) {
        /* The provider gate closed after this job was fetched (a 429, the
         * breaker): back to JetStream until it may open, no attempt used. */
        LOG_DEBUG("job waits for the provider gate job=%s delay_ms=%lld", j->id,
                  (long long)gate_wait_ms);
        kiln_metric_add(cons_g.m_gate_handbacks, 1);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, false, CONS_FINAL_NAK,
                   gate_wait_ms);
        return;
    }
    /* PROCESSING goes out only if the call is still running after
     * CONS_PROCESSING_AFTER_MS (cons_job_send_processing); the result carries this. */
    j->started_at_ms = kiln_now_ms();
    j->processing_sent = false;
    job_move(j, CONS_JOB_RUNNING);
    LOG_DEBUG("job started job=%s lane=%s attempt=%u max_attempts=%u delivered=%llu", j->id,
              j->lane, j->attempt, j->max_attempts, (unsigned long long)j->num_delivered);
    /* An earlier delivery may have died with its consumer before its call
     * was 250 ms old, recording nothing. A redelivered job records its
     * attempt before the call (written at once: SendAsap), so a job that
     * kills its consumer runs out of attempts instead of looping. */
    if (j->num_delivered > 1) cons_job_send_processing(j);
    cons_transfers_submit(j);
}

void cons_job_send_processing(cons_job *j)
{
    if (j->processing_sent) return;
    j->processing_sent = true;
    /* PROCESSING is informational: no need to wait for its ack. */
    if (cons_publish_transition(j, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, false) != KILN_OK)
        LOG_WARN("processing transition not published job=%s attempt=%u", j->id, j->attempt);
}

void cons_job_transfer_done(cons_job *j, int curl_code, long http_status)
{
    int64_t ms = kiln_mono_ms() - j->started_mono;
    openai_verdict v = openai_handle_result(j, curl_code, http_status, cons_g.set->data_dir);
    free(j->resp);
    j->resp = NULL;
    j->resp_len = j->resp_cap = 0;
    kiln_metric_observe_ms(cons_g.m_provider_ms, (double)ms);
    cons_gate_call_ended(j, v, http_status);

    switch (v) {
    case OPENAI_OK:
        LOG_DEBUG("job completed job=%s attempt=%u images=%zu ms=%lld", j->id, j->attempt,
                  j->n_images, (long long)ms);
        kiln_metric_add(cons_g.m_completed, 1);
        job_count(SUM_COMPLETED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, false, CONS_FINAL_ACK, 0);
        return;
    case OPENAI_RETRY:
        if (j->attempt < j->max_attempts) {
            int64_t delay = cons_retry_delay_ms(j->attempt, cons_g.set->retry_base_ms,
                                                cons_g.set->retry_cap_ms, j->retry_after_ms);
            j->retry_at_ms = kiln_now_ms() + delay;
            LOG_INFO("job retry job=%s attempt=%u max_attempts=%u http=%ld code=%s delay_ms=%lld "
                     "error=\"%s\"",
                     j->id, j->attempt, j->max_attempts, http_status, j->err_code,
                     (long long)delay, j->err_msg);
            kiln_metric_add(cons_g.m_retried, 1);
            job_count(SUM_RETRIED);
            job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_PENDING, false, CONS_FINAL_NAK, delay);
            return;
        }
        snprintf(j->dead_reason, sizeof j->dead_reason, "max_attempts_exhausted: %s: %s",
                 j->err_code, j->err_msg);
        LOG_WARN("job failed, attempts exhausted job=%s attempt=%u code=%s error=\"%s\"", j->id,
                 j->attempt, j->err_code, j->err_msg);
        kiln_metric_add(cons_g.m_failed, 1);
        job_count(SUM_FAILED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_FAILED, true, CONS_FINAL_ACK, 0);
        return;
    case OPENAI_FATAL:
        LOG_WARN("job failed job=%s attempt=%u http=%ld code=%s error=\"%s\"", j->id, j->attempt,
                 http_status, j->err_code, j->err_msg);
        kiln_metric_add(cons_g.m_failed, 1);
        job_count(SUM_FAILED);
        job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_FAILED, false, CONS_FINAL_ACK, 0);
        return;
    }
}

void cons_job_cancelled(cons_job *j)
{
    LOG_INFO("job cancelled job=%s attempt=%u state=%s", j->id, j->attempt,
             cons_job_state_name(j->state));
    j->err_code[0] = '\0';
    kiln_metric_add(cons_g.m_cancelled, 1);
    job_count(SUM_CANCELLED);
    job_finish(j, KILN__V1__JOB_STATE__JOB_STATE_CANCELLED, false, CONS_FINAL_ACK, 0);
}

void cons_job_hand_back(cons_job *j)
{
    LOG_INFO("job handed back at shutdown job=%s attempt=%u", j->id, j->attempt);
    j->final = CONS_FINAL_NAK;
    j->nak_delay_ms = 0;
    job_final(j);
}
