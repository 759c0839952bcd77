/* gate.c - guards every use of the NATS connection from request threads.
 *
 * Enter counts first, then checks the flag; close sets the flag, then waits
 * for the count to drop to zero. With sequentially consistent atomics no
 * thread can be inside (or get in) once close returns. */
#include <stdatomic.h>
#include <unistd.h>

#include "gate.h"

static atomic_long gate_users;
static atomic_bool gate_closed;

bool gw_gate_enter(void)
{
    atomic_fetch_add(&gate_users, 1);
    if (atomic_load(&gate_closed)) {
        atomic_fetch_sub(&gate_users, 1);
        return false;
    }
    return true;
}

void gw_gate_leave(void) { atomic_fetch_sub(&gate_users, 1); }

void gw_gate_close(void)
{
    atomic_store(&gate_closed, true);
    while (atomic_load(&gate_users) > 0) usleep(1000);
}
