/* gate.h - guards every use of the NATS connection from request threads, so
 * shutdown can close NATS while HTTP keep-alive requests still arrive. */
#ifndef GW_GATE_H
#define GW_GATE_H

#include <stdbool.h>

/* Returns false once the gate is closed (answer 503); else the caller may use
 * NATS until gw_gate_leave(). */
bool gw_gate_enter(void);
void gw_gate_leave(void);
/* Closes the gate and waits until no thread is inside. */
void gw_gate_close(void);

#endif
