/* query.c - job queries answered by the store over NATS: get (with ?wait),
 * list, viewed, cancel. Each is one asynchronous request to kiln.store.*;
 * the connection stays suspended until the reply or the timeout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "clock.h"
#include "errors.h"
#include "job_json.h"
#include "log.h"
#include "pb.h"
#include "query.h"
#include "rpc.h"
#include "subjects.h"
#include "waiter.h"

#define QUERY_LIMIT_DEFAULT 50
#define QUERY_LIMIT_MAX 200
#define QUERY_CURSOR_MAX 512

typedef enum { QUERY_GET = 1, QUERY_GET_FINAL, QUERY_LIST, QUERY_VIEWED, QUERY_CANCEL } query_kind;

static int64_t query_timeout_ms = 2000;

void gw_query_init(int64_t store_timeout_ms) { query_timeout_ms = store_timeout_ms; }

void gw_query_answer_store_error(gw_req *r, kiln_status st, const char *code, const char *msg)
{
    if (st != KILN_OK || code == NULL || code[0] == '\0') {
        gw_answer_error(&r->ans, "unavailable", "the status store is unavailable; retry", NULL);
        return;
    }
    if (strcmp(code, "not_found") == 0) gw_answer_error(&r->ans, "not_found", "no such job", NULL);
    else if (strcmp(code, "already_finished") == 0)
        gw_answer_error(&r->ans, "already_finished", "the job already finished", NULL);
    else if (strcmp(code, "invalid_argument") == 0 && r->route == GW_ROUTE_LIST)
        /* The only list argument the store judges itself is the opaque cursor. */
        gw_answer_error(&r->ans, "invalid_argument", "cursor is not valid", "cursor");
    else if (strcmp(code, "invalid_argument") == 0)
        gw_answer_error(&r->ans, "invalid_argument", msg != NULL && msg[0] ? msg : "invalid argument",
                        NULL);
    else if (strcmp(code, "idempotency_conflict") == 0)
        gw_answer_error(&r->ans, "idempotency_conflict", msg, NULL);
    else
        gw_answer_error(&r->ans, "unavailable", "the status store is unavailable; retry", NULL);
}

static void query_answer_list(gw_req *r, const Kiln__V1__StoreReply *rep)
{
    json_t *o = json_object();
    json_t *jobs = json_array();
    if (o == NULL || jobs == NULL) goto fail;
    for (size_t i = 0; i < rep->n_jobs; i++) {
        json_t *j = rep->jobs[i] != NULL ? gw_jobjson_job(rep->jobs[i]) : NULL;
        if (j == NULL || json_array_append_new(jobs, j) != 0) goto fail;
    }
    int bad = json_object_set_new(o, "jobs", jobs);
    jobs = NULL;
    bad |= json_object_set_new(o, "next_cursor",
                               rep->next_cursor != NULL && rep->next_cursor[0] != '\0'
                                   ? json_string(rep->next_cursor)
                                   : json_null());
    bad |= json_object_set_new(o, "active_count", json_integer((json_int_t)rep->active_count));
    bad |= json_object_set_new(o, "unviewed_count", json_integer((json_int_t)rep->unviewed_count));
    if (bad) goto fail;
    gw_answer_json(&r->ans, 200, o);
    return;
fail:
    json_decref(o);
    json_decref(jobs);
    gw_answer_error(&r->ans, "unavailable", "out of memory", NULL);
}

static void query_done(gw_req *r, kiln_status st, natsMsg *reply)
{
    Kiln__V1__StoreReply *rep = st == KILN_OK ? gw_rpc_store_reply(reply) : NULL;
    if (st != KILN_OK)
        LOG_WARN("store request failed path=%s err=%s", r->url, kiln_status_str(st));
    if (rep == NULL || (rep->error_code != NULL && rep->error_code[0] != '\0')) {
        gw_query_answer_store_error(r, rep == NULL ? KILN_ERR : KILN_OK,
                                    rep != NULL ? rep->error_code : NULL,
                                    rep != NULL ? rep->error_message : NULL);
        goto resume;
    }
    if (r->rpc_kind == QUERY_LIST) {
        query_answer_list(r, rep);
        goto resume;
    }
    if (rep->n_jobs < 1 || rep->jobs[0] == NULL) {
        gw_answer_error(&r->ans, "not_found", "no such job", NULL);
        goto resume;
    }
    const Kiln__V1__JobRecord *rec = rep->jobs[0];
    int terminal = rec->status != NULL && kiln_state_is_terminal(rec->status->state);
    if (r->rpc_kind == QUERY_GET && r->wait_s > 0 && !terminal) {
        /* Park until jobs.done or the deadline; the waiter fetches again. */
        if (gw_waiter_park(r) == KILN_OK) goto out;
    }
    json_t *j = gw_jobjson_job(rec);
    if (j == NULL) gw_answer_error(&r->ans, "unavailable", "out of memory", NULL);
    else gw_answer_json(&r->ans, 200, j);
resume:
    gw_server_resume(r);
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
}

/* Sends req for suspended-to-be r; answers r at once when it cannot. */
static void query_send(gw_req *r, const char *subject, const Kiln__V1__StoreRequest *req,
                       query_kind kind)
{
    r->rpc_kind = kind;
    gw_server_suspend(r);
    r->query_sent_us = kiln_mono_us();
    kiln_status st = gw_rpc_store(subject, req, query_timeout_ms, query_done, r);
    if (st != KILN_OK) {
        gw_query_answer_store_error(r, st, NULL, NULL);
        gw_server_resume(r);
    }
}

static const char *query_arg(gw_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Digits only, min..max. */
static int query_uint(const char *s, long min, long max, long *out)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 9) return 0;
    long v = 0;
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') return 0;
        v = v * 10 + (*p - '0');
    }
    if (v < min || v > max) return 0;
    *out = v;
    return 1;
}

static void query_get_kind(gw_req *r, query_kind kind)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    req.user_id = r->user;
    req.id = r->job_id;
    /* The store does the "never 404 right after 202" wait itself on a miss. */
    req.sync = 0;
    query_send(r, KILN_SUBJ_STORE_GET, &req, kind);
}

void gw_query_get(gw_req *r)
{
    const char *w = query_arg(r, "wait");
    long wait = 0;
    if (w != NULL && !query_uint(w, 0, GW_WAIT_MAX_S, &wait)) {
        gw_answer_error(&r->ans, "invalid_argument", "wait must be an integer 0-60 (seconds)",
                        "wait");
        return;
    }
    r->wait_s = (int)wait;
    r->wait_deadline_ms = kiln_mono_ms() + wait * 1000;
    query_get_kind(r, QUERY_GET);
}

/* Sends the GET of suspended r again (waiters); answers r when it cannot. */
static void query_resend(gw_req *r, query_kind kind)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    req.user_id = r->user;
    req.id = r->job_id;
    r->rpc_kind = kind;
    r->query_sent_us = kiln_mono_us();
    kiln_status st = gw_rpc_store(KILN_SUBJ_STORE_GET, &req, query_timeout_ms, query_done, r);
    if (st != KILN_OK) {
        gw_query_answer_store_error(r, st, NULL, NULL);
        gw_server_resume(r);
    }
}

void gw_query_refetch(gw_req *r) { query_resend(r, QUERY_GET_FINAL); }

void gw_query_again(gw_req *r) { query_resend(r, QUERY_GET); }

void gw_query_list(gw_req *r)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    const char *s = query_arg(r, "limit");
    long limit = QUERY_LIMIT_DEFAULT;
    if (s != NULL && !query_uint(s, 1, QUERY_LIMIT_MAX, &limit)) {
        gw_answer_error(&r->ans, "invalid_argument", "limit must be an integer 1-200", "limit");
        return;
    }
    req.limit = (uint32_t)limit;
    if ((s = query_arg(r, "status")) != NULL) {
        Kiln__V1__JobState state;
        if (kiln_state_parse(s, &state) != KILN_OK ||
            state == KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED) {
            gw_answer_error(&r->ans, "invalid_argument",
                            "status must be pending, processing, completed, failed or cancelled",
                            "status");
            return;
        }
        req.state = state;
    }
    if ((s = query_arg(r, "unviewed")) != NULL) {
        if (strcmp(s, "true") == 0) req.unviewed = 1;
        else if (strcmp(s, "false") != 0) {
            gw_answer_error(&r->ans, "invalid_argument", "unviewed must be true or false",
                            "unviewed");
            return;
        }
    }
    if ((s = query_arg(r, "cursor")) != NULL && s[0] != '\0') {
        if (strlen(s) > QUERY_CURSOR_MAX) {
            gw_answer_error(&r->ans, "invalid_argument", "cursor is not valid", "cursor");
            return;
        }
        req.cursor = (char *)s;
    }
    req.user_id = r->user;
    query_send(r, KILN_SUBJ_STORE_LIST, &req, QUERY_LIST);
}

void gw_query_viewed(gw_req *r)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    req.user_id = r->user;
    req.id = r->job_id;
    query_send(r, KILN_SUBJ_STORE_VIEWED, &req, QUERY_VIEWED);
}

void gw_query_cancel(gw_req *r)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    req.user_id = r->user;
    req.id = r->job_id;
    query_send(r, KILN_SUBJ_STORE_CANCEL, &req, QUERY_CANCEL);
}
