/* nextseq.c - the next sequence KILN_JOBS still holds at or after a given
 * one, of any subject or of one, in one JetStream API request. The stall
 * check walks a durable's range with it: a run of sequences gone from the
 * stream (acked by every durable, or lost), or of other lanes, costs one
 * request instead of one js_GetMsg each. nats.c 3.4.1 offers "next by
 * subject" only through the direct get API, which the stream would have to
 * allow (allow_direct); the stream's own $JS.API.STREAM.MSG.GET takes
 * {"seq", "next_by_subj"} on 2.9.10. */
#include <inttypes.h>
#include <stdio.h>

#include <jansson.h>

#include "cons.h"
#include "subjects.h"

#define NEXTSEQ_NO_MESSAGE 10037 /* JetStream's "no message found" */

cons_nextseq_result cons_nextseq_parse(const char *reply, size_t len, uint64_t *seq)
{
    json_error_t jerr;
    json_t *root = json_loadb(reply, len, 0, &jerr);
    if (root == NULL) return CONS_NEXTSEQ_FAILED;
    cons_nextseq_result r = CONS_NEXTSEQ_FAILED;
    json_t *msg = json_object_get(root, "message");
    json_t *err = json_object_get(root, "error");
    json_t *s = json_object_get(msg, "seq");
    if (json_is_integer(s) && json_integer_value(s) > 0) {
        *seq = (uint64_t)json_integer_value(s);
        r = CONS_NEXTSEQ_FOUND;
    } else if (json_is_object(err) &&
               json_integer_value(json_object_get(err, "err_code")) == NEXTSEQ_NO_MESSAGE) {
        r = CONS_NEXTSEQ_NONE;
    }
    json_decref(root);
    return r;
}

cons_nextseq_result cons_nextseq(uint64_t from, const char *subject, int64_t timeout_ms, uint64_t *seq)
{
    char body[128];
    /* ">" matches every subject of the stream. (Kiln's subjects need no JSON escapes.) */
    int n = snprintf(body, sizeof body, "{\"seq\":%" PRIu64 ",\"next_by_subj\":\"%s\"}", from,
                     subject != NULL ? subject : ">");
    if (n < 0 || (size_t)n >= sizeof body) return CONS_NEXTSEQ_FAILED;
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, cons_g.nc, "$JS.API.STREAM.MSG.GET." KILN_STREAM_JOBS,
                                          body, n, timeout_ms);
    if (s != NATS_OK) return CONS_NEXTSEQ_FAILED;
    int len = natsMsg_GetDataLength(reply);
    cons_nextseq_result r = len > 0 ? cons_nextseq_parse(natsMsg_GetData(reply), (size_t)len, seq)
                                    : CONS_NEXTSEQ_FAILED;
    natsMsg_Destroy(reply);
    return r;
}
