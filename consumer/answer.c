/* answer.c - reads a provider's JSON answer: the image list (data[].b64_json
 * or data[].url) and the error message (error.message, or error as a string).
 *
 * Why YAJL here and jansson elsewhere: an answer is mostly base64, up to
 * megabytes per image. jansson reads a string a byte at a time through its
 * stream and copies it twice (8–9 ns per byte: 35 µs of the consumer's ~100 µs
 * per job in W2 for a 3.9 KB answer; at that rate a 3 MB image would take
 * ~26 ms); YAJL's lexer scans it in a tight loop (~0.25 ns per byte on a
 * 29 KB answer) and hands it out without a
 * tree. Its parser is strict by default: UTF-8 checked, no comments, no
 * trailing garbage, one value. json-c cannot be used beside jansson: both
 * export json_object_get and others, and one binary would bind both callers
 * to one of them. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "cons.h"

/* Deeper than any answer nests (3): YAJL itself has no limit, and a body of
 * 64 MiB of '[' would grow its stack by as much. */
#define ANSWER_DEPTH_MAX 64

typedef enum {
    KEY_OTHER = 0,
    KEY_DATA,
    KEY_ERROR,
    KEY_B64,
    KEY_URL,
    KEY_MESSAGE,
    KEY_CODE
} answer_key;

/* Where the parser is: containers open and the last key at each depth that
 * matters (1: the top object, 2: an error object, 3: a data[] item). */
typedef struct {
    cons_answer *out;
    int depth;
    answer_key key[4];
    bool in_data;  /* depth 2 is the top-level "data" array */
    bool in_error; /* depth 2 is the top-level "error" object */
    bool oom;
} answer_ctx;

static answer_key answer_classify(const answer_ctx *c, const unsigned char *s, size_t len)
{
#define IS(lit) (len == sizeof lit - 1 && memcmp(s, lit, len) == 0)
    if (c->depth == 1) return IS("data") ? KEY_DATA : IS("error") ? KEY_ERROR : KEY_OTHER;
    if (c->depth == 2 && c->in_error)
        return IS("message") ? KEY_MESSAGE : IS("code") ? KEY_CODE : KEY_OTHER;
    if (c->depth == 3 && c->in_data) return IS("b64_json") ? KEY_B64 : IS("url") ? KEY_URL : KEY_OTHER;
    return KEY_OTHER;
#undef IS
}

static void answer_free_items(cons_answer *a)
{
    for (size_t i = 0; i < a->n_items && i < CONS_MAX_IMAGES; i++) {
        free(a->items[i].b64);
        free(a->items[i].url);
    }
    memset(a->items, 0, sizeof a->items);
    a->n_items = 0;
}

/* Called as any value (or container) starts: one at depth 2 inside data[]
 * is a new item; a "data" that is not an array replaces an earlier one. */
static void answer_value_at(answer_ctx *c)
{
    if (c->depth == 2 && c->in_data) c->out->n_items++;
    if (c->depth == 1 && c->key[1] == KEY_DATA) {
        answer_free_items(c->out); /* a repeated "data": the last wins */
        c->out->has_data = false;
    }
}

/* Replaces *dst with a NUL-terminated copy of s (a key may repeat: the last
 * wins, as in jansson). */
static bool answer_copy(answer_ctx *c, char **dst, size_t *dst_len, const unsigned char *s,
                        size_t len)
{
    char *p = malloc(len + 1);
    if (p == NULL) {
        c->oom = true;
        return false;
    }
    memcpy(p, s, len);
    p[len] = '\0';
    free(*dst);
    *dst = p;
    if (dst_len != NULL) *dst_len = len;
    return true;
}

static int answer_on_string(void *ctx, const unsigned char *s, size_t len)
{
    answer_ctx *c = ctx;
    cons_answer *a = c->out;
    answer_value_at(c);
    if (c->depth == 1 && c->key[1] == KEY_ERROR)
        return answer_copy(c, &a->error_message, NULL, s, len);
    if (c->depth == 2 && c->in_error && c->key[2] == KEY_MESSAGE)
        return answer_copy(c, &a->error_message, NULL, s, len);
    if (c->depth == 2 && c->in_error && c->key[2] == KEY_CODE)
        return answer_copy(c, &a->error_code, NULL, s, len);
    if (c->depth == 3 && c->in_data && a->n_items <= CONS_MAX_IMAGES) {
        cons_answer_item *it = &a->items[a->n_items - 1];
        if (c->key[3] == KEY_B64) return answer_copy(c, &it->b64, &it->b64_len, s, len);
        if (c->key[3] == KEY_URL) return answer_copy(c, &it->url, &it->url_len, s, len);
    }
    return 1;
}

static int answer_on_scalar(void *ctx)
{
    answer_value_at(ctx);
    return 1;
}

static int answer_on_bool(void *ctx, int b)
{
    (void)b;
    return answer_on_scalar(ctx);
}

/* Numbers come as text: no overflow error on a large "created". */
static int answer_on_number(void *ctx, const char *s, size_t len)
{
    (void)s;
    (void)len;
    return answer_on_scalar(ctx);
}

static int answer_on_key(void *ctx, const unsigned char *s, size_t len)
{
    answer_ctx *c = ctx;
    if (c->depth >= 1 && c->depth <= 3) c->key[c->depth] = answer_classify(c, s, len);
    return 1;
}

static int answer_on_open(answer_ctx *c, bool is_map)
{
    if (c->depth >= ANSWER_DEPTH_MAX) return 0; /* cancels the parse: not an answer */
    answer_value_at(c);
    c->depth++;
    if (c->depth == 2) {
        c->in_data = !is_map && c->key[1] == KEY_DATA;
        c->in_error = is_map && c->key[1] == KEY_ERROR;
        if (c->in_data) c->out->has_data = true;
    }
    if (c->depth <= 3) c->key[c->depth] = KEY_OTHER;
    return 1;
}

static int answer_on_start_map(void *ctx) { return answer_on_open(ctx, true); }

static int answer_on_start_array(void *ctx) { return answer_on_open(ctx, false); }

static int answer_on_close(void *ctx)
{
    answer_ctx *c = ctx;
    if (c->depth == 2) c->in_data = c->in_error = false;
    c->depth--;
    return 1;
}

static const yajl_callbacks answer_callbacks = {
    .yajl_null = answer_on_scalar,
    .yajl_boolean = answer_on_bool,
    .yajl_number = answer_on_number,
    .yajl_string = answer_on_string,
    .yajl_start_map = answer_on_start_map,
    .yajl_map_key = answer_on_key,
    .yajl_end_map = answer_on_close,
    .yajl_start_array = answer_on_start_array,
    .yajl_end_array = answer_on_close,
};

kiln_status cons_answer_parse(const char *body, size_t len, cons_answer *out)
{
    memset(out, 0, sizeof *out);
    answer_ctx c = {.out = out};
    yajl_handle h = yajl_alloc(&answer_callbacks, NULL, &c);
    if (h == NULL) return KILN_ENOMEM;
    yajl_status ys = yajl_parse(h, (const unsigned char *)body, len);
    if (ys == yajl_status_ok) ys = yajl_complete_parse(h);
    yajl_free(h);
    if (c.oom) {
        cons_answer_free(out);
        return KILN_ENOMEM;
    }
    /* A top-level value that is not an object holds neither data nor error. */
    if (ys != yajl_status_ok) {
        cons_answer_free(out);
        return KILN_EINVAL;
    }
    return KILN_OK;
}

void cons_answer_free(cons_answer *a)
{
    answer_free_items(a);
    free(a->error_message);
    a->error_message = NULL;
    free(a->error_code);
    a->error_code = NULL;
    a->has_data = false;
}
