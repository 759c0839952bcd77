/* pause.c - which lanes `kiln pause` paused: read from the KILN_CONTROL
 * bucket (common/lanepause.c) once at start and then every
 * CONS_PAUSE_POLL_MS on a periodic thread; the fetcher skips a paused lane.
 *
 * Polled rather than watched: three key reads per interval (the bucket is
 * bound once) are cheap, and a poll needs no recovery after a NATS
 * reconnect. A failed read keeps the last known state (a consumer that
 * never read one fetches from every lane). */
#include <stdatomic.h>

#include "cons.h"
#include "lanepause.h"
#include "log.h"
#include "periodic.h"

static atomic_bool pause_state[KILN_LANES];
static kiln_periodic *pause_timer;
/* Bound by the first read that can (pause_read: the main thread at start,
 * then only the pause thread); NULL until then. */
static kvStore *pause_kv;
static kiln_metric *pause_m[KILN_LANES];
static bool pause_failing;

static void pause_read(void) {
    bool paused[KILN_LANES];
    char reasons[KILN_LANES][KILN_PAUSE_REASON_MAX + 1];
    kiln_status st = pause_kv != NULL ? KILN_OK : kiln_lane_pause_bucket(cons_g.js, &pause_kv);
    if (st == KILN_OK) st = kiln_lane_pause_read_kv(pause_kv, paused, reasons);
    if (st != KILN_OK) {
        if (!pause_failing)
            LOG_WARN("lane pauses unreadable, keeping the last known status=%s",
                     kiln_status_str(st));
        pause_failing = true;
        return;
    }
    pause_failing = false;
    bool changed = false;
    for (int i = 0; i < KILN_LANES; i++) {
        bool was = atomic_exchange(&pause_state[i], paused[i]);
        kiln_metric_set(pause_m[i], paused[i] ? 1 : 0);
        if (was == paused[i]) continue;
        changed = true;
        if (paused[i])
            LOG_INFO("lane paused, not fetching from it lane=%s reason=\"%s\"", kiln_lanes[i].name,
                     reasons[i]);
        else
            LOG_INFO("lane resumed lane=%s", kiln_lanes[i].name);
    }
    /* The fetcher may be in a long poll begun before the change; whatever
     * that poll still brings from a paused lane goes back (fetcher.c). */
    if (changed) cons_fetcher_wake(); /* a no-op before the fetcher runs */
}

static void pause_tick(kiln_periodic *p, void *arg) {
    (void)p;
    (void)arg;
    pause_read();
}

bool cons_pause_lane(int lane) {
    return lane >= 0 && lane < KILN_LANES && atomic_load(&pause_state[lane]);
}

kiln_status cons_pause_start(void) {
    for (int i = 0; i < KILN_LANES; i++) {
        atomic_init(&pause_state[i], false);
        pause_m[i] = kiln_metric_gauge_labeled("kiln_consumer_lane_paused", kiln_lanes[i].label,
                                               "1 while the lane is paused (kiln pause)");
    }
    pause_read();
    return kiln_periodic_start("kiln-pause", CONS_PAUSE_POLL_MS, pause_tick, NULL, &pause_timer);
}

void cons_pause_stop(void) {
    kiln_periodic_stop(pause_timer);
    pause_timer = NULL;
    if (pause_kv != NULL) kvStore_Destroy(pause_kv);
    pause_kv = NULL;
}
