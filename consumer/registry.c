/* registry.c - the jobs in flight in this process, and the map from a
 * published message (waiting for its JetStream ack) back to its job. One
 * mutex guards both; it is held only for list and map updates and for
 * in-progress acks, which only queue bytes. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static cons_job *reg_head;
static cons_job **reg_buckets;     /* by published message (pending_pub) */
static size_t reg_pub_waiting;     /* jobs with a pending_pub */
static cons_job **reg_seq_buckets; /* by reg_origin */
static size_t reg_nbuckets;        /* of each; a power of two */

kiln_status cons_registry_init(int64_t concurrency)
{
    size_t n = 64;
    while ((int64_t)n < concurrency * 2) n <<= 1;
    reg_buckets = calloc(n, sizeof *reg_buckets);
    reg_seq_buckets = calloc(n, sizeof *reg_seq_buckets);
    if (reg_buckets == NULL || reg_seq_buckets == NULL) {
        cons_registry_destroy();
        return KILN_ENOMEM;
    }
    reg_nbuckets = n;
    return KILN_OK;
}

void cons_registry_destroy(void)
{
    free(reg_buckets);
    free(reg_seq_buckets);
    reg_buckets = reg_seq_buckets = NULL;
    reg_nbuckets = 0;
}

static size_t reg_hash(const natsMsg *m)
{
    uintptr_t p = (uintptr_t)m;
    p ^= p >> 17;
    p *= (uintptr_t)0x9E3779B97F4A7C15ULL;
    return (size_t)(p >> 7) & (reg_nbuckets - 1);
}

static size_t reg_seq_hash(uint64_t seq)
{
    return (size_t)((seq * 0x9E3779B97F4A7C15ULL) >> 7) & (reg_nbuckets - 1);
}

/* The message a job's copies share: a re-drive's original, else its own.
 * The sweep's or a stall check's re-drive is a new message of the same
 * job: it must not run here beside a copy of the one it replaced. */
static uint64_t reg_origin(const cons_job *j)
{
    return j->redrive_of != 0 ? j->redrive_of : j->stream_seq;
}

bool cons_registry_add(cons_job *j)
{
    pthread_mutex_lock(&reg_mu);
    /* A copy of a message whose job is in flight here: a redelivery whose
     * first delivery's in-progress acks did not reach the server within
     * AckWait (e.g. across a NATS outage), a first delivery nats-server
     * 2.9 handed out again with its count back at 1 (a failed redelivery
     * steps its new-message sequence back: design.md), or a re-drive of a
     * message held here, or that message beside its re-drive. */
    uint64_t origin = reg_origin(j);
    if (origin != 0) {
        cons_job **b = &reg_seq_buckets[reg_seq_hash(origin)];
        for (const cons_job *o = *b; o != NULL; o = o->seq_next) {
            if (reg_origin(o) == origin) {
                pthread_mutex_unlock(&reg_mu);
                return false;
            }
        }
        j->seq_next = *b;
        *b = j;
    }
    j->reg_prev = NULL;
    j->reg_next = reg_head;
    if (reg_head != NULL) reg_head->reg_prev = j;
    reg_head = j;
    j->in_registry = true;
    pthread_mutex_unlock(&reg_mu);
    return true;
}

static void reg_unlink(cons_job *j)
{
    if (!j->in_registry) return;
    if (reg_origin(j) != 0) {
        cons_job **pp = &reg_seq_buckets[reg_seq_hash(reg_origin(j))];
        while (*pp != NULL && *pp != j) pp = &(*pp)->seq_next;
        if (*pp == j) *pp = j->seq_next;
        j->seq_next = NULL;
    }
    if (j->reg_prev != NULL) j->reg_prev->reg_next = j->reg_next;
    else reg_head = j->reg_next;
    if (j->reg_next != NULL) j->reg_next->reg_prev = j->reg_prev;
    j->reg_prev = j->reg_next = NULL;
    j->in_registry = false;
}

/* Removes j from its hash bucket; caller holds reg_mu. */
static void reg_unhash(cons_job *j)
{
    if (j->pending_pub == NULL) return;
    cons_job **pp = &reg_buckets[reg_hash(j->pending_pub)];
    while (*pp != NULL && *pp != j) pp = &(*pp)->pub_next;
    if (*pp == j) *pp = j->pub_next;
    j->pub_next = NULL;
    j->pending_pub = NULL;
    reg_pub_waiting--;
}

void cons_registry_remove(cons_job *j)
{
    pthread_mutex_lock(&reg_mu);
    reg_unhash(j);
    reg_unlink(j);
    pthread_mutex_unlock(&reg_mu);
}

int cons_registry_cancel(const char *id)
{
    int n = 0;
    pthread_mutex_lock(&reg_mu);
    for (cons_job *j = reg_head; j != NULL; j = j->reg_next) {
        if (strcmp(j->id, id) == 0) {
            atomic_store(&j->cancel, true);
            n++;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return n;
}

void cons_registry_keepalive(void)
{
    int n = 0, failed = 0;
    pthread_mutex_lock(&reg_mu);
    for (cons_job *j = reg_head; j != NULL; j = j->reg_next) {
        if (kiln_msg_ack(cons_g.ack_nc, j->msg, KILN_ACK_PROGRESS, 0) != KILN_OK) failed++;
        n++;
    }
    pthread_mutex_unlock(&reg_mu);
    if (failed > 0) LOG_WARN("in-progress ack failed jobs=%d failed=%d", n, failed);
    else LOG_DEBUG("in-progress acks sent jobs=%d", n);
}

static int reg_seq_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

size_t cons_registry_held_seqs(const uint64_t *seqs, size_t n, uint64_t *held)
{
    /* Sorted first: one walk of the in-flight list under the lock. */
    uint64_t *sorted = malloc(n * sizeof *sorted);
    bool *named = calloc(n, sizeof *named); /* named[i]: sorted[i] is in held */
    if (sorted == NULL || named == NULL) {
        free(sorted);
        free(named);
        return 0;
    }
    memcpy(sorted, seqs, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, reg_seq_cmp);
    size_t k = 0;
    pthread_mutex_lock(&reg_mu);
    for (cons_job *j = reg_head; j != NULL && k < n; j = j->reg_next) {
        /* A re-drive holds its job for its original message too: another
         * consumer may have a copy of that one (chaos run 3110). */
        const uint64_t mine[2] = {j->stream_seq, j->redrive_of};
        bool acked = false;
        for (size_t m = 0; m < 2 && k < n; m++) {
            const uint64_t *hit =
                mine[m] == 0 ? NULL : bsearch(&mine[m], sorted, n, sizeof *sorted, reg_seq_cmp);
            if (hit == NULL) continue;
            /* The asker has a copy because nats-server thinks this one died:
             * tell it otherwise now, not at the next keep-alive round. */
            if (!acked && kiln_msg_ack(cons_g.ack_nc, j->msg, KILN_ACK_PROGRESS, 0) != KILN_OK)
                LOG_WARN("in-progress ack failed job=%s", j->id);
            acked = true;
            /* Two copies of one sequence here (a count-reset delivery) name it once. */
            size_t at = (size_t)(hit - sorted);
            if (named[at]) continue;
            named[at] = true;
            held[k++] = mine[m];
        }
    }
    pthread_mutex_unlock(&reg_mu);
    free(sorted);
    free(named);
    return k;
}

void cons_registry_track_pub(cons_job *const *jobs, size_t n, natsMsg *m,
                             int64_t deadline_mono)
{
    size_t b = reg_hash(m);
    int64_t now = kiln_mono_ms();
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < n; i++) {
        cons_job *j = jobs[i];
        reg_unhash(j);
        j->pending_pub = m;
        j->pub_deadline_mono = deadline_mono;
        j->pub_since_mono = now;
        reg_pub_waiting++;
        j->pub_next = reg_buckets[b];
        reg_buckets[b] = j;
    }
    pthread_mutex_unlock(&reg_mu);
}

void cons_registry_untrack_pub(cons_job *const *jobs, size_t n)
{
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < n; i++) reg_unhash(jobs[i]);
    pthread_mutex_unlock(&reg_mu);
}

size_t cons_registry_take_pub(natsMsg *m, cons_job **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&reg_mu);
    if (reg_buckets != NULL) {
        /* One pass: a batch's jobs share m, so they share the bucket. */
        cons_job **pp = &reg_buckets[reg_hash(m)];
        while (*pp != NULL && n < max) {
            cons_job *j = *pp;
            if (j->pending_pub != m) {
                pp = &j->pub_next;
                continue;
            }
            *pp = j->pub_next;
            j->pub_next = NULL;
            j->pending_pub = NULL;
            reg_pub_waiting--;
            out[n++] = j;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return n;
}

int cons_registry_with_no_pub_waiting(int (*fn)(void *arg), void *arg)
{
    int r = 0;
    pthread_mutex_lock(&reg_mu);
    if (reg_pub_waiting == 0) r = fn(arg);
    pthread_mutex_unlock(&reg_mu);
    return r;
}

size_t cons_registry_take_overdue(int64_t now_mono, int64_t lost_before_mono, cons_job **out,
                                  bool *lost, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&reg_mu);
    for (cons_job *j = reg_head; j != NULL && n < max; j = j->reg_next) {
        if (j->pending_pub == NULL) continue;
        bool was_lost = j->pub_since_mono < lost_before_mono;
        if (!was_lost && j->pub_deadline_mono > now_mono) continue;
        reg_unhash(j);
        lost[n] = was_lost;
        out[n++] = j;
    }
    pthread_mutex_unlock(&reg_mu);
    return n;
}
