/* fuzz_provider_answer.c - what a provider (or anything between it and the
 * consumer) may answer: the body with a status, as the consumer's result
 * handler takes it (consumer/provider_openai.c: JSON, base64, image saves),
 * and the rate-limit headers (Retry-After, retry-after-ms,
 * x-ratelimit-reset-requests). Input: one byte choosing the HTTP status, then
 * the body. A verdict must come with consistent outcome fields. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../consumer/cons.h"
#include "fuzz_input.h"
#include "fuzz_tmpdir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz_provider_answer: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 201, 204, 400, 401, 404, 408, 409,
                                    422, 429, 500, 502, 503, 504, 302, 100};
    const char *dir = fz_tmpdir("answer");
    if (dir == NULL) fuzz_fail("cannot make a temp dir");
    if (size == 0) return 0;
    long http = statuses[data[0] % (sizeof statuses / sizeof statuses[0])];

    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    req.id = "job-1";
    req.user_id = "u";
    req.prompt = "a red fox";
    cons_job *j = calloc(1, sizeof *j);
    if (j == NULL) return 0;
    j->req = &req;
    snprintf(j->id, sizeof j->id, "job-1");
    j->attempt = 1;
    j->max_attempts = 5;
    j->resp = fz_copy(data + 1, size - 1);
    j->resp_len = size - 1;
    if (j->resp == NULL) {
        free(j);
        return 0;
    }

    openai_verdict v = openai_handle_result(j, 0 /* CURLE_OK */, http, dir);
    if (v == OPENAI_OK) {
        if (j->n_images == 0 || j->n_images > CONS_MAX_IMAGES) fuzz_fail("OK without images");
        for (size_t i = 0; i < j->n_images; i++)
            if (j->images[i].url == NULL && j->images[i].pack[0] == '\0')
                fuzz_fail("OK with an image that has neither url nor pack");
    } else if (j->err_code[0] == '\0') {
        fuzz_fail("a failure without an error code");
    }
    for (size_t i = 0; i < CONS_MAX_IMAGES; i++) free(j->images[i].url);
    /* The rate-limit headers' parsers take any bytes; a result stays in range. */
    int64_t waits[3] = {openai_parse_retry_after(j->resp, j->resp_len),
                        openai_parse_retry_after_ms(j->resp, j->resp_len),
                        openai_parse_reset(j->resp, j->resp_len)};
    for (int k = 0; k < 3; k++)
        if (waits[k] < -1 || waits[k] > 3600 * 1000LL) fuzz_fail("a header wait out of range");
    free(j->resp);
    free(j);
    return 0;
}
