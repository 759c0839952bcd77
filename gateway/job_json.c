/* job_json.c - JSON <-> protobuf for jobs: the POST /v1/jobs body into a
 * JobRequest (every CONTRACT §3 rule), a JobRecord into the job object. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "job_json.h"
#include "jobreq.h"
#include "pb.h"
#include "sha256.h"

#define JOBJSON_POLL_PENDING_MS 3000
#define JOBJSON_POLL_PROCESSING_MS 2000

static const char *const jobjson_fields[] = {
    "prompt", "model", "n", "size", "priority", "params", "delay_ms", "timeout_s", "max_attempts",
};

static kiln_status jobjson_fail(gw_fielderr *e, const char *code, const char *field,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static kiln_status jobjson_fail(gw_fielderr *e, const char *code, const char *field,
                                const char *fmt, ...)
{
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field != NULL ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return KILN_EINVAL;
}

kiln_status gw_jobjson_set_str(char **field, const char *value)
{
    char *copy = strdup(value != NULL ? value : "");
    if (copy == NULL) return KILN_ENOMEM;
    if (*field != protobuf_c_empty_string) free(*field);
    *field = copy;
    return KILN_OK;
}

static void jobjson_free_str(char *s)
{
    if (s != NULL && s != protobuf_c_empty_string) free(s);
}

void gw_jobjson_request_free(Kiln__V1__JobRequest *r)
{
    if (r == NULL) return;
    jobjson_free_str(r->id);
    jobjson_free_str(r->user_id);
    jobjson_free_str(r->prompt);
    jobjson_free_str(r->model);
    jobjson_free_str(r->size);
    jobjson_free_str(r->idempotency_key);
    for (size_t i = 0; i < r->n_params; i++) {
        if (r->params[i] == NULL) continue;
        jobjson_free_str(r->params[i]->key);
        jobjson_free_str(r->params[i]->value);
        free(r->params[i]);
    }
    free(r->params);
    free(r);
}

/* Reads an optional integer field in [min, max]; *present = 0 when absent or null. */
static kiln_status jobjson_int(json_t *root, const char *name, json_int_t min, json_int_t max,
                               json_int_t *v, int *present, gw_fielderr *e)
{
    json_t *j = json_object_get(root, name);
    *present = 0;
    if (j == NULL || json_is_null(j)) return KILN_OK;
    if (!json_is_integer(j))
        return jobjson_fail(e, "invalid_argument", name, "%s must be an integer", name);
    json_int_t x = json_integer_value(j);
    if (x < min || x > max)
        return jobjson_fail(e, "invalid_argument", name, "%s must be between %lld and %lld", name,
                            (long long)min, (long long)max);
    *v = x;
    *present = 1;
    return KILN_OK;
}

/* Reads an optional string field; *s = NULL when absent or null. */
static kiln_status jobjson_string(json_t *root, const char *name, const char **s, gw_fielderr *e)
{
    json_t *j = json_object_get(root, name);
    *s = NULL;
    if (j == NULL || json_is_null(j)) return KILN_OK;
    if (!json_is_string(j)) return jobjson_fail(e, "invalid_argument", name, "%s must be a string", name);
    *s = json_string_value(j);
    return KILN_OK;
}

static kiln_status jobjson_params(json_t *root, Kiln__V1__JobRequest *r, gw_fielderr *e)
{
    json_t *j = json_object_get(root, "params");
    if (j == NULL || json_is_null(j)) return KILN_OK;
    if (!json_is_object(j))
        return jobjson_fail(e, "invalid_argument", "params",
                            "params must be an object of string values");
    size_t n = json_object_size(j);
    if (n > KILN_PARAMS_MAX)
        return jobjson_fail(e, "invalid_argument", "params", "params may have at most %d entries",
                            KILN_PARAMS_MAX);
    if (n == 0) return KILN_OK;
    r->params = calloc(n, sizeof *r->params);
    if (r->params == NULL) return KILN_ENOMEM;
    const char *key;
    json_t *val;
    json_object_foreach(j, key, val) {
        if (!json_is_string(val))
            return jobjson_fail(e, "invalid_argument", "params",
                                "params values must be strings");
        if (key[0] == '\0')
            return jobjson_fail(e, "invalid_argument", "params", "params keys must not be empty");
        if (strlen(key) > KILN_PARAM_MAX_LEN || json_string_length(val) > KILN_PARAM_MAX_LEN)
            return jobjson_fail(e, "invalid_argument", "params",
                                "params keys and values must be at most %d bytes",
                                KILN_PARAM_MAX_LEN);
        Kiln__V1__JobRequest__ParamsEntry *pe = malloc(sizeof *pe);
        if (pe == NULL) return KILN_ENOMEM;
        kiln__v1__job_request__params_entry__init(pe);
        r->params[r->n_params++] = pe;
        if (gw_jobjson_set_str(&pe->key, key) != KILN_OK ||
            gw_jobjson_set_str(&pe->value, json_string_value(val)) != KILN_OK)
            return KILN_ENOMEM;
    }
    return KILN_OK;
}

static kiln_status jobjson_fill(json_t *root, int64_t now_ms, Kiln__V1__JobRequest *r,
                                gw_fielderr *e)
{
    /* Unknown fields first, so a typo is reported as such. */
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        int known = 0;
        for (size_t i = 0; i < sizeof jobjson_fields / sizeof jobjson_fields[0]; i++)
            if (strcmp(key, jobjson_fields[i]) == 0) known = 1;
        if (!known) {
            char name[sizeof e->field];
            snprintf(name, sizeof name, "%s", key); /* capped echo of the input */
            return jobjson_fail(e, "unknown_field", name, "unknown field \"%s\"", name);
        }
    }

    kiln_status st;
    json_t *jp = json_object_get(root, "prompt");
    if (jp == NULL || json_is_null(jp))
        return jobjson_fail(e, "invalid_argument", "prompt", "prompt is required");
    if (!json_is_string(jp))
        return jobjson_fail(e, "invalid_argument", "prompt", "prompt must be a string");
    int valid = 0;
    size_t chars = kiln_utf8_chars(json_string_value(jp), &valid);
    if (!valid) return jobjson_fail(e, "invalid_argument", "prompt", "prompt must be valid UTF-8");
    if (chars < 1 || chars > KILN_PROMPT_MAX_CHARS)
        return jobjson_fail(e, "invalid_argument", "prompt", "prompt must be 1-%d characters",
                            KILN_PROMPT_MAX_CHARS);
    if ((st = gw_jobjson_set_str(&r->prompt, json_string_value(jp))) != KILN_OK) return st;

    const char *s = NULL;
    if ((st = jobjson_string(root, "model", &s, e)) != KILN_OK) return st;
    if (s != NULL) {
        /* The rule every binary applies (common/jobreq.c): a model the
         * consumer would refuse must not get a 202. */
        if (!kiln_jobreq_model_ok(s))
            return jobjson_fail(e, "invalid_argument", "model", KILN_JOBREQ_MODEL_RULE,
                                KILN_MODEL_MAX_LEN);
        if ((st = gw_jobjson_set_str(&r->model, s)) != KILN_OK) return st;
    }

    if ((st = jobjson_string(root, "size", &s, e)) != KILN_OK) return st;
    if (s != NULL) {
        if (!kiln_jobreq_size_ok(s))
            return jobjson_fail(e, "invalid_argument", "size",
                                "size must look like \"1024x1024\" (WxH)");
        if ((st = gw_jobjson_set_str(&r->size, s)) != KILN_OK) return st;
    }

    if ((st = jobjson_string(root, "priority", &s, e)) != KILN_OK) return st;
    if (s != NULL) {
        Kiln__V1__Priority p;
        if (kiln_priority_parse(s, &p) != KILN_OK)
            return jobjson_fail(e, "invalid_argument", "priority",
                                "priority must be \"high\", \"normal\" or \"low\"");
        r->priority = p;
    }

    json_int_t v = 0;
    int present = 0;
    if ((st = jobjson_int(root, "n", 1, KILN_N_MAX, &v, &present, e)) != KILN_OK) return st;
    r->n = present ? (uint32_t)v : 1;
    if ((st = jobjson_int(root, "delay_ms", 0, KILN_DELAY_MAX_MS, &v, &present, e)) != KILN_OK)
        return st;
    r->not_before_ms = present && v > 0 ? now_ms + (int64_t)v : 0;
    if ((st = jobjson_int(root, "timeout_s", 1, KILN_TIMEOUT_MAX_S, &v, &present, e)) != KILN_OK)
        return st;
    r->timeout_s = present ? (uint32_t)v : KILN_TIMEOUT_DEFAULT_S;
    if ((st = jobjson_int(root, "max_attempts", 1, KILN_ATTEMPTS_MAX, &v, &present, e)) != KILN_OK)
        return st;
    r->max_attempts = present ? (uint32_t)v : KILN_ATTEMPTS_DEFAULT;

    return jobjson_params(root, r, e);
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 when invalid. */
static size_t jobjson_utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t cp;
    if (p[0] < 0x80) return 1;
    if ((p[0] & 0xe0) == 0xc0) len = 2, cp = p[0] & 0x1f;
    else if ((p[0] & 0xf0) == 0xe0) len = 3, cp = p[0] & 0x0f;
    else if ((p[0] & 0xf8) == 0xf0) len = 4, cp = p[0] & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
        return 0;
    return len;
}

/* The body is not UTF-8. To name the field at fault, parse a copy with each
 * bad byte replaced by U+FFFF (a noncharacter) and look for it in the values. */
static kiln_status jobjson_bad_utf8(const char *body, size_t len, gw_fielderr *e)
{
    static const char mark[] = "\xef\xbf\xbf";
    const char *field = NULL;
    json_t *root = NULL;
    char *copy = len <= SIZE_MAX / 3 ? malloc(len * 3 + 1) : NULL;
    if (copy == NULL) return KILN_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = jobjson_utf8_seq((const unsigned char *)body + i, len - i);
        if (n == 0) {
            memcpy(copy + o, mark, 3);
            o += 3;
            i++;
        } else {
            memcpy(copy + o, body + i, n);
            o += n;
            i += n;
        }
    }
    root = json_loadb(copy, o, JSON_REJECT_DUPLICATES, NULL);
    const char *key;
    json_t *val;
    if (json_is_object(root)) {
        json_object_foreach(root, key, val) {
            int bad = strstr(key, mark) != NULL;
            if (json_is_string(val) && strstr(json_string_value(val), mark) != NULL) bad = 1;
            if (json_is_object(val)) {
                const char *k2;
                json_t *v2;
                json_object_foreach(val, k2, v2) {
                    if (strstr(k2, mark) != NULL ||
                        (json_is_string(v2) && strstr(json_string_value(v2), mark) != NULL))
                        bad = 1;
                }
            }
            if (bad && strstr(key, mark) == NULL) {
                field = key;
                break;
            }
        }
    }
    kiln_status st;
    if (field != NULL)
        st = jobjson_fail(e, "invalid_argument", field, "%s must be valid UTF-8", field);
    else
        st = jobjson_fail(e, "invalid_json", NULL, "the body is not valid UTF-8");
    json_decref(root);
    free(copy);
    return st;
}

kiln_status gw_jobjson_parse(const char *body, size_t len, int64_t now_ms,
                             Kiln__V1__JobRequest **out, gw_fielderr *e)
{
    kiln_status st = KILN_OK;
    json_t *root = NULL;
    Kiln__V1__JobRequest *r = NULL;
    json_error_t jerr;

    root = json_loadb(body != NULL ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL && json_error_code(&jerr) == json_error_invalid_utf8) {
        st = jobjson_bad_utf8(body, len, e);
        goto out;
    }
    if (root == NULL) {
        st = jobjson_fail(e, "invalid_json", NULL, "the body is not valid JSON: %s (line %d)",
                          jerr.text, jerr.line);
        goto out;
    }
    if (!json_is_object(root)) {
        st = jobjson_fail(e, "invalid_json", NULL, "the body must be a JSON object");
        goto out;
    }
    r = malloc(sizeof *r);
    if (r == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    kiln__v1__job_request__init(r);
    if ((st = jobjson_fill(root, now_ms, r, e)) != KILN_OK) goto out;
    *out = r;
    r = NULL;
out:
    gw_jobjson_request_free(r);
    json_decref(root);
    return st;
}

kiln_status gw_jobjson_body_hash(const char *body, size_t len, uint8_t out[KILN_SHA256_LEN])
{
    json_t *root = json_loadb(body != NULL ? body : "", len, JSON_REJECT_DUPLICATES, NULL);
    char *canon = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    int ok = canon != NULL && kiln_sha256(canon, strlen(canon), out) == KILN_OK;
    free(canon);
    json_decref(root);
    return ok ? KILN_OK : KILN_ENOMEM;
}

json_t *gw_jobjson_time(int64_t ms)
{
    if (ms <= 0) return json_null();
    char buf[32];
    kiln_rfc3339_ms(ms, buf, sizeof buf);
    return json_string(buf);
}

/* A string or null when empty. Strings from the store are checked UTF-8 by
 * jansson; a bad one becomes null rather than failing the whole answer. */
static json_t *jobjson_opt_str(const char *s)
{
    if (s == NULL || s[0] == '\0') return json_null();
    json_t *j = json_string(s);
    return j != NULL ? j : json_null();
}

static json_t *jobjson_str(const char *s)
{
    json_t *j = json_string(s != NULL ? s : "");
    return j != NULL ? j : json_string("");
}

json_t *gw_jobjson_job(const Kiln__V1__JobRecord *rec)
{
    static const Kiln__V1__JobRequest empty_req = KILN__V1__JOB_REQUEST__INIT;
    static const Kiln__V1__JobStatus empty_st = KILN__V1__JOB_STATUS__INIT;
    const Kiln__V1__JobRequest *rq = rec->request != NULL ? rec->request : &empty_req;
    const Kiln__V1__JobStatus *st = rec->status != NULL ? rec->status : &empty_st;
    json_t *o = json_object();
    json_t *params = json_object();
    json_t *images = json_array();
    if (o == NULL || params == NULL || images == NULL) goto fail;

    const char *id = rq->id != NULL && rq->id[0] != '\0' ? rq->id : st->id;
    int bad = 0;
    bad |= json_object_set_new(o, "id", jobjson_str(id));
    bad |= json_object_set_new(o, "status", json_string(kiln_state_name(st->state)));
    bad |= json_object_set_new(o, "prompt", jobjson_str(rq->prompt));
    bad |= json_object_set_new(o, "model", jobjson_opt_str(rq->model));
    bad |= json_object_set_new(o, "n", json_integer(kiln_jobreq_n(rq)));
    bad |= json_object_set_new(o, "size", jobjson_opt_str(rq->size));
    bad |= json_object_set_new(o, "priority", json_string(kiln_priority_name(rq->priority)));
    for (size_t i = 0; i < rq->n_params; i++) {
        const Kiln__V1__JobRequest__ParamsEntry *pe = rq->params[i];
        if (pe == NULL || pe->key == NULL) continue;
        json_t *v = json_string(pe->value != NULL ? pe->value : "");
        if (v != NULL) json_object_set_new(params, pe->key, v);
    }
    bad |= json_object_set_new(o, "params", params);
    params = NULL;
    bad |= json_object_set_new(o, "attempts", json_integer(st->attempts));
    for (size_t i = 0; i < st->n_images; i++) {
        const Kiln__V1__Image *im = st->images[i];
        if (im == NULL) continue;
        json_t *jo = json_pack("{s:I,s:o,s:o}", "index", (json_int_t)im->index, "url",
                               jobjson_str(im->url), "content_type",
                               jobjson_str(im->content_type != NULL && im->content_type[0] != '\0'
                                               ? im->content_type
                                               : "image/png"));
        if (jo == NULL || json_array_append_new(images, jo) != 0) goto fail;
    }
    bad |= json_object_set_new(o, "images", images);
    images = NULL;
    if (st->error != NULL && st->error->code != NULL && st->error->code[0] != '\0')
        bad |= json_object_set_new(o, "error",
                                   json_pack("{s:o,s:o}", "code", jobjson_str(st->error->code),
                                             "message", jobjson_str(st->error->message)));
    else
        bad |= json_object_set_new(o, "error", json_null());
    if (rec->progress != NULL && !kiln_state_is_terminal(st->state))
        bad |= json_object_set_new(o, "progress",
                                   json_pack("{s:I,s:o}", "percent",
                                             (json_int_t)rec->progress->percent, "message",
                                             jobjson_str(rec->progress->message)));
    else
        bad |= json_object_set_new(o, "progress", json_null());
    bad |= json_object_set_new(o, "viewed", json_boolean(rec->viewed));
    int64_t created = st->created_at_ms != 0 ? st->created_at_ms : rq->created_at_ms;
    bad |= json_object_set_new(o, "created_at", gw_jobjson_time(created));
    bad |= json_object_set_new(o, "started_at", gw_jobjson_time(st->started_at_ms));
    bad |= json_object_set_new(o, "completed_at", gw_jobjson_time(st->completed_at_ms));
    if (!kiln_state_is_terminal(st->state))
        bad |= json_object_set_new(o, "poll_after_ms",
                                   json_integer(st->state == KILN__V1__JOB_STATE__JOB_STATE_PROCESSING
                                                    ? JOBJSON_POLL_PROCESSING_MS
                                                    : JOBJSON_POLL_PENDING_MS));
    if (bad) goto fail;
    return o;
fail:
    json_decref(o);
    json_decref(params);
    json_decref(images);
    return NULL;
}
