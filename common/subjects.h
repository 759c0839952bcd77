/* subjects.h - NATS subjects, stream and durable names used by every binary. */
#ifndef KILN_SUBJECTS_H
#define KILN_SUBJECTS_H

/* Public (CONTRACT §4). */
#define KILN_SUBJ_GENERATE "jobs.generate"
#define KILN_SUBJ_GENERATE_HIGH "jobs.generate.high"
#define KILN_SUBJ_GENERATE_LOW "jobs.generate.low"
#define KILN_SUBJ_DONE "jobs.done"
#define KILN_SUBJ_STATUS "jobs.status"
#define KILN_SUBJ_CANCEL "jobs.cancel"
#define KILN_SUBJ_DEAD "jobs.dead"

/* Internal. */
#define KILN_SUBJ_TRANSITION "kiln.tx"          /* JobTransition, consumer -> store */
#define KILN_SUBJ_STORE_GET "kiln.store.get"    /* StoreRequest -> StoreReply */
#define KILN_SUBJ_STORE_LIST "kiln.store.list"
#define KILN_SUBJ_STORE_VIEWED "kiln.store.viewed"
#define KILN_SUBJ_STORE_CANCEL "kiln.store.cancel"
#define KILN_SUBJ_STORE_CHECK "kiln.store.check"  /* ids of a fetched batch -> their states */
#define KILN_SUBJ_STORE_PING "kiln.store.ping"    /* empty -> empty reply: readiness */
#define KILN_SUBJ_STORE_IDEM "kiln.store.idem"    /* reserve or look up an Idempotency-Key */
#define KILN_SUBJ_EVENTS_PREFIX "kiln.events."      /* + hex(user) + "." + id: every status change, JobRecord */
/* kiln.events.<hex(user)>.$new: EventBatch of new records ("$" is never in a job id) */
#define KILN_EVENTS_NEW_TOKEN "$new"
#define KILN_EVENTS_BATCH_MAX 1024 /* records per EventBatch; SSE ids keep 12 bits for the index */
#define KILN_SUBJ_CANCELLED_PREFIX "kiln.cancelled." /* + job id: broadcast to consumers */
#define KILN_SUBJ_CONSUMER_STATUS "kiln.consumer.status" /* empty -> ConsumerStatus from each consumer */
#define KILN_SUBJ_CONSUMER_RUNNING "kiln.consumer.running" /* RunningQuery -> RunningReply from a runner */
#define KILN_SUBJ_CONSUMER_PROVIDER "kiln.consumer.provider" /* ProviderNews, to every consumer */
#define KILN_STORE_QUEUE "kiln-store"

/* Streams. KILN_JOBS holds the three job lanes and the transitions, with
 * interest retention: a job stays until both its lane's worker durable and
 * the store durable acked it. */
#define KILN_STREAM_JOBS "KILN_JOBS"
#define KILN_STREAM_DONE "KILN_DONE"
#define KILN_STREAM_DEAD "KILN_DEAD"
#define KILN_STREAM_EVENTS "KILN_EVENTS" /* kiln.events.>, limits retention: SSE replay */

#define KILN_DURABLE_HIGH "kiln-worker-high"
#define KILN_DURABLE_NORMAL "kiln-worker-normal"
#define KILN_DURABLE_LOW "kiln-worker-low"
#define KILN_DURABLE_STORE "kiln-store"

/* Headers. */
#define KILN_HDR_JOB_ID "Kiln-Job-Id"
#define KILN_HDR_STATUS "Kiln-Status"
#define KILN_HDR_REASON "Kiln-Reason"
#define KILN_HDR_ERROR "Kiln-Error"
#define KILN_HDR_MSG_ID "Nats-Msg-Id"
#define KILN_HDR_EVENT_KEY "Kiln-Event-Key" /* KILN_EVENTS: "<id>.<state>.<attempts>.ev" (store/events.h) */
#define KILN_HDR_TX_BATCH "Kiln-Tx-Batch" /* kiln.tx: a TransitionBatch of this many */
#define KILN_HDR_REDRIVE "Kiln-Redrive" /* re-published lost job: its original KILN_JOBS sequence */
#define KILN_HDR_LANE "Kiln-Lane" /* jobs.dead: the lane ("high", "normal", "low") the job came on */

#endif
