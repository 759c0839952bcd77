/* stats.c - the client library's queue depths and lane pauses
 * (common/queuestats.c, common/lanepause.c over the client's JetStream
 * context). */
#include "client_internal.h"
#include "kiln_client.h"

kiln_status kiln_client_stats(kiln_client *c, kiln_queue_stats *out) {
    if (c == NULL || out == NULL) return KILN_EINVAL;
    return kiln_queue_stats_read(c->nc, c->js, out);
}

kiln_status kiln_client_pause(kiln_client *c, int lane, int paused, const char *reason) {
    if (c == NULL) return KILN_EINVAL;
    return kiln_lane_pause_set(c->js, lane, paused != 0, reason);
}
