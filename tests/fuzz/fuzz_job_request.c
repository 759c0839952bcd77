/* fuzz_job_request.c - bytes published to jobs.generate* by any service: the
 * JobRequest decode and the rules every binary applies to it
 * (common/jobreq.c), then the job object a valid one renders as. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../consumer/cons.h"
#include "fuzz_input.h"
#include "../../gateway/job_json.h"
#include "jobreq.h"
#include "kiln_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The same bytes as a dead letter (`kiln dead retry`): a retry that is
 * accepted is a valid job under another id, without an Idempotency-Key. */
static void fuzz_retry(const uint8_t *data, size_t size)
{
    char id[72], err[256], field[72], msg[256];
    uint8_t *buf = NULL;
    size_t len = 0;
    Kiln__V1__Priority prio;
    if (kiln_client_retry_encode(data, size, id, sizeof id, err, sizeof err, &buf, &len, &prio) !=
        KILN_OK)
        return;
    Kiln__V1__JobRequest *again = kiln__v1__job_request__unpack(NULL, len, buf);
    if (again == NULL || kiln_jobreq_validate(again, field, sizeof field, msg, sizeof msg) != KILN_OK ||
        strcmp(again->id, id) != 0 || again->idempotency_key[0] != '\0' ||
        again->priority != prio) {
        fprintf(stderr, "fuzz_job_request: a retry is not a valid new job (%s)\n",
                again == NULL ? "undecodable" : field);
        abort();
    }
    kiln__v1__job_request__free_unpacked(again, NULL);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = (uint8_t *)fz_copy(data, size);
    if (copy == NULL) return 0;
    Kiln__V1__JobRequest *r = kiln__v1__job_request__unpack(NULL, size, copy);
    if (r != NULL) {
        char field[72], msg[256];
        if (kiln_jobreq_validate(r, field, sizeof field, msg, sizeof msg) == KILN_OK) {
            (void)kiln_jobreq_n(r);
            (void)kiln_jobreq_timeout_s(r);
            (void)kiln_jobreq_max_attempts(r);
            /* The consumer's provider request for a valid job is JSON. */
            char *body = NULL;
            if (openai_build_request(r, &body) == KILN_OK) {
                json_t *back = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
                if (back == NULL) {
                    fprintf(stderr, "fuzz_job_request: provider request is not JSON: %s\n", body);
                    abort();
                }
                json_decref(back);
                free(body);
            }
        }
        /* The store renders even a record whose request it would not accept
         * (an older version's); that must not fail either. */
        Kiln__V1__JobRecord rec = KILN__V1__JOB_RECORD__INIT;
        rec.request = r;
        json_t *job = gw_jobjson_job(&rec);
        if (job != NULL) {
            free(json_dumps(job, JSON_COMPACT));
            json_decref(job);
        }
        kiln__v1__job_request__free_unpacked(r, NULL);
    }
    fuzz_retry(copy, size);
    free(copy);
    return 0;
}
