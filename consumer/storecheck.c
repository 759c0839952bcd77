/* storecheck.c - the consumer's requests to the store: one kiln.store.check
 * for a set of job ids, what the store knows of each (state, attempts,
 * request_seq), used per fetched batch by the fetcher and per round by the
 * stall check; and cons_store_ask, the request/reply they and the TTL check
 * (retention.c) share. */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "jobreq.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

/* Is rec a usable answer for id? */
static bool storecheck_is(const Kiln__V1__JobRecord *rec, const char *id)
{
    return rec->request != NULL && rec->request->id != NULL && rec->status != NULL &&
           strcmp(rec->request->id, id) == 0;
}

/* The index of id's record in rep, or rep->n_jobs when there is none. */
static size_t storecheck_find(const Kiln__V1__StoreReply *rep, const char *id)
{
    size_t k = 0;
    while (k < rep->n_jobs && !storecheck_is(rep->jobs[k], id)) k++;
    return k;
}

void cons_store_match(const char *const *ids, size_t n, const Kiln__V1__StoreReply *rep,
                      cons_store_info *info)
{
    /* The store answers in request order, skipping ids it does not know:
     * the next unmatched record is the one to try first (one pass for a
     * whole batch); a scan covers any other order. */
    size_t next = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == NULL || ids[i][0] == '\0') continue;
        info[i].answered = true;
        info[i].synced = rep->synced;
        size_t k = next < rep->n_jobs && storecheck_is(rep->jobs[next], ids[i])
                       ? next
                       : storecheck_find(rep, ids[i]);
        if (k == rep->n_jobs) continue;
        const Kiln__V1__JobRecord *rec = rep->jobs[k];
        info[i].known = true;
        info[i].state = rec->status->state;
        info[i].attempts = rec->status->attempts;
        info[i].request_seq = rec->request_seq;
        info[i].retry_at_ms = rec->retry_at_ms;
        info[i].abandoned = kiln_jobrec_abandoned(rec, kiln_now_ms()) != 0;
        if (k == next) next++;
    }
}

kiln_status cons_store_ask(const char *subject, const void *body, size_t len, int64_t timeout_ms,
                           Kiln__V1__StoreReply **out)
{
    natsMsg *reply = NULL;
    *out = NULL;
    natsStatus s =
        natsConnection_Request(&reply, cons_g.nc, subject, body, (int)len, timeout_ms);
    if (s != NATS_OK) return kiln_nats_status(s);
    int rlen = natsMsg_GetDataLength(reply);
    const char *data = natsMsg_GetData(reply);
    *out = kiln__v1__store_reply__unpack(NULL, (size_t)(rlen > 0 ? rlen : 0),
                                         (const uint8_t *)(data != NULL ? data : ""));
    natsMsg_Destroy(reply);
    return *out != NULL ? KILN_OK : KILN_EUNAVAILABLE;
}

kiln_status cons_store_check(const char *const *ids, size_t n, bool sync, int64_t timeout_ms,
                             cons_store_info *info)
{
    Kiln__V1__StoreRequest rq = KILN__V1__STORE_REQUEST__INIT;
    Kiln__V1__StoreReply *rep = NULL;
    char **asked = NULL;
    uint8_t *buf = NULL;
    size_t len = 0, nasked = 0;
    kiln_status st = KILN_OK;

    memset(info, 0, n * sizeof *info);
    asked = calloc(n > 0 ? n : 1, sizeof *asked);
    if (asked == NULL) return KILN_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (ids[i] != NULL && ids[i][0] != '\0') asked[nasked++] = (char *)ids[i];
    if (nasked == 0) goto out;
    rq.n_ids = nasked;
    rq.ids = asked;
    rq.sync = sync;
    st = kiln_pb_pack((const ProtobufCMessage *)&rq, &buf, &len);
    if (st != KILN_OK) goto out;
    int64_t t0 = kiln_mono_ms();
    st = cons_store_ask(KILN_SUBJ_STORE_CHECK, buf, len, timeout_ms, &rep);
    LOG_DEBUG("store check jobs=%zu sync=%d status=%s ms=%lld", nasked, (int)sync,
              kiln_status_str(st), (long long)(kiln_mono_ms() - t0));
    if (st != KILN_OK) goto out;
    if (rep->error_code != NULL && rep->error_code[0] != '\0') {
        st = KILN_EUNAVAILABLE;
        goto out;
    }
    cons_store_match(ids, n, rep, info);
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    free(buf);
    free(asked);
    return st;
}
