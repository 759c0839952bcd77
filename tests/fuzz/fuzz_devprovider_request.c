/* fuzz_devprovider_request.c - a POST /v1/images/generations body as the dev
 * provider reads it (devprovider/images.c), the fault directives at the
 * start of its prompt (devprovider/directives.c), and, for small pictures,
 * the answer it builds. */
#include <stdio.h>
#include <stdlib.h>

#include "../../devprovider/directives.h"
#include "fuzz_input.h"
#include "../../devprovider/images.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz_devprovider_request: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fz_copy(data, size);
    if (body == NULL) return 0;
    dev_images_req r;
    char param[64], msg[256];
    kiln_status st = dev_images_parse(body, size, 256, 256, &r, param, sizeof param, msg, sizeof msg);
    if (st == KILN_OK) {
        dev_directives d;
        if (r.n < 1 || r.n > DEV_N_MAX) fuzz_fail("n outside 1..DEV_N_MAX accepted");
        if (dev_directives_parse(r.prompt, &d) != KILN_OK) fuzz_fail("directives refused a prompt");
        if (d.image_off > r.prompt_len) fuzz_fail("image prompt starts past the prompt's end");
        if (d.nsteps > DEV_STEPS_MAX) fuzz_fail("more steps than DEV_STEPS_MAX");
        for (uint64_t attempt = 1; attempt <= 4; attempt++) {
            dev_step s = dev_directives_action(&d, attempt);
            if (s.kind == DEV_ACT_FAIL && (s.code < 400 || s.code > 599))
                fuzz_fail("a fail directive with a code outside 400..599");
        }
        /* Rendering is the slow part: only pictures up to 64x64. */
        if ((unsigned long)r.w * r.h <= 64 * 64 && r.n <= 2) {
            char *json = NULL;
            size_t json_len = 0;
            if (dev_images_response(&r, r.prompt + d.image_off, r.prompt_len - d.image_off,
                                    "http://127.0.0.1:8090", &json, &json_len) == KILN_OK)
                free(json);
        }
        dev_images_req_clear(&r);
    } else if (st == KILN_EINVAL && msg[0] == '\0') {
        fuzz_fail("a rejected request without a message");
    }
    free(body);
    return 0;
}
