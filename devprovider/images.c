/* images.c - request validation and response bodies of the OpenAI Images API
 * (POST /v1/images/generations), and url-format image file names. Requests
 * are read with jansson, answers written with YAJL (see dev_images_response). */
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "clock.h"
#include "hash.h"
#include "images.h"
#include "piccache.h"
#include "picture.h"

#define IMAGES_B64_IN_MAX ((INT_MAX / 4) * 3) /* EVP_EncodeBlock takes an int length */

kiln_status dev_images_parse_size(const char *s, unsigned *w, unsigned *h)
{
    if (s == NULL || w == NULL || h == NULL) return KILN_EINVAL;
    unsigned v[2] = {0, 0};
    const char *p = s;
    for (int i = 0; i < 2; i++) {
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (++digits > 5) return KILN_EINVAL;
            v[i] = v[i] * 10 + (unsigned)(*p - '0');
            p++;
        }
        if (digits == 0 || v[i] < 1 || v[i] > DEV_SIZE_MAX) return KILN_EINVAL;
        if (i == 0 && *p++ != 'x') return KILN_EINVAL;
    }
    if (*p != '\0') return KILN_EINVAL;
    *w = v[0];
    *h = v[1];
    return KILN_OK;
}

static unsigned images_clamp(unsigned side)
{
    return side > DEV_PICTURE_MAX_SIDE ? DEV_PICTURE_MAX_SIDE : side;
}

kiln_status dev_images_parse(const char *body, size_t len, unsigned def_w, unsigned def_h,
                             dev_images_req *out, char *param, size_t paramlen, char *msg,
                             size_t msglen)
{
    if (body == NULL || out == NULL) return KILN_EINVAL;
    kiln_status st = KILN_EINVAL;
    json_error_t jerr;
    json_t *root = NULL;
    dev_images_req r = {.n = 1, .w = images_clamp(def_w), .h = images_clamp(def_h)};
    const char *field = "";

    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(msg, msglen, "We could not parse the JSON body of your request: %s (line %d).",
                 jerr.text, jerr.line);
        goto out;
    }
    if (!json_is_object(root)) {
        snprintf(msg, msglen, "The request body must be a JSON object.");
        goto out;
    }

    field = "prompt";
    json_t *v = json_object_get(root, "prompt");
    if (v == NULL || json_is_null(v)) {
        snprintf(msg, msglen, "Missing required parameter: 'prompt'.");
        goto out;
    }
    if (!json_is_string(v)) {
        snprintf(msg, msglen, "Invalid type for 'prompt': expected a string.");
        goto out;
    }
    size_t plen = json_string_length(v);
    if (plen == 0) {
        snprintf(msg, msglen, "Invalid 'prompt': empty string.");
        goto out;
    }
    if (plen > DEV_PROMPT_MAX_BYTES) {
        snprintf(msg, msglen, "Invalid 'prompt': longer than %d bytes.", DEV_PROMPT_MAX_BYTES);
        goto out;
    }
    if (memchr(json_string_value(v), '\0', plen) != NULL) {
        snprintf(msg, msglen, "Invalid 'prompt': contains a NUL character.");
        goto out;
    }

    field = "model";
    v = json_object_get(root, "model");
    if (v != NULL && !json_is_null(v) && !json_is_string(v)) {
        snprintf(msg, msglen, "Invalid type for 'model': expected a string.");
        goto out;
    }

    field = "n";
    v = json_object_get(root, "n");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > DEV_N_MAX) {
            snprintf(msg, msglen, "Invalid 'n': expected an integer from 1 to %d.", DEV_N_MAX);
            goto out;
        }
        r.n = (unsigned)json_integer_value(v);
    }

    field = "size";
    v = json_object_get(root, "size");
    if (v != NULL && !json_is_null(v)) {
        unsigned w = 0, h = 0;
        if (!json_is_string(v) ||
            (strcmp(json_string_value(v), "auto") != 0 &&
             dev_images_parse_size(json_string_value(v), &w, &h) != KILN_OK)) {
            snprintf(msg, msglen, "Invalid 'size': expected \"WxH\" with sides 1 to %d, or \"auto\".",
                     DEV_SIZE_MAX);
            goto out;
        }
        if (w != 0) {
            r.w = images_clamp(w);
            r.h = images_clamp(h);
        }
    }

    field = "response_format";
    v = json_object_get(root, "response_format");
    if (v != NULL && !json_is_null(v)) {
        const char *f = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(f, "b64_json") == 0) r.b64 = 1;
        else if (strcmp(f, "url") != 0) {
            snprintf(msg, msglen, "Invalid 'response_format': expected \"url\" or \"b64_json\".");
            goto out;
        }
    }

    field = "";
    v = json_object_get(root, "prompt");
    r.prompt = malloc(plen + 1);
    if (r.prompt == NULL) {
        st = KILN_ENOMEM;
        snprintf(msg, msglen, "Out of memory.");
        goto out;
    }
    memcpy(r.prompt, json_string_value(v), plen + 1);
    r.prompt_len = plen;
    *out = r;
    r.prompt = NULL; /* ownership moved to out */
    st = KILN_OK;
out:
    if (st != KILN_OK && param != NULL && paramlen > 0) snprintf(param, paramlen, "%s", field);
    free(r.prompt);
    json_decref(root);
    return st;
}

void dev_images_req_clear(dev_images_req *r)
{
    if (r == NULL) return;
    free(r->prompt);
    r->prompt = NULL;
}

/* Base64 (RFC 4648, padded) of len bytes into a new string the caller frees. */
static kiln_status images_b64(const uint8_t *in, size_t len, char **out)
{
    if (len > IMAGES_B64_IN_MAX) return KILN_EINVAL;
    char *s = malloc((len + 2) / 3 * 4 + 1); /* EVP_EncodeBlock adds a NUL */
    if (s == NULL) return KILN_ENOMEM;
    (void)EVP_EncodeBlock((unsigned char *)s, in, (int)len);
    *out = s;
    return KILN_OK;
}

/* The JSON string s through g. */
static kiln_status images_gen_string(yajl_gen g, const char *s, size_t len)
{
    return yajl_gen_string(g, (const unsigned char *)s, len) == yajl_gen_status_ok ? KILN_OK
                                                                                   : KILN_EINVAL;
}

/* One data item {"b64_json": ..} or {"url": ..} for the picture of seed. */
static kiln_status images_item(yajl_gen g, const dev_images_req *r, uint64_t seed,
                               const char *base_url)
{
    kiln_status st = KILN_OK;
    uint8_t *png = NULL;
    size_t png_len = 0;
    char *b64 = NULL;
    char url[512];
    if (yajl_gen_map_open(g) != yajl_gen_status_ok) return KILN_ENOMEM;
    if (r->b64) {
        st = dev_piccache_png(seed, r->w, r->h, &png, &png_len);
        if (st == KILN_OK) st = images_b64(png, png_len, &b64);
        if (st == KILN_OK) st = images_gen_string(g, "b64_json", 8);
        if (st == KILN_OK) st = images_gen_string(g, b64, strlen(b64));
    } else {
        snprintf(url, sizeof url, "%s/v1/files/%016" PRIx64 "-%ux%u.png", base_url, seed, r->w,
                 r->h);
        st = images_gen_string(g, "url", 3);
        if (st == KILN_OK) st = images_gen_string(g, url, strlen(url));
    }
    if (st == KILN_OK && yajl_gen_map_close(g) != yajl_gen_status_ok) st = KILN_ENOMEM;
    free(b64);
    free(png);
    return st;
}

/* Written with YAJL's generator, not jansson: the body is mostly base64, and
 * json_dumps escapes a string a character at a time (~13 of the dev
 * provider's ~38 µs per answer in W2, where it shares the cores with Kiln). */
kiln_status dev_images_response(const dev_images_req *r, const char *image_prompt,
                                size_t image_len, const char *base_url, char **json,
                                size_t *json_len)
{
    if (r == NULL || image_prompt == NULL || base_url == NULL || json == NULL) return KILN_EINVAL;
    uint64_t key[2];
    kiln_status st = dev_hash_key(image_prompt, image_len, key);
    if (st != KILN_OK) return st;
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g == NULL) return KILN_ENOMEM;
    (void)yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    if (yajl_gen_map_open(g) != yajl_gen_status_ok ||
        images_gen_string(g, "created", 7) != KILN_OK ||
        yajl_gen_integer(g, kiln_now_ms() / 1000) != yajl_gen_status_ok ||
        images_gen_string(g, "data", 4) != KILN_OK || yajl_gen_array_open(g) != yajl_gen_status_ok)
        st = KILN_ENOMEM;
    /* Mixing the index in makes the n pictures of one request differ. */
    for (unsigned i = 0; st == KILN_OK && i < r->n; i++)
        st = images_item(g, r, dev_hash_mix(key[0] + i), base_url);
    if (st == KILN_OK &&
        (yajl_gen_array_close(g) != yajl_gen_status_ok || yajl_gen_map_close(g) != yajl_gen_status_ok))
        st = KILN_ENOMEM;
    const unsigned char *buf = NULL;
    size_t len = 0;
    if (st == KILN_OK && yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) st = KILN_ENOMEM;
    char *s = st == KILN_OK ? malloc(len + 1) : NULL;
    if (st == KILN_OK && s == NULL) st = KILN_ENOMEM;
    if (st == KILN_OK) {
        memcpy(s, buf, len);
        s[len] = '\0';
        *json = s;
        if (json_len != NULL) *json_len = len;
    }
    yajl_gen_free(g);
    return st;
}

kiln_status dev_images_file_parse(const char *name, uint64_t *seed, unsigned *w, unsigned *h)
{
    if (name == NULL || seed == NULL || w == NULL || h == NULL) return KILN_EINVAL;
    size_t len = strlen(name);
    if (len < 16 + 1 + 3 + 4 || len > DEV_FILE_NAME_MAX) return KILN_EINVAL;
    uint64_t s = 0;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else return KILN_EINVAL;
        s = s << 4 | d;
    }
    if (name[16] != '-' || strcmp(name + len - 4, ".png") != 0) return KILN_EINVAL;
    char size[DEV_FILE_NAME_MAX];
    memcpy(size, name + 17, len - 4 - 17);
    size[len - 4 - 17] = '\0';
    unsigned ww, hh;
    if (dev_images_parse_size(size, &ww, &hh) != KILN_OK || ww > DEV_PICTURE_MAX_SIDE ||
        hh > DEV_PICTURE_MAX_SIDE)
        return KILN_EINVAL;
    *seed = s;
    *w = ww;
    *h = hh;
    return KILN_OK;
}
