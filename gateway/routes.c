/* routes.c - path + method routing, authentication of API routes. */
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "errors.h"
#include "health.h"
#include "images.h"
#include "jobreq.h"
#include "query.h"
#include "routes.h"
#include "sse.h"
#include "submit.h"

/* A parsed path: the route family and, for job routes, the id and index. */
typedef enum {
    ROUTES_P_NONE,
    ROUTES_P_HEALTHZ,
    ROUTES_P_READYZ,
    ROUTES_P_METRICS,
    ROUTES_P_JOBS,      /* /v1/jobs */
    ROUTES_P_JOB,       /* /v1/jobs/{id} */
    ROUTES_P_CANCEL,    /* /v1/jobs/{id}/cancel */
    ROUTES_P_VIEWED,    /* /v1/jobs/{id}/viewed */
    ROUTES_P_IMAGE,     /* /v1/jobs/{id}/images/{index} */
    ROUTES_P_EVENTS,    /* /v1/events */
    ROUTES_P_JOB_EVENTS, /* /v1/jobs/{id}/events */
} routes_path;

#define ROUTES_JOBS_PREFIX "/v1/jobs/"

/* Parses url; id (>= 65 bytes) and *index are set for job paths. An id that
 * is not a valid job id still matches (the handler answers 404 for it). */
static routes_path routes_parse(const char *url, char *id, size_t idlen, int *index, int *id_ok)
{
    if (strcmp(url, "/healthz") == 0) return ROUTES_P_HEALTHZ;
    if (strcmp(url, "/readyz") == 0) return ROUTES_P_READYZ;
    if (strcmp(url, "/metrics") == 0) return ROUTES_P_METRICS;
    if (strcmp(url, "/v1/jobs") == 0) return ROUTES_P_JOBS;
    if (strcmp(url, "/v1/events") == 0) return ROUTES_P_EVENTS;
    if (strncmp(url, ROUTES_JOBS_PREFIX, strlen(ROUTES_JOBS_PREFIX)) != 0) return ROUTES_P_NONE;
    const char *p = url + strlen(ROUTES_JOBS_PREFIX);
    const char *slash = strchr(p, '/');
    size_t n = slash != NULL ? (size_t)(slash - p) : strlen(p);
    if (n == 0) return ROUTES_P_NONE;
    *id_ok = n < idlen;
    if (*id_ok) {
        memcpy(id, p, n);
        id[n] = '\0';
        *id_ok = kiln_jobreq_id_ok(id);
    }
    if (slash == NULL) return ROUTES_P_JOB;
    const char *rest = slash;
    if (strcmp(rest, "/cancel") == 0) return ROUTES_P_CANCEL;
    if (strcmp(rest, "/viewed") == 0) return ROUTES_P_VIEWED;
    if (strcmp(rest, "/events") == 0) return ROUTES_P_JOB_EVENTS;
    if (strncmp(rest, "/images/", 8) == 0) {
        const char *ix = rest + 8;
        /* Exactly one digit 0..3: nothing else can name an image file. */
        if (ix[0] >= '0' && ix[0] <= '0' + 3 && ix[1] == '\0') *index = ix[0] - '0';
        else *index = -1;
        return ROUTES_P_IMAGE;
    }
    return ROUTES_P_NONE;
}

gw_route gw_routes_classify(const char *url)
{
    char id[KILN_ID_MAX_LEN + 1];
    int index = -1, id_ok = 0;
    switch (routes_parse(url != NULL ? url : "", id, sizeof id, &index, &id_ok)) {
    case ROUTES_P_HEALTHZ: return GW_ROUTE_HEALTHZ;
    case ROUTES_P_READYZ: return GW_ROUTE_READYZ;
    case ROUTES_P_METRICS: return GW_ROUTE_METRICS;
    case ROUTES_P_JOBS: return GW_ROUTE_SUBMIT;
    case ROUTES_P_JOB: return GW_ROUTE_GET;
    case ROUTES_P_CANCEL: return GW_ROUTE_CANCEL;
    case ROUTES_P_VIEWED: return GW_ROUTE_VIEWED;
    case ROUTES_P_IMAGE: return GW_ROUTE_IMAGE;
    case ROUTES_P_EVENTS:
    case ROUTES_P_JOB_EVENTS: return GW_ROUTE_EVENTS;
    case ROUTES_P_NONE: break;
    }
    return GW_ROUTE_NONE;
}

static int routes_is(const char *method, const char *want)
{
    return strcmp(method, want) == 0;
}

static void routes_method_not_allowed(gw_req *r, const char *allow)
{
    char msg[96];
    snprintf(msg, sizeof msg, "this path allows %s", allow);
    gw_answer_error(&r->ans, "method_not_allowed", msg, NULL);
    gw_answer_header(&r->ans, "Allow", "%s", allow);
}

static int routes_authenticate(gw_req *r)
{
    const char *user = NULL;
    int idx = gw_auth_check(r->conn, &user);
    if (idx < 0) {
        gw_answer_error(&r->ans, "unauthenticated",
                        "a valid \"Authorization: Bearer <token>\" header is required", NULL);
        return 0;
    }
    r->user_idx = idx;
    snprintf(r->user, sizeof r->user, "%s", user);
    return 1;
}

void gw_routes_dispatch(gw_req *r)
{
    int index = -1, id_ok = 0;
    /* HEAD is GET without a body (MHD drops the body). */
    int get = routes_is(r->method, MHD_HTTP_METHOD_GET) || routes_is(r->method, MHD_HTTP_METHOD_HEAD);
    int post = routes_is(r->method, MHD_HTTP_METHOD_POST);
    routes_path p = routes_parse(r->url, r->job_id, sizeof r->job_id, &index, &id_ok);
    r->image_index = index;
    r->route = gw_routes_classify(r->url);

    switch (p) {
    case ROUTES_P_NONE:
        gw_answer_error(&r->ans, "not_found", "no such path", NULL);
        return;
    case ROUTES_P_HEALTHZ:
    case ROUTES_P_READYZ:
    case ROUTES_P_METRICS:
        if (!get) {
            routes_method_not_allowed(r, "GET, HEAD");
            return;
        }
        if (p == ROUTES_P_HEALTHZ) gw_health_healthz(r);
        else if (p == ROUTES_P_READYZ) gw_health_readyz(r);
        else gw_health_metrics(r);
        return;
    case ROUTES_P_JOBS:
        if (!get && !post) {
            routes_method_not_allowed(r, "GET, HEAD, POST");
            return;
        }
        r->route = post ? GW_ROUTE_SUBMIT : GW_ROUTE_LIST;
        if (!routes_authenticate(r)) return;
        if (post) gw_submit_handle(r);
        else gw_query_list(r);
        return;
    case ROUTES_P_EVENTS:
        if (!routes_is(r->method, MHD_HTTP_METHOD_GET)) {
            routes_method_not_allowed(r, "GET");
            return;
        }
        if (!routes_authenticate(r)) return;
        gw_sse_user(r);
        return;
    case ROUTES_P_JOB_EVENTS:
        if (!routes_is(r->method, MHD_HTTP_METHOD_GET)) {
            routes_method_not_allowed(r, "GET");
            return;
        }
        break;
    case ROUTES_P_JOB:
    case ROUTES_P_IMAGE:
        if (!get) {
            routes_method_not_allowed(r, "GET, HEAD");
            return;
        }
        break;
    case ROUTES_P_CANCEL:
    case ROUTES_P_VIEWED:
        if (!post) {
            routes_method_not_allowed(r, "POST");
            return;
        }
        break;
    }
    if (!routes_authenticate(r)) return;
    if (!id_ok || (p == ROUTES_P_IMAGE && index < 0)) {
        gw_answer_error(&r->ans, "not_found", "no such job", NULL);
        return;
    }
    switch (p) {
    case ROUTES_P_JOB: gw_query_get(r); return;
    case ROUTES_P_CANCEL: gw_query_cancel(r); return;
    case ROUTES_P_VIEWED: gw_query_viewed(r); return;
    case ROUTES_P_IMAGE: gw_images_get(r); return;
    case ROUTES_P_JOB_EVENTS: gw_sse_job(r); return;
    default: gw_answer_error(&r->ans, "not_found", "no such path", NULL); return;
    }
}
