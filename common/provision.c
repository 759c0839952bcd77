/* provision.c - idempotent create-or-update of Kiln's streams and durable consumers. */
#include <string.h>

#include "clock.h"
#include "lanepause.h"
#include "log.h"
#include "natsconn.h"
#include "provision.h"
#include "queuestats.h"

#include <stdbool.h>
#include "subjects.h"

#define PROV_NS_PER_MS 1000000LL
#define PROV_STORE_ACK_WAIT_MS 30000
#define PROV_STORE_MAX_ACK_PENDING 50000
#define PROV_ATTEMPTS 4    /* passes before kiln_provision gives up */
#define PROV_RETRY_MS 100  /* pause after the first failed pass; doubles */
#define PROV_RETRY_MAX_SHIFT 4 /* up to 1.6 s between passes */

void kiln_provision_opts_init(kiln_provision_opts *o)
{
    if (o == NULL) return;
    memset(o, 0, sizeof *o);
    o->ack_wait_ms = 30000;
    o->max_ack_pending = 20000;
    o->dup_window_ms = 30000;
    o->done_max_age_ms = 7LL * 24 * 3600 * 1000;
    o->dead_max_age_ms = 30LL * 24 * 3600 * 1000;
    o->events_max_age_ms = 3600LL * 1000;
}

kiln_status kiln_provision_store_config(jsConsumerConfig *cc, const char *name, uint64_t start_seq)
{
    natsStatus s = jsConsumerConfig_Init(cc);
    if (s != NATS_OK) return kiln_nats_status(s);
    cc->Durable = name;
    cc->DeliverPolicy = start_seq > 0 ? js_DeliverByStartSequence : js_DeliverAll;
    cc->OptStartSeq = start_seq;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = PROV_STORE_ACK_WAIT_MS * PROV_NS_PER_MS;
    cc->MaxAckPending = PROV_STORE_MAX_ACK_PENDING;
    cc->MaxDeliver = -1;
    return KILN_OK;
}

static const char *prov_err_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t != NULL && t[0] != '\0' ? t : natsStatus_GetText(s);
}

/* A transient failure is retried (kiln_provision): a warning; anything
 * else is an error. */
static kiln_log_level prov_level(kiln_status st)
{
    return kiln_nats_transient(st) ? KILN_LOG_WARN : KILN_LOG_ERROR;
}

/* Adds the stream if it does not exist, else (when update) updates it to cfg. */
static kiln_status prov_stream(jsCtx *js, jsStreamConfig *cfg, bool update)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *action = "updated";
    natsStatus s = js_GetStreamInfo(&si, js, cfg->Name, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    si = NULL;
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jerr = 0;
        s = js_AddStream(&si, js, cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        si = NULL;
        action = "created";
        /* Another process created it between our get and add. */
        if (s != NATS_OK && jerr == JSStreamNameExistErr && !update) {
            s = NATS_OK; /* created meanwhile by another process: keep its config */
            action = "kept";
        } else if (s != NATS_OK && jerr == JSStreamNameExistErr) {
            jerr = 0;
            s = js_UpdateStream(&si, js, cfg, NULL, &jerr);
            jsStreamInfo_Destroy(si);
            si = NULL;
            action = "updated";
        }
    } else if (s == NATS_OK && !update) {
        action = "kept";
    } else if (s == NATS_OK) {
        s = js_UpdateStream(&si, js, cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        si = NULL;
    }
    if (s != NATS_OK) {
        kiln_status st = kiln_nats_status(s);
        KILN_LOG(prov_level(st), "provision stream failed stream=%s status=%s js_err=%d error=\"%s\"", cfg->Name,
               natsStatus_GetText(s), (int)jerr, prov_err_text(s));
        return st;
    }
    LOG_DEBUG("provision stream=%s action=%s", cfg->Name, action);
    return KILN_OK;
}

/* Adds the durable if it does not exist, else (when update) updates it to cfg. */
static kiln_status prov_consumer(jsCtx *js, const char *stream, jsConsumerConfig *cfg, bool update)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    const char *action = "updated";
    natsStatus s = js_GetConsumerInfo(&ci, js, stream, cfg->Durable, NULL, &jerr);
    /* Where a durable starts cannot be updated: kiln-store may have been
     * re-created from a sequence (store/resync.c). */
    if (s == NATS_OK && ci != NULL && ci->Config != NULL) {
        cfg->DeliverPolicy = ci->Config->DeliverPolicy;
        cfg->OptStartSeq = ci->Config->OptStartSeq;
        cfg->OptStartTime = ci->Config->OptStartTime;
    }
    jsConsumerInfo_Destroy(ci);
    ci = NULL;
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jerr = 0;
        s = js_AddConsumer(&ci, js, stream, cfg, NULL, &jerr);
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        action = "created";
        bool exists = jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr;
        if (s != NATS_OK && exists && !update) {
            s = NATS_OK; /* created meanwhile by another process: keep its config */
            action = "kept";
        } else if (s != NATS_OK && exists) {
            jerr = 0;
            s = js_UpdateConsumer(&ci, js, stream, cfg, NULL, &jerr);
            jsConsumerInfo_Destroy(ci);
            ci = NULL;
            action = "updated";
        }
    } else if (s == NATS_OK && !update) {
        action = "kept";
    } else if (s == NATS_OK) {
        s = js_UpdateConsumer(&ci, js, stream, cfg, NULL, &jerr);
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
    }
    if (s != NATS_OK) {
        kiln_status st = kiln_nats_status(s);
        KILN_LOG(prov_level(st), "provision consumer failed stream=%s durable=%s status=%s js_err=%d error=\"%s\"",
               stream, cfg->Durable, natsStatus_GetText(s), (int)jerr, prov_err_text(s));
        return st;
    }
    LOG_DEBUG("provision consumer=%s stream=%s action=%s", cfg->Durable, stream, action);
    return KILN_OK;
}

/* A limits-retention stream with one subject, kept for max_age_ms. */
static kiln_status prov_limits_stream(jsCtx *js, const char *name, const char *subject,
                                      int64_t max_age_ms, bool update)
{
    const char *subjects[] = {subject};
    jsStreamConfig cfg;
    natsStatus s = jsStreamConfig_Init(&cfg);
    if (s != NATS_OK) return kiln_nats_status(s);
    cfg.Name = name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Retention = js_LimitsPolicy;
    cfg.Storage = js_FileStorage;
    cfg.MaxAge = max_age_ms * PROV_NS_PER_MS;
    return prov_stream(js, &cfg, update);
}

/* One pass over every stream and durable. */
static kiln_status prov_once(jsCtx *js, const kiln_provision_opts *o)
{
    kiln_provision_opts def, eff;
    kiln_status st = KILN_OK;
    natsStatus s = NATS_OK;
    kiln_provision_opts_init(&def);
    /* Unset (<= 0) fields take their defaults. */
    eff = o != NULL ? *o : def;
    if (eff.ack_wait_ms <= 0) eff.ack_wait_ms = def.ack_wait_ms;
    if (eff.max_ack_pending <= 0) eff.max_ack_pending = def.max_ack_pending;
    if (eff.dup_window_ms <= 0) eff.dup_window_ms = def.dup_window_ms;
    if (eff.done_max_age_ms <= 0) eff.done_max_age_ms = def.done_max_age_ms;
    if (eff.dead_max_age_ms <= 0) eff.dead_max_age_ms = def.dead_max_age_ms;
    if (eff.events_max_age_ms <= 0) eff.events_max_age_ms = def.events_max_age_ms;
    o = &eff;

    /* KILN_JOBS: the three lanes and the transitions; interest retention
     * keeps a message until the lane's worker durable and the store acked it. */
    static const char *jobs_subjects[] = {KILN_SUBJ_GENERATE, KILN_SUBJ_GENERATE_HIGH,
                                          KILN_SUBJ_GENERATE_LOW, KILN_SUBJ_TRANSITION};
    jsStreamConfig jobs;
    s = jsStreamConfig_Init(&jobs);
    if (s != NATS_OK) return kiln_nats_status(s);
    jobs.Name = KILN_STREAM_JOBS;
    jobs.Subjects = jobs_subjects;
    jobs.SubjectsLen = (int)(sizeof jobs_subjects / sizeof jobs_subjects[0]);
    jobs.Retention = js_InterestPolicy;
    jobs.Storage = js_FileStorage;
    jobs.Duplicates = o->dup_window_ms * PROV_NS_PER_MS;
    st = prov_stream(js, &jobs, o->update_existing);
    if (st != KILN_OK) return st;

    /* The public outputs and the SSE replay log keep messages by age. */
    st = prov_limits_stream(js, KILN_STREAM_DONE, KILN_SUBJ_DONE, o->done_max_age_ms, o->update_existing);
    if (st == KILN_OK)
        st = prov_limits_stream(js, KILN_STREAM_DEAD, KILN_SUBJ_DEAD, o->dead_max_age_ms, o->update_existing);
    if (st == KILN_OK)
        st = prov_limits_stream(js, KILN_STREAM_EVENTS, KILN_SUBJ_EVENTS_PREFIX ">",
                                o->events_max_age_ms, o->update_existing);
    if (st != KILN_OK) return st;

    /* One worker durable per lane (common/queuestats.h). */
    for (int i = 0; i < KILN_LANES; i++) {
        jsConsumerConfig cc;
        s = jsConsumerConfig_Init(&cc);
        if (s != NATS_OK) return kiln_nats_status(s);
        cc.Durable = kiln_lanes[i].durable;
        cc.FilterSubject = kiln_lanes[i].subject;
        cc.DeliverPolicy = js_DeliverAll;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = o->ack_wait_ms * PROV_NS_PER_MS;
        cc.MaxAckPending = o->max_ack_pending;
        cc.MaxDeliver = -1; /* Kiln counts attempts itself */
        st = prov_consumer(js, KILN_STREAM_JOBS, &cc, o->update_existing);
        if (st != KILN_OK) return st;
    }

    jsConsumerConfig store;
    st = kiln_provision_store_config(&store, KILN_DURABLE_STORE, 0);
    if (st != KILN_OK) return st;
    st = prov_consumer(js, KILN_STREAM_JOBS, &store, o->update_existing);
    if (st != KILN_OK) return st;

    st = kiln_lane_pause_provision(js);
    if (st != KILN_OK) return st;

    LOG_INFO("provisioned streams=%s,%s,%s,%s ack_wait_ms=%lld max_ack_pending=%lld", KILN_STREAM_JOBS,
             KILN_STREAM_DONE, KILN_STREAM_DEAD, KILN_STREAM_EVENTS, (long long)o->ack_wait_ms,
             (long long)o->max_ack_pending);
    return KILN_OK;
}

kiln_status kiln_provision(jsCtx *js, const kiln_provision_opts *o)
{
    if (js == NULL || o == NULL) return KILN_EINVAL;
    int64_t give_up_at = kiln_mono_ms() + o->retry_for_ms;
    int races = 1;
    kiln_status st = prov_once(js, o);
    /* Every binary provisions at start, often at the same moment: a create
     * that lost a race with another process's can be answered with an error
     * by JetStream (or find its API not yet answering). The next pass finds
     * what the winner made. A timeout or a lost connection (nats-server
     * restarting) is waited out only when the caller asked for it. */
    for (int pass = 1; st != KILN_OK; pass++) {
        bool wait_out = kiln_nats_transient(st) && o->retry_for_ms > 0 && kiln_mono_ms() < give_up_at;
        /* Past the deadline an unreachable API is no race: the caller's wait is over. */
        bool race = (st == KILN_ENATS || (st == KILN_EUNAVAILABLE && o->retry_for_ms <= 0)) &&
                    races < PROV_ATTEMPTS;
        if (!wait_out && !race) break;
        if (!wait_out) races++;
        int shift = pass - 1 < PROV_RETRY_MAX_SHIFT ? pass - 1 : PROV_RETRY_MAX_SHIFT;
        int64_t pause_ms = (int64_t)PROV_RETRY_MS << shift;
        LOG_WARN("provisioning failed, retrying attempt=%d status=%s pause_ms=%lld", pass,
                 kiln_status_str(st), (long long)pause_ms);
        if (kiln_nats_wait_or_stop(pause_ms)) return KILN_ESTOPPED;
        st = prov_once(js, o);
    }
    if (kiln_nats_transient(st))
        LOG_ERROR("provisioning gave up status=%s: the JetStream API did not answer (is nats-server "
                  "running with JetStream, -js?)",
                  kiln_status_str(st));
    return st;
}
