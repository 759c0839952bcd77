/* ackgate.c - a JetStream publish-ack handler whose calls end when its
 * connection is closed.
 *
 * libnats calls a publish-ack handler on the thread of an internal
 * subscription that nothing joins: jsCtx_Destroy and natsConnection_Destroy
 * return while a call may still be running, or about to start. Freeing what
 * the handler uses right after them (the store's announcement check, the
 * gateway's waiting submits, the consumer's transition check) was then a use
 * after free: the likeliest cause of a store's sanitizer report on SIGTERM
 * in CI, whose text CI did not keep.
 *
 * So a gate stands between libnats and the handler. A call counts itself in
 * and then looks whether the gate is shut; kiln_ackgate_close shuts it and
 * then waits for the count to reach 0. With sequentially consistent atomics
 * one of the two always sees the other: no call runs the handler after
 * close returned. Gates are never freed, since libnats may call one late;
 * a process opens one per connection with a handler, a handful in all. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "ackgate.h"

struct kiln_ackgate {
    jsPubAckHandler fn;
    void *arg;
    jsCtx *js;              /* set by kiln_ackgate_bind, under ackgate_mu */
    atomic_int running;     /* calls inside, or about to look at shut */
    atomic_bool shut;
    struct kiln_ackgate *next;
};

/* Every gate ever opened: the list keeps them reachable (not leaks). */
static pthread_mutex_t ackgate_mu = PTHREAD_MUTEX_INITIALIZER;
static kiln_ackgate *ackgate_all;

kiln_ackgate *kiln_ackgate_open(jsPubAckHandler fn, void *arg)
{
    kiln_ackgate *g = calloc(1, sizeof *g);
    if (g == NULL) return NULL;
    g->fn = fn;
    g->arg = arg;
    atomic_init(&g->running, 0);
    atomic_init(&g->shut, false);
    pthread_mutex_lock(&ackgate_mu);
    g->next = ackgate_all;
    ackgate_all = g;
    pthread_mutex_unlock(&ackgate_mu);
    return g;
}

void kiln_ackgate_on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *gate)
{
    kiln_ackgate *g = gate;
    atomic_fetch_add(&g->running, 1);
    if (atomic_load(&g->shut))
        natsMsg_Destroy(msg); /* the handler owned it; its owner is gone */
    else
        g->fn(js, msg, pa, pae, g->arg);
    atomic_fetch_sub(&g->running, 1);
}

void kiln_ackgate_bind(kiln_ackgate *g, jsCtx *js)
{
    pthread_mutex_lock(&ackgate_mu);
    g->js = js;
    pthread_mutex_unlock(&ackgate_mu);
}

void kiln_ackgate_close(jsCtx *js)
{
    if (js == NULL) return;
    kiln_ackgate *g;
    pthread_mutex_lock(&ackgate_mu);
    /* A later context may have the address of a closed one: skip shut gates. */
    for (g = ackgate_all; g != NULL; g = g->next)
        if (g->js == js && !atomic_load(&g->shut)) break;
    if (g != NULL) atomic_store(&g->shut, true);
    pthread_mutex_unlock(&ackgate_mu);
    if (g == NULL) return;
    const struct timespec tick = {0, 1000000}; /* calls are short: poll each 1 ms */
    while (atomic_load(&g->running) > 0) nanosleep(&tick, NULL);
}
