/* config.h - settings from environment variables and flags, from one table.
 *
 * Each binary declares a table of kiln_setting; kiln_config_load() fills the
 * destinations from (lowest to highest precedence) the default, the
 * environment variable, and the flag (--flag=value or --flag value). It
 * validates types and ranges once at start-up, prints --help from the same
 * table, and reports the first problem as one clear sentence. */
#ifndef KILN_CONFIG_H
#define KILN_CONFIG_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "status.h"

typedef enum {
    KILN_SET_STRING,   /* dst: char ** (points into argv/environ/default; not freed) */
    KILN_SET_INT,      /* dst: int64_t *; min/max inclusive */
    KILN_SET_BOOL,     /* dst: bool *; true/false/1/0/yes/no/on/off */
    KILN_SET_DURATION, /* dst: int64_t * milliseconds; "250ms", "3s", "2m", "1h", bare number = ms */
    KILN_SET_RATE,     /* dst: double * per second; "20/s", "600/min", "100/h", "0" = off */
    KILN_SET_NATS_URLS,/* dst: char **; a NATS server list, checked by kiln_nats_urls_check */
    KILN_SET_LISTEN_ADDR, /* dst: char **; host:port to listen on (kiln_parse_listen_addr);
                           * "" is allowed (off) when the default is "" */
} kiln_setting_type;

typedef struct {
    const char *env;      /* e.g. "KILN_NATS_URL" */
    const char *flag;     /* e.g. "nats-url" (used as --nats-url) */
    kiln_setting_type type;
    const char *def;      /* default as text; NULL = required */
    int64_t min, max;     /* KILN_SET_INT / KILN_SET_DURATION (ms) range; ignored when min > max */
    const char *help;     /* one line */
    void *dst;
} kiln_setting;

/* Loads every setting of the table. On --help/-h prints usage to stdout and
 * returns KILN_EHELP. On an error writes one sentence naming the variable or
 * flag to err and returns KILN_EINVAL. Unknown flags are errors. */
kiln_status kiln_config_load(const kiln_setting *table, size_t n, int argc, char **argv,
                             const char *prog, const char *summary, char *err, size_t errlen);

/* Parsers used by the loader, exposed for tests and for request validation. */
kiln_status kiln_config_parse_duration_ms(const char *s, int64_t *out);
kiln_status kiln_config_parse_rate(const char *s, double *per_sec);
kiln_status kiln_config_parse_int(const char *s, int64_t *out);
kiln_status kiln_config_parse_bool(const char *s, bool *out);

#endif
