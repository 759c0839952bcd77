/* images.h - the OpenAI Images API request and response bodies of
 * POST /v1/images/generations, and the names of url-format image files. */
#ifndef DEV_IMAGES_H
#define DEV_IMAGES_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_PROMPT_MAX_BYTES 32000 /* like gpt-image-1; longer prompts are a 400 */
#define DEV_N_MAX 10
#define DEV_SIZE_MAX 8192          /* accepted per side; rendering clamps to 1024 */
#define DEV_DEFAULT_SIZE "256x256" /* when the request names no size (configurable) */
#define DEV_FILE_NAME_MAX 64

typedef struct {
    char *prompt;      /* the full prompt, directives included (owned) */
    size_t prompt_len;
    unsigned n;        /* 1..DEV_N_MAX */
    unsigned w, h;     /* rendered size, already clamped to DEV_PICTURE_MAX_SIDE */
    int b64;           /* response_format "b64_json" */
} dev_images_req;

/* Parses "WxH" with each side 1..DEV_SIZE_MAX. */
kiln_status dev_images_parse_size(const char *s, unsigned *w, unsigned *h);

/* Parses and validates a request body; def_w x def_h is the size used when
 * the request names none (or "auto"). On KILN_EINVAL writes the offending
 * field (or "" when the body as a whole is bad) to param and a sentence to msg.
 * On success the caller releases out with dev_images_req_clear(). */
kiln_status dev_images_parse(const char *body, size_t len, unsigned def_w, unsigned def_h,
                             dev_images_req *out, char *param, size_t paramlen, char *msg,
                             size_t msglen);
void dev_images_req_clear(dev_images_req *r);

/* Builds the success body {"created":..,"data":[..]} for r, deriving the
 * pictures from image_prompt (the prompt without directives). base_url is
 * "http://host:port" for url-format images. The caller frees *json. */
kiln_status dev_images_response(const dev_images_req *r, const char *image_prompt,
                                size_t image_len, const char *base_url, char **json,
                                size_t *json_len);

/* Parses a file name "<16 hex seed>-<W>x<H>.png" as made by dev_images_response. */
kiln_status dev_images_file_parse(const char *name, uint64_t *seed, unsigned *w, unsigned *h);

#endif
