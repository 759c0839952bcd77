/* lanepause.h - pausing a priority lane: while a lane is paused no consumer
 * fetches from it (jobs already running go on, submits are still accepted
 * and wait). The state lives in the JetStream key-value bucket KILN_CONTROL
 * (key pause.<lane>, value: the reason), so it survives restarts and every
 * consumer sees the same. Set by `kiln pause` / `kiln resume`
 * (kiln_client.h); read by consumers (consumer/pause.c) and `kiln stats`. */
#ifndef KILN_LANEPAUSE_H
#define KILN_LANEPAUSE_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>

#include "queuestats.h"
#include "status.h"

#define KILN_CONTROL_BUCKET "KILN_CONTROL"
#define KILN_PAUSE_REASON_MAX 200 /* bytes of a pause reason, without the NUL */

/* The lane index (KILN_LANE_*) of "high", "normal" or "low"; -1 otherwise. */
int kiln_lane_index(const char *name);

/* Creates the bucket if it does not exist (kiln_provision calls this). */
kiln_status kiln_lane_pause_provision(jsCtx *js);

/* Pauses lane (KILN_LANE_*) with a reason (NULL or "" = "paused"; at most
 * KILN_PAUSE_REASON_MAX bytes, else KILN_EINVAL), or resumes it. */
kiln_status kiln_lane_pause_set(jsCtx *js, int lane, bool paused, const char *reason);

/* Reads every lane's state: paused[i], and its reason into reasons[i] when
 * reasons is not NULL ("" when not paused). Binds the bucket first (one
 * request more than kiln_lane_pause_read_kv). */
kiln_status kiln_lane_pause_read(jsCtx *js, bool paused[KILN_LANES],
                                 char reasons[][KILN_PAUSE_REASON_MAX + 1]);

/* For a poller: binds the bucket once (kvStore_Destroy frees it) ... */
kiln_status kiln_lane_pause_bucket(jsCtx *js, kvStore **out);
/* ... and reads the three keys through it. */
kiln_status kiln_lane_pause_read_kv(kvStore *kv, bool paused[KILN_LANES],
                                    char reasons[][KILN_PAUSE_REASON_MAX + 1]);

#endif
