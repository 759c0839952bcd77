/* timers.h - one thread firing deadlines (store request timeouts, ?wait=N),
 * so no waiting client costs a thread. */
#ifndef GW_TIMERS_H
#define GW_TIMERS_H

#include <stdint.h>

#include "status.h"

#define GW_TIMERS_MAX (1 << 20) /* pending deadlines; beyond it adds fail */

/* Called on the timer thread, without locks held. A timer cannot be
 * cancelled: the callee looks token up in its own table and ignores it when
 * the operation already finished. */
typedef void (*gw_timer_fn)(uint64_t token, void *arg);

kiln_status gw_timers_start(void);
/* Stops the thread; timers not yet due are dropped. */
void gw_timers_stop(void);
/* deadline in kiln_mono_ms() time. */
kiln_status gw_timers_add(int64_t deadline_ms, gw_timer_fn fn, uint64_t token, void *arg);

#endif
