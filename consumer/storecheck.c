/* storecheck.c - one kiln.store.check request for a set of job ids: what the
 * store knows of each (state, attempts, request_seq). Used per fetched batch
 * by the fetcher and per round by the stall check. */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

kiln_status cons_store_check(const char *const *ids, size_t n, bool sync, int64_t timeout_ms,
                             cons_store_info *info)
{
    Kiln__V1__StoreRequest rq = KILN__V1__STORE_REQUEST__INIT;
    Kiln__V1__StoreReply *rep = NULL;
    char **asked = NULL;
    uint8_t *buf = NULL;
    size_t len = 0, nasked = 0;
    natsMsg *reply = NULL;
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
    natsStatus s = natsConnection_Request(&reply, cons_g.nc, KILN_SUBJ_STORE_CHECK, buf, (int)len,
                                          timeout_ms);
    LOG_DEBUG("store check jobs=%zu sync=%d status=%s ms=%lld", nasked, (int)sync,
              natsStatus_GetText(s), (long long)(kiln_mono_ms() - t0));
    if (s != NATS_OK) {
        st = kiln_nats_status(s);
        goto out;
    }
    int rlen = natsMsg_GetDataLength(reply);
    rep = kiln__v1__store_reply__unpack(NULL, (size_t)(rlen > 0 ? rlen : 0),
                                        (const uint8_t *)natsMsg_GetData(reply));
    if (rep == NULL || (rep->error_code != NULL && rep->error_code[0] != '\0')) {
        st = KILN_EUNAVAILABLE;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == NULL || ids[i][0] == '\0') continue;
        info[i].answered = true;
        for (size_t k = 0; k < rep->n_jobs; k++) {
            const Kiln__V1__JobRecord *rec = rep->jobs[k];
            if (rec->request == NULL || rec->request->id == NULL || rec->status == NULL) continue;
            if (strcmp(rec->request->id, ids[i]) != 0) continue;
            info[i].known = true;
            info[i].state = rec->status->state;
            info[i].attempts = rec->status->attempts;
            info[i].request_seq = rec->request_seq;
            break;
        }
    }
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    natsMsg_Destroy(reply);
    free(buf);
    free(asked);
    return st;
}
