/* ctx.c - the consumer's process-wide context (cons_g) and its metrics, kept
 * out of main.c so the modules link into the unit-test binary. */
#include "cons.h"

cons_ctx cons_g;

void cons_ctx_register_metrics(void)
{
    cons_g.m_completed = kiln_metric_counter("kiln_consumer_jobs_completed_total", "jobs completed");
    cons_g.m_failed = kiln_metric_counter("kiln_consumer_jobs_failed_total", "jobs failed");
    cons_g.m_retried = kiln_metric_counter("kiln_consumer_jobs_retried_total",
                                           "attempts that ended in a retry");
    cons_g.m_cancelled = kiln_metric_counter("kiln_consumer_jobs_cancelled_total",
                                             "jobs cancelled while in flight");
    cons_g.m_dead = kiln_metric_counter("kiln_consumer_dead_letters_total",
                                        "messages copied to jobs.dead");
    cons_g.m_skipped = kiln_metric_counter("kiln_consumer_jobs_skipped_total",
                                           "deliveries skipped because the job was already terminal");
    cons_g.m_duplicates = kiln_metric_counter(
        "kiln_consumer_duplicates_skipped_total",
        "copies of a job not run: second copies of an id (published after the duplicate window, acked), "
        "and redeliveries of a message whose call still runs here or in another consumer (left to "
        "that call)");
    cons_g.m_peer_holds = kiln_metric_counter(
        "kiln_consumer_redeliveries_held_total",
        "redeliveries of a job whose record says a call began (or that the store could not tell "
        "about) and no consumer answered for (it died, or is still reconnecting): kept unacked for "
        "1 s, once per consumer, before they run");
    cons_g.m_store_waits = kiln_metric_counter(
        "kiln_consumer_store_waits_total",
        "copies kept unacked until the store could answer for them: redeliveries (their attempt "
        "number is the store's record plus one) and copies at the end of a hold");
    cons_g.m_resent = kiln_metric_counter(
        "kiln_consumer_publishes_resent_total",
        "transitions and dead letters published again because a reconnect lost their JetStream ack "
        "(the job goes on instead of running again)");
    cons_g.m_redelivered = kiln_metric_counter(
        "kiln_consumer_redeliveries_total",
        "job messages received again (JetStream NumDelivered > 1: retries, delays, hand-backs, "
        "a lost worker's jobs)");
    cons_g.m_idle_polls = kiln_metric_counter(
        "kiln_consumer_idle_polls_total", "long polls with every lane empty (the consumer had nothing to do)");
    cons_g.m_tx_batches = kiln_metric_counter(
        "kiln_consumer_transition_batches_total",
        "TransitionBatch messages published (the results of one transfer round)");
    cons_g.m_tx_batched = kiln_metric_counter("kiln_consumer_transitions_batched_total",
                                              "transitions published inside a TransitionBatch");
    cons_g.m_mem_paused = kiln_metric_gauge("kiln_consumer_fetch_paused_low_memory",
                                            "1 while fetching is paused for low available memory");
    cons_g.m_in_flight = kiln_metric_gauge("kiln_consumer_in_flight", "jobs holding a slot");
    cons_g.m_gate_waiting = kiln_metric_gauge(
        "kiln_consumer_provider_waiting",
        "1 while new provider calls wait: after a 429 (its Retry-After) or with the breaker tripped");
    cons_g.m_gate_tripped = kiln_metric_gauge(
        "kiln_consumer_provider_breaker_tripped",
        "1 while the provider is taken for down: one call at a time until one is answered");
    cons_g.m_gate_rate_pauses = kiln_metric_counter(
        "kiln_consumer_provider_rate_limit_pauses_total",
        "times a 429 stopped new provider calls for its Retry-After");
    cons_g.m_gate_trips = kiln_metric_counter(
        "kiln_consumer_provider_breaker_trips_total",
        "times KILN_PROVIDER_TRIP_AFTER unavailable calls in a row tripped the breaker");
    cons_g.m_gate_peer_pauses = kiln_metric_counter(
        "kiln_consumer_provider_peer_pauses_total",
        "times another consumer's 429 or tripped breaker held this one's new calls back");
    cons_g.m_gate_handbacks = kiln_metric_counter(
        "kiln_consumer_provider_handbacks_total",
        "jobs handed back untried because the provider gate closed after they were fetched");
    cons_g.m_provider_ms = kiln_metric_histogram_ms("kiln_consumer_provider_ms",
                                                    "provider call duration");
}
