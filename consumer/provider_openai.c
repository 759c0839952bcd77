/* provider_openai.c - the OpenAI Images API (POST <base>/images/generations):
 * builds the request JSON, classifies the answer (retryable or not), decodes
 * b64_json images and saves them, passes URL images through. The answer is
 * read by answer.c (YAJL); the request is built with jansson. */
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cons.h"
#include "log.h"

#define OPENAI_IMAGE_MAX (32 * 1024 * 1024) /* decoded bytes per image */
#define OPENAI_RETRY_AFTER_MAX_S 3600

static const unsigned char openai_png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

kiln_status openai_build_request(const Kiln__V1__JobRequest *req, char **body)
{
    kiln_status st = KILN_ENOMEM;
    json_t *o = json_object();
    char *s = NULL;
    if (o == NULL) goto out;
    /* Free-form params first, so the fields Kiln sets always win. */
    for (size_t i = 0; i < req->n_params; i++) {
        const Kiln__V1__JobRequest__ParamsEntry *e = req->params[i];
        if (e->key == NULL || e->value == NULL) continue;
        if (json_object_set_new(o, e->key, json_string(e->value)) != 0) {
            st = KILN_EINVAL; /* not UTF-8: validation should have caught it */
            goto out;
        }
    }
    if (json_object_set_new(o, "prompt", json_string(req->prompt)) != 0) {
        st = KILN_EINVAL;
        goto out;
    }
    if (json_object_set_new(o, "n", json_integer((json_int_t)kiln_jobreq_n(req))) != 0 ||
        json_object_set_new(o, "response_format", json_string("b64_json")) != 0)
        goto out;
    if (req->model != NULL && req->model[0] != '\0' &&
        json_object_set_new(o, "model", json_string(req->model)) != 0)
        goto out;
    if (req->size != NULL && req->size[0] != '\0' &&
        json_object_set_new(o, "size", json_string(req->size)) != 0)
        goto out;
    s = json_dumps(o, JSON_COMPACT);
    if (s == NULL) goto out;
    *body = s;
    s = NULL;
    st = KILN_OK;
out:
    free(s);
    json_decref(o);
    return st;
}

static bool openai_is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* A header value that is one whole number (around it only spaces and the
 * line end), capped at max; -1 otherwise. */
static int64_t openai_parse_count(const char *value, size_t len, int64_t max)
{
    int64_t n = 0;
    size_t i = 0, digits = 0;
    while (i < len && openai_is_space(value[i])) i++;
    for (; i < len && value[i] >= '0' && value[i] <= '9'; i++, digits++) {
        n = n * 10 + (value[i] - '0');
        if (n > max) n = max;
    }
    while (i < len && openai_is_space(value[i])) i++;
    return digits == 0 || i != len ? -1 : n;
}

int64_t openai_parse_retry_after(const char *value, size_t len)
{
    /* An HTTP-date form is not honoured: the backoff applies alone. */
    int64_t secs = openai_parse_count(value, len, OPENAI_RETRY_AFTER_MAX_S);
    return secs < 0 ? -1 : secs * 1000;
}

int64_t openai_parse_retry_after_ms(const char *value, size_t len)
{
    return openai_parse_count(value, len, OPENAI_RETRY_AFTER_MAX_S * 1000);
}

int64_t openai_parse_reset(const char *value, size_t len)
{
    /* OpenAI writes Go durations: "1s", "6m0s", "20ms", "1.5s", "1h2m3s". */
    double total_ms = 0;
    size_t i = 0, parts = 0;
    while (i < len && openai_is_space(value[i])) i++;
    while (i < len && !openai_is_space(value[i])) {
        double num = 0, scale = 1;
        size_t digits = 0;
        bool frac = false;
        for (; i < len && ((value[i] >= '0' && value[i] <= '9') || value[i] == '.'); i++) {
            if (value[i] == '.') {
                if (frac) return -1;
                frac = true;
                continue;
            }
            digits++;
            if (frac) num += (value[i] - '0') * (scale /= 10);
            else num = num * 10 + (value[i] - '0');
        }
        double unit_ms;
        if (i + 1 < len && value[i] == 'm' && value[i + 1] == 's') unit_ms = 1, i += 2;
        else if (i < len && value[i] == 'h') unit_ms = 3600e3, i++;
        else if (i < len && value[i] == 'm') unit_ms = 60e3, i++;
        else if (i < len && value[i] == 's') unit_ms = 1e3, i++;
        else return -1;
        if (digits == 0) return -1;
        total_ms += num * unit_ms;
        parts++;
    }
    while (i < len && openai_is_space(value[i])) i++;
    if (parts == 0 || i != len) return -1;
    double max_ms = OPENAI_RETRY_AFTER_MAX_S * 1000.0;
    return (int64_t)(total_ms > max_ms ? max_ms : total_ms + 0.5);
}

/* Provider's error.message, else a snippet of the body, else "HTTP <code>". */
/* The failed answer's message into out, and its error.code into
 * j->provider_code. */
static void openai_error_message(cons_job *j, long http, char *out, size_t outlen)
{
    cons_answer a;
    bool parsed = j->resp != NULL && j->resp_len > 0 &&
                  cons_answer_parse(j->resp, j->resp_len, &a) == KILN_OK;
    const char *m = parsed ? a.error_message : NULL;
    snprintf(j->provider_code, sizeof j->provider_code, "%s",
             parsed && a.error_code != NULL ? a.error_code : "");
    if (m != NULL && m[0] != '\0') snprintf(out, outlen, "%s", m);
    else if (j->resp != NULL && j->resp_len > 0)
        snprintf(out, outlen, "HTTP %ld: %.*s", http, (int)(j->resp_len > 200 ? 200 : j->resp_len),
                 j->resp);
    else snprintf(out, outlen, "HTTP %ld", http);
    for (char *p = out; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20) *p = ' ';
    if (parsed) cons_answer_free(&a);
}

static openai_verdict openai_fail(cons_job *j, openai_verdict v, const char *code, const char *msg)
{
    snprintf(j->err_code, sizeof j->err_code, "%s", code);
    snprintf(j->err_msg, sizeof j->err_msg, "%s", msg);
    return v;
}

/* Strict base64 (RFC 4648: padded, no line breaks); *out is malloc'ed.
 * OpenSSL's block decoder is ~4x faster than EVP_DecodeUpdate (1.1 against
 * 4.5 us for a 2.9 KB image) but reads '=' as zero bits anywhere, so the
 * padding is checked and its bytes dropped here. */
static kiln_status openai_b64_decode(const char *in, size_t inlen, unsigned char **out,
                                     size_t *outlen)
{
    if (inlen == 0 || inlen % 4 != 0 || inlen > (size_t)OPENAI_IMAGE_MAX / 3 * 4 + 8)
        return KILN_EINVAL;
    size_t pad = in[inlen - 1] == '=' ? (in[inlen - 2] == '=' ? 2 : 1) : 0;
    if (memchr(in, '=', inlen - pad) != NULL) return KILN_EINVAL;
    size_t full = inlen / 4 * 3;
    unsigned char *buf = malloc(full);
    if (buf == NULL) return KILN_ENOMEM;
    int n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)inlen);
    if (n < 0 || (size_t)n != full) {
        free(buf);
        return KILN_EINVAL;
    }
    *out = buf;
    *outlen = full - pad;
    return KILN_OK;
}

/* Parses a 2xx body into j->images (saving decoded files). */
static openai_verdict openai_take_images(cons_job *j, const char *data_dir)
{
    openai_verdict v = OPENAI_OK;
    cons_answer a;
    unsigned char *bytes = NULL;
    size_t nbytes = 0;
    char msg[256];

    kiln_status st = cons_answer_parse(j->resp != NULL ? j->resp : "", j->resp_len, &a);
    if (st == KILN_ENOMEM) return openai_fail(j, OPENAI_RETRY, "internal", "out of memory");
    if (st != KILN_OK || !a.has_data || a.n_items == 0) {
        v = openai_fail(j, OPENAI_RETRY, "bad_response", "provider answer has no data[] images");
        goto out;
    }
    size_t n = a.n_items < CONS_MAX_IMAGES ? a.n_items : CONS_MAX_IMAGES;
    for (size_t i = 0; i < n; i++) {
        const cons_answer_item *item = &a.items[i];
        if (item->b64 != NULL) {
            if (openai_b64_decode(item->b64, item->b64_len, &bytes, &nbytes) != KILN_OK) {
                v = openai_fail(j, OPENAI_RETRY, "bad_response", "data[].b64_json is not base64");
                goto out;
            }
            if (nbytes < sizeof openai_png_magic ||
                memcmp(bytes, openai_png_magic, sizeof openai_png_magic) != 0) {
                v = openai_fail(j, OPENAI_FATAL, "bad_response", "provider image is not a PNG");
                goto out;
            }
            if (cons_image_save(data_dir, bytes, nbytes, &j->images[i]) != KILN_OK) {
                v = openai_fail(j, OPENAI_RETRY, "storage_error", "could not save the image");
                goto out;
            }
            snprintf(msg, sizeof msg, "/v1/jobs/%s/images/%zu", j->id, i);
            j->images[i].url = strdup(msg);
            free(bytes);
            bytes = NULL;
        } else if (item->url != NULL && item->url_len > 0 && item->url_len <= CONS_URL_MAX &&
                   memchr(item->url, '\0', item->url_len) == NULL) {
            j->images[i].url = strdup(item->url);
        } else {
            v = openai_fail(j, OPENAI_RETRY, "bad_response", "data[] item has no b64_json or url");
            goto out;
        }
        if (j->images[i].url == NULL) {
            v = openai_fail(j, OPENAI_RETRY, "internal", "out of memory");
            goto out;
        }
        j->n_images = i + 1;
    }
out:
    free(bytes);
    if (st == KILN_OK) cons_answer_free(&a);
    return v;
}

openai_verdict openai_handle_result(cons_job *j, int curl_code, long http, const char *data_dir)
{
    char msg[CONS_ERR_MSG_MAX];
    if (curl_code != CURLE_OK) {
        const char *why = curl_easy_strerror((CURLcode)curl_code);
        if (j->resp_too_large)
            return openai_fail(j, OPENAI_FATAL, "bad_response", "provider answer too large");
        switch ((CURLcode)curl_code) {
        case CURLE_OPERATION_TIMEDOUT:
            /* A provider that drops connections (a host down behind a
             * firewall) times out the connect: that is an outage, not the job's time. */
            if (j->never_connected)
                return openai_fail(j, OPENAI_RETRY, "provider_unavailable",
                                   "no connection to the provider before the timeout");
            snprintf(msg, sizeof msg, "provider call exceeded %u s", kiln_jobreq_timeout_s(j->req));
            return openai_fail(j, OPENAI_RETRY, "timeout", msg);
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_SSL_CONNECT_ERROR:
            return openai_fail(j, OPENAI_RETRY, "provider_unavailable", why);
        default: return openai_fail(j, OPENAI_RETRY, "provider_error", why);
        }
    }
    if (http >= 200 && http < 300) return openai_take_images(j, data_dir);
    openai_error_message(j, http, msg, sizeof msg);
    if (http == 429) {
        /* No Retry-After: the time OpenAI says its request limit resets. */
        /* That is when the limit is whole again, not when one call may go:
         * a floor no longer than the backoff's cap. */
        if (j->retry_after_ms <= 0 && j->ratelimit_reset_ms > 0) {
            int64_t cap = cons_g.set != NULL ? cons_g.set->retry_cap_ms : INT64_MAX;
            j->retry_after_ms = j->ratelimit_reset_ms < cap ? j->ratelimit_reset_ms : cap;
        }
        return openai_fail(j, OPENAI_RETRY, "rate_limited", msg);
    }
    if (http == 408) return openai_fail(j, OPENAI_RETRY, "timeout", msg);
    if (http == 409) return openai_fail(j, OPENAI_RETRY, "provider_error", msg);
    if (http == 502 || http == 503 || http == 504)
        return openai_fail(j, OPENAI_RETRY, "provider_unavailable", msg);
    if (http >= 500) return openai_fail(j, OPENAI_RETRY, "provider_error", msg);
    if (http >= 400) return openai_fail(j, OPENAI_FATAL, "provider_rejected", msg);
    return openai_fail(j, OPENAI_RETRY, "provider_error", msg);
}
