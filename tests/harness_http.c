/* harness_http.c - the integration harness's HTTP side: requests through
 * libcurl, the gateway's job API and JSON fields, metrics (see harness.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <curl/curl.h>

#include "harness.h"
#include "harness_internal.h"

/* ---- HTTP ----------------------------------------------------------------- */

static pthread_once_t h_curl_once = PTHREAD_ONCE_INIT;
static void h_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

void h_curl_global_init(void)
{
    pthread_once(&h_curl_once, h_curl_init);
}

size_t h_buf_append(h_buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > H_BODY_CAP) return 0;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->len + n + 1) nc *= 2;
        char *nb = realloc(b->buf, nc);
        if (nb == NULL) return 0;
        b->buf = nb;
        b->cap = nc;
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->buf[b->len] = '\0';
    return n;
}

static size_t h_curl_write(char *p, size_t size, size_t nmemb, void *ud)
{
    return h_buf_append(ud, p, size * nmemb);
}

long h_http_timeout(h_resp *r, const char *method, const char *url, const char *token,
                    const char *ctype, const char *body, size_t body_len,
                    const char *extra_header, long timeout_ms)
{
    h_curl_global_init();
    memset(r, 0, sizeof *r);
    h_buf hb = {0}, bb = {0};
    struct curl_slist *hl = NULL;
    char line[1024];
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(r->error, sizeof r->error, "curl_easy_init failed");
        return 0;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_curl_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bb);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, h_curl_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    if (token != NULL) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", token);
        hl = curl_slist_append(hl, line);
    }
    if (ctype != NULL) {
        snprintf(line, sizeof line, "Content-Type: %s", ctype);
        hl = curl_slist_append(hl, line);
    }
    if (extra_header != NULL) hl = curl_slist_append(hl, extra_header);
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? body_len : 0));
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body != NULL) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        }
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s %s: %s", method, url, curl_easy_strerror(rc));
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    r->headers = hb.buf != NULL ? hb.buf : strdup("");
    r->body = bb.buf != NULL ? bb.buf : strdup("");
    r->body_len = bb.len;
    if (r->body_len > 0) r->json = json_loadb(r->body, r->body_len, 0, NULL);
    return r->status;
}

long h_http(h_resp *r, const char *method, const char *url, const char *token,
            const char *ctype, const char *body, const char *extra_header)
{
    return h_http_timeout(r, method, url, token, ctype, body, body != NULL ? strlen(body) : 0,
                          extra_header, 20000);
}

void h_resp_free(h_resp *r)
{
    free(r->headers);
    free(r->body);
    if (r->json != NULL) json_decref(r->json);
    memset(r, 0, sizeof *r);
}

int h_resp_header(const h_resp *r, const char *name, char *out, size_t outlen)
{
    if (r->headers == NULL) return 0;
    size_t nl = strlen(name);
    int found = 0;
    const char *p = r->headers;
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (len > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            const char *end = p + len;
            while (v < end && (*v == ' ' || *v == '\t')) v++;
            while (end > v && (end[-1] == '\r' || end[-1] == ' ')) end--;
            size_t vl = (size_t)(end - v);
            if (outlen > 0) {
                if (vl >= outlen) vl = outlen - 1;
                memcpy(out, v, vl);
                out[vl] = '\0';
            }
            found = 1;
        }
        if (eol == NULL) break;
        p = eol + 1;
    }
    return found;
}

long h_api(h_stack *s, h_resp *r, const char *method, const char *path, const char *token,
           const char *json_body)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", s->gw_url, path);
    return h_http(r, method, url, token, json_body != NULL ? "application/json" : NULL, json_body,
                  NULL);
}

long h_gw_status(h_stack *s, const char *path, long timeout_ms)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", s->gw_url, path);
    h_resp r;
    long st = h_http_timeout(&r, "GET", url, NULL, NULL, NULL, 0, NULL, timeout_ms);
    h_resp_free(&r);
    return st;
}

void h_expect_api_error(h_stack *s, const char *method, const char *path, const char *token,
                        const char *json_body, long status, const char *code, const char *field)
{
    h_resp r;
    h_api(s, &r, method, path, token, json_body);
    if (r.status != status)
        cr_log_error("%s %s with body %.200s", method, path, json_body != NULL ? json_body : "(none)");
    h_expect_error(&r, status, code, field);
    h_resp_free(&r);
}

const char *h_jstr(const json_t *o, const char *key)
{
    return o != NULL ? json_string_value(json_object_get(o, key)) : NULL;
}

long long h_jint(const json_t *o, const char *key)
{
    json_t *v = o != NULL ? json_object_get(o, key) : NULL;
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

const char *h_err_code(const h_resp *r)
{
    return r->json != NULL ? h_jstr(json_object_get(r->json, "error"), "code") : NULL;
}

const char *h_err_field(const h_resp *r)
{
    return r->json != NULL ? h_jstr(json_object_get(r->json, "error"), "field") : NULL;
}

void h_expect_error(const h_resp *r, long status, const char *code, const char *field)
{
    cr_expect_eq(r->status, status, "want HTTP %ld (%s), got %ld: %s", status, code, r->status,
                 r->body != NULL ? r->body : "");
    json_t *e = r->json != NULL ? json_object_get(r->json, "error") : NULL;
    cr_expect(json_is_object(e), "error body must be {\"error\":{...}}, got: %s",
              r->body != NULL ? r->body : "");
    const char *c = h_jstr(e, "code");
    const char *m = h_jstr(e, "message");
    cr_expect(c != NULL && strcmp(c, code) == 0, "want error.code %s, got %s (body %s)", code,
              c != NULL ? c : "(none)", r->body != NULL ? r->body : "");
    cr_expect(m != NULL && m[0] != '\0', "error.message must be a non-empty string: %s",
              r->body != NULL ? r->body : "");
    if (field != NULL) {
        const char *f = h_jstr(e, "field");
        cr_expect(f != NULL && strcmp(f, field) == 0, "want error.field %s, got %s (body %s)",
                  field, f != NULL ? f : "(none)", r->body != NULL ? r->body : "");
    }
}

void h_unique_id(char *out, const char *prefix)
{
    static unsigned seq;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(out, 65, "%s-%d-%lld%03u", prefix, (int)getpid(),
             (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, seq++ % 1000);
}

long h_submit(h_stack *s, const char *token, const char *body, char *id_out)
{
    h_resp r;
    long st = h_api(s, &r, "POST", "/v1/jobs", token, body);
    int ok = st == 202 || st == 200;
    if (id_out != NULL) {
        const char *id = h_jstr(r.json, "id");
        snprintf(id_out, 65, "%s", (ok && id != NULL) ? id : "");
    }
    if (!ok)
        fprintf(stderr, "harness: submit answered %ld: %s %s\n", st, r.body != NULL ? r.body : "",
                r.error);
    h_resp_free(&r);
    return st;
}

long h_submit_prompt(h_stack *s, const char *token, const char *prompt, char *id_out)
{
    json_t *o = json_pack("{s:s}", "prompt", prompt);
    char *body = json_dumps(o, JSON_COMPACT);
    long st = h_submit(s, token, body, id_out);
    free(body);
    json_decref(o);
    return st;
}

void h_submit_each(h_stack *s, const char *token, const char *body_fmt, int n, char ids[][65])
{
    for (int k = 0; k < n; k++) {
        /* %d by hand: a non-literal format would defeat -Wformat checks. */
        const char *at = strstr(body_fmt, "%d");
        cr_assert(at != NULL, "h_submit_each: no %%d in %s", body_fmt);
        char body[1024];
        snprintf(body, sizeof body, "%.*s%d%s", (int)(at - body_fmt), body_fmt, k, at + 2);
        long st = h_submit(s, token, body, ids[k]);
        cr_assert_eq(st, 202, "submit %s: HTTP %ld", body, st);
    }
}

json_t *h_get_job(h_stack *s, const char *token, const char *id, long *status_out)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    h_resp r;
    long st = h_api(s, &r, "GET", path, token, NULL);
    if (status_out != NULL) *status_out = st;
    json_t *job = NULL;
    if (st == 200 && r.json != NULL) job = json_incref(r.json);
    h_resp_free(&r);
    return job;
}

int h_state_terminal(const char *state)
{
    return state != NULL && (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 ||
                             strcmp(state, "cancelled") == 0);
}

json_t *h_wait_job(h_stack *s, const char *token, const char *id, const char *state,
                   int64_t deadline_ms)
{
    int64_t end = h_now_ms() + deadline_ms;
    json_t *last = NULL;
    for (;;) {
        json_t *j = h_get_job(s, token, id, NULL);
        if (j != NULL) {
            if (last != NULL) json_decref(last);
            last = j;
            const char *st = h_jstr(j, "status");
            if (state != NULL ? (st != NULL && strcmp(st, state) == 0) : h_state_terminal(st))
                return last;
            /* A different terminal state never changes again. */
            if (h_state_terminal(st)) return last;
        }
        if (h_now_ms() >= end) return last;
        h_sleep_ms(100);
    }
}

void h_expect_job(h_stack *s, const char *token, const char *id, const char *state, int attempts,
                  int64_t deadline_ms, const char *what)
{
    json_t *j = h_wait_job(s, token, id, state, deadline_ms);
    char *d = h_job_dump(j);
    const char *st = h_jstr(j, "status");
    if (state != NULL)
        cr_expect(st != NULL && strcmp(st, state) == 0, "%s: job %s: want status %s, got %s: %s", what, id,
                  state, st != NULL ? st : "(none)", d);
    else
        cr_expect(h_state_terminal(st), "%s: job %s not terminal: %s", what, id, d);
    if (attempts >= 0)
        cr_expect_eq(h_jint(j, "attempts"), attempts, "%s: job %s: want %d attempts: %s", what, id, attempts, d);
    free(d);
    json_decref(j);
}

int h_job_stays(h_stack *s, const char *token, const char *id, const char *state, int64_t window_ms,
                char *why, size_t whylen)
{
    int64_t end = h_now_ms() + window_ms;
    if (whylen > 0) why[0] = '\0';
    for (;;) {
        json_t *j = h_get_job(s, token, id, NULL);
        const char *st = h_jstr(j, "status");
        if (st == NULL || strcmp(st, state) != 0) {
            char *d = h_job_dump(j);
            snprintf(why, whylen, "%s", d);
            free(d);
            json_decref(j);
            return 0;
        }
        json_decref(j);
        if (h_now_ms() >= end) return 1;
        h_sleep_ms(100);
    }
}

long h_job_post(h_stack *s, h_resp *r, const char *token, const char *id, const char *action)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/%s", id, action);
    return h_api(s, r, "POST", path, token, NULL);
}

json_t *h_list(h_stack *s, const char *token, const char *query)
{
    char path[512];
    snprintf(path, sizeof path, "/v1/jobs%s", query != NULL ? query : "");
    h_resp r;
    json_t *out = NULL;
    if (h_api(s, &r, "GET", path, token, NULL) == 200 && r.json != NULL) out = json_incref(r.json);
    h_resp_free(&r);
    return out;
}

int h_list_count(h_stack *s, const char *token)
{
    json_t *l = h_list(s, token, "?limit=200");
    json_t *jobs = json_object_get(l, "jobs");
    int n = json_is_array(jobs) ? (int)json_array_size(jobs) : -1;
    json_decref(l);
    return n;
}

/* ---- job fields ------------------------------------------------------------ */

char *h_job_dump(const json_t *job)
{
    char *d = job != NULL ? json_dumps(job, JSON_COMPACT) : NULL;
    return d != NULL ? d : strdup("(no job)");
}

int64_t h_ts_ms(const char *t)
{
    if (t == NULL || strlen(t) != 24 || t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' ||
        t[16] != ':' || t[19] != '.' || t[23] != 'Z')
        return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

int64_t h_job_ms(const json_t *job, const char *key)
{
    return h_ts_ms(h_jstr(job, key));
}

int h_jnull(const json_t *o, const char *key)
{
    json_t *v = o != NULL ? json_object_get(o, key) : NULL;
    return v == NULL || json_is_null(v);
}

double h_metric(h_stack *s, h_comp c, const char *name)
{
    char url[128];
    int port = c == H_CONSUMER ? s->cons_metrics_port
             : c == H_STORE    ? s->store_metrics_port
             : c == H_GATEWAY  ? s->gw_port
                               : s->dev_port;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    h_resp r;
    double sum = -1;
    if (h_http_timeout(&r, "GET", url, NULL, NULL, NULL, 0, NULL, 5000) == 200) {
        size_t nl = strlen(name);
        for (const char *p = r.body; p != NULL && *p != '\0';) {
            if (strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
                const char *sp = strchr(p + nl, ' ');
                if (sp != NULL) sum = (sum < 0 ? 0 : sum) + strtod(sp + 1, NULL);
            }
            p = strchr(p, '\n');
            if (p != NULL) p++;
        }
    }
    h_resp_free(&r);
    return sum;
}

typedef struct {
    h_stack *s;
    h_comp c;
    const char *name;
    double value; /* the bound, or the value wanted */
} h_metric_arg;

static int h_metric_is_above(void *arg)
{
    h_metric_arg *a = arg;
    return h_metric(a->s, a->c, a->name) > a->value;
}

static int h_metric_is(void *arg)
{
    h_metric_arg *a = arg;
    return h_metric(a->s, a->c, a->name) == a->value;
}

int h_wait_metric_above(h_stack *s, h_comp c, const char *name, double above, int64_t deadline_ms)
{
    h_metric_arg a = {s, c, name, above};
    return h_wait_for(h_metric_is_above, &a, deadline_ms, 5);
}

int h_wait_metric_eq(h_stack *s, h_comp c, const char *name, double want, int64_t deadline_ms)
{
    h_metric_arg a = {s, c, name, want};
    return h_wait_for(h_metric_is, &a, deadline_ms, 50);
}
