/* errors.c - the CONTRACT §3 error body and the code -> HTTP status table. */
#include <string.h>

#include <jansson.h>

#include "errors.h"

static const struct {
    const char *code;
    int status;
} errors_table[] = {
    {"invalid_json", 400},        {"invalid_argument", 400},  {"unknown_field", 400},
    {"unauthenticated", 401},     {"not_found", 404},         {"method_not_allowed", 405},
    {"idempotency_conflict", 409}, {"already_finished", 409}, {"payload_too_large", 413},
    {"unsupported_media_type", 415}, {"rate_limited", 429},   {"unavailable", 503},
};

int gw_errors_status(const char *code)
{
    for (size_t i = 0; i < sizeof errors_table / sizeof errors_table[0]; i++)
        if (code != NULL && strcmp(code, errors_table[i].code) == 0) return errors_table[i].status;
    return 503;
}

void gw_answer_error(gw_answer *a, const char *code, const char *message, const char *field)
{
    int status = gw_errors_status(code);
    gw_answer_reset(a);
    json_t *err = json_object();
    json_t *root = json_object();
    if (err == NULL || root == NULL) goto out;
    /* The _new setters accept NULL values and fail; nothing leaks. */
    json_object_set_new(err, "code", json_string(code));
    json_object_set_new(err, "message", json_string(message != NULL ? message : code));
    if (field != NULL && field[0] != '\0') {
        json_t *f = json_string(field);
        /* A field name echoed from input may be invalid UTF-8: leave it out. */
        if (f != NULL) json_object_set_new(err, "field", f);
    }
    json_object_set_new(root, "error", err);
    err = NULL;
    gw_answer_json(a, status, root);
    root = NULL;
out:
    json_decref(err);
    json_decref(root);
    a->status = status;
    if (status == 401) gw_answer_header(a, "WWW-Authenticate", "Bearer");
    if (status == 503) gw_answer_header(a, "Retry-After", "1");
}
