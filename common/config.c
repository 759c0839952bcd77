/* config.c - settings from defaults, environment variables and flags, from one table. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "metrics.h"
#include "natsconn.h"

#define CONFIG_MAX_SETTINGS 128 /* more than any binary declares */

typedef enum { SRC_NONE = 0, SRC_DEFAULT, SRC_ENV, SRC_FLAG } config_source;

kiln_status kiln_config_parse_int(const char *s, int64_t *out)
{
    if (s == NULL || out == NULL) return KILN_EINVAL;
    const char *p = s;
    if (*p == '-' || *p == '+') p++;
    if (!isdigit((unsigned char)*p)) return KILN_EINVAL;
    for (const char *q = p; *q != '\0'; q++)
        if (!isdigit((unsigned char)*q)) return KILN_EINVAL;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0') return KILN_EINVAL;
    *out = (int64_t)v;
    return KILN_OK;
}

kiln_status kiln_config_parse_duration_ms(const char *s, int64_t *out)
{
    if (s == NULL || out == NULL) return KILN_EINVAL;
    const char *p = s;
    if (!isdigit((unsigned char)*p)) return KILN_EINVAL;
    int64_t v = 0;
    for (; isdigit((unsigned char)*p); p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10) return KILN_EINVAL;
        v = v * 10 + d;
    }
    int64_t mult;
    if (*p == '\0' || strcmp(p, "ms") == 0) mult = 1;
    else if (strcmp(p, "s") == 0) mult = 1000;
    else if (strcmp(p, "m") == 0 || strcmp(p, "min") == 0) mult = 60 * 1000;
    else if (strcmp(p, "h") == 0) mult = 3600 * 1000;
    else if (strcmp(p, "d") == 0) mult = 24 * 3600 * 1000;
    else return KILN_EINVAL;
    if (v > INT64_MAX / mult) return KILN_EINVAL;
    *out = v * mult;
    return KILN_OK;
}

kiln_status kiln_config_parse_rate(const char *s, double *per_sec)
{
    if (s == NULL || per_sec == NULL) return KILN_EINVAL;
    if (strcmp(s, "0") == 0 || strcmp(s, "off") == 0) {
        *per_sec = 0.0;
        return KILN_OK;
    }
    /* strtod would accept "inf", "nan", hex and leading spaces: require digits. */
    if (!isdigit((unsigned char)s[0])) return KILN_EINVAL;
    for (const char *q = s; *q != '\0' && *q != '/'; q++)
        if (!isdigit((unsigned char)*q) && *q != '.') return KILN_EINVAL;
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || !isfinite(v) || v < 0) return KILN_EINVAL;
    double div;
    if (*end == '\0') div = 1.0; /* a bare number is per second */
    else if (strcmp(end, "/s") == 0 || strcmp(end, "/sec") == 0) div = 1.0;
    else if (strcmp(end, "/m") == 0 || strcmp(end, "/min") == 0) div = 60.0;
    else if (strcmp(end, "/h") == 0 || strcmp(end, "/hour") == 0) div = 3600.0;
    else return KILN_EINVAL;
    *per_sec = v / div;
    return KILN_OK;
}

kiln_status kiln_config_parse_bool(const char *s, bool *out)
{
    if (s == NULL || out == NULL) return KILN_EINVAL;
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return KILN_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return KILN_OK;
        }
    }
    return KILN_EINVAL;
}

static const char *config_type_hint(kiln_setting_type t)
{
    switch (t) {
    case KILN_SET_STRING: return "<string>";
    case KILN_SET_INT: return "<int>";
    case KILN_SET_BOOL: return "<bool>";
    case KILN_SET_DURATION: return "<duration>";
    case KILN_SET_RATE: return "<rate>";
    case KILN_SET_NATS_URLS: return "<urls>";
    case KILN_SET_LISTEN_ADDR: return "<host:port>";
    }
    return "<value>";
}

/* Formats a millisecond count the way a user would write it. */
static void config_fmt_duration(int64_t ms, char *buf, size_t len)
{
    if (ms != 0 && ms % 86400000 == 0) snprintf(buf, len, "%" PRId64 "d", ms / 86400000);
    else if (ms != 0 && ms % 3600000 == 0) snprintf(buf, len, "%" PRId64 "h", ms / 3600000);
    else if (ms != 0 && ms % 60000 == 0) snprintf(buf, len, "%" PRId64 "m", ms / 60000);
    else if (ms != 0 && ms % 1000 == 0) snprintf(buf, len, "%" PRId64 "s", ms / 1000);
    else snprintf(buf, len, "%" PRId64 "ms", ms);
}

static const char *config_str(const char *s) { return s != NULL ? s : ""; }

static void config_default_text(const kiln_setting *s, char *buf, size_t len)
{
    if (s->def == NULL) snprintf(buf, len, "(required)");
    else if (s->def[0] == '\0') snprintf(buf, len, "(default \"\")");
    else snprintf(buf, len, "(default %s)", s->def);
}

/* One line per setting: flag, environment variable, default, help, range. */
static void config_print_usage(const kiln_setting *table, size_t n, const char *prog,
                               const char *summary)
{
    size_t wflag = strlen("--help"), wenv = 0, wdef = 0;
    for (size_t i = 0; i < n; i++) {
        char def[200];
        config_default_text(&table[i], def, sizeof def);
        size_t f = strlen(config_str(table[i].flag)) + 3 + strlen(config_type_hint(table[i].type));
        if (f > wflag) wflag = f;
        if (strlen(config_str(table[i].env)) > wenv) wenv = strlen(config_str(table[i].env));
        if (strlen(def) > wdef) wdef = strlen(def);
    }
    printf("Usage: %s [flags]\n", prog != NULL ? prog : "kiln");
    if (summary != NULL && summary[0] != '\0') printf("%s\n", summary);
    printf("\nEvery setting is a flag or an environment variable (the flag wins).\n");
    printf("Durations: 250ms, 3s, 2m, 1h, 7d (bare number = ms). Rates: 20/s, 600/min, 100/h, 0 = off.\n\n");
    for (size_t i = 0; i < n; i++) {
        const kiln_setting *s = &table[i];
        char flag[160];
        snprintf(flag, sizeof flag, "--%s %s", config_str(s->flag), config_type_hint(s->type));
        char def[200];
        config_default_text(s, def, sizeof def);
        char range[96] = "";
        if (s->min <= s->max && s->type == KILN_SET_INT)
            snprintf(range, sizeof range, " [%" PRId64 "..%" PRId64 "]", s->min, s->max);
        else if (s->min <= s->max && s->type == KILN_SET_DURATION) {
            char a[32], b[32];
            config_fmt_duration(s->min, a, sizeof a);
            config_fmt_duration(s->max, b, sizeof b);
            snprintf(range, sizeof range, " [%s..%s]", a, b);
        }
        printf("  %-*s  %-*s  %-*s  %s%s\n", (int)wflag, flag, (int)wenv, config_str(s->env),
               (int)wdef, def, config_str(s->help), range);
    }
    printf("  %-*s  %-*s  %-*s  %s\n", (int)wflag, "--help", (int)wenv, "", (int)wdef, "",
           "print this help");
}

/* Names where a value came from, for error messages: "KILN_X=v" or "--x=v". */
static void config_origin(const kiln_setting *s, config_source src, const char *text, char *buf,
                          size_t len)
{
    switch (src) {
    case SRC_FLAG: snprintf(buf, len, "--%s=%s", s->flag, text); break;
    case SRC_ENV: snprintf(buf, len, "%s=%s", s->env, text); break;
    default: snprintf(buf, len, "default %s=%s", s->env, text); break;
    }
}

static kiln_status config_apply(const kiln_setting *s, config_source src, const char *text,
                                char *err, size_t errlen)
{
    char origin[256], shown[160];
    if (s->type == KILN_SET_NATS_URLS) /* a server list may hold passwords */
        kiln_nats_urls_redact(text, shown, sizeof shown);
    config_origin(s, src, s->type == KILN_SET_NATS_URLS ? shown : text, origin, sizeof origin);
    bool ranged = s->min <= s->max;
    switch (s->type) {
    case KILN_SET_STRING:
        *(char **)s->dst = (char *)text;
        return KILN_OK;
    case KILN_SET_LISTEN_ADDR: {
        struct sockaddr_storage ss;
        size_t sslen;
        int off_allowed = s->def != NULL && s->def[0] == '\0';
        if (!(text[0] == '\0' && off_allowed) &&
            kiln_parse_listen_addr(text, &ss, &sslen) != KILN_OK) { /* it logged why */
            snprintf(err, errlen, "%s: not an address to listen on (host:port, [IPv6]:port%s)",
                     origin, off_allowed ? ", or empty for off" : "");
            return KILN_EINVAL;
        }
        *(char **)s->dst = (char *)text;
        return KILN_OK;
    }
    case KILN_SET_NATS_URLS: {
        char why[160];
        if (kiln_nats_urls_check(text, why, sizeof why) != KILN_OK) {
            snprintf(err, errlen, "%s: %s", origin, why);
            return KILN_EINVAL;
        }
        *(char **)s->dst = (char *)text;
        return KILN_OK;
    }
    case KILN_SET_INT: {
        int64_t v;
        if (kiln_config_parse_int(text, &v) != KILN_OK) {
            snprintf(err, errlen, "%s: not an integer", origin);
            return KILN_EINVAL;
        }
        if (ranged && (v < s->min || v > s->max)) {
            snprintf(err, errlen, "%s: must be between %" PRId64 " and %" PRId64, origin, s->min,
                     s->max);
            return KILN_EINVAL;
        }
        *(int64_t *)s->dst = v;
        return KILN_OK;
    }
    case KILN_SET_BOOL: {
        bool v;
        if (kiln_config_parse_bool(text, &v) != KILN_OK) {
            snprintf(err, errlen, "%s: not a boolean (true/false/1/0/yes/no/on/off)", origin);
            return KILN_EINVAL;
        }
        *(bool *)s->dst = v;
        return KILN_OK;
    }
    case KILN_SET_DURATION: {
        int64_t v;
        if (kiln_config_parse_duration_ms(text, &v) != KILN_OK) {
            snprintf(err, errlen, "%s: not a duration (e.g. 250ms, 3s, 2m, 1h, 7d)", origin);
            return KILN_EINVAL;
        }
        if (ranged && (v < s->min || v > s->max)) {
            char a[32], b[32];
            config_fmt_duration(s->min, a, sizeof a);
            config_fmt_duration(s->max, b, sizeof b);
            snprintf(err, errlen, "%s: must be between %s and %s", origin, a, b);
            return KILN_EINVAL;
        }
        *(int64_t *)s->dst = v;
        return KILN_OK;
    }
    case KILN_SET_RATE: {
        double v;
        if (kiln_config_parse_rate(text, &v) != KILN_OK) {
            snprintf(err, errlen, "%s: not a rate (e.g. 20/s, 600/min, 100/h, 0 = off)", origin);
            return KILN_EINVAL;
        }
        *(double *)s->dst = v;
        return KILN_OK;
    }
    }
    snprintf(err, errlen, "%s: unknown setting type", origin);
    return KILN_EINVAL;
}

static const kiln_setting *config_find_flag(const kiln_setting *table, size_t n, const char *name,
                                            size_t namelen, size_t *idx)
{
    for (size_t i = 0; i < n; i++) {
        if (table[i].flag != NULL && strlen(table[i].flag) == namelen &&
            memcmp(table[i].flag, name, namelen) == 0) {
            *idx = i;
            return &table[i];
        }
    }
    return NULL;
}

kiln_status kiln_config_load(const kiln_setting *table, size_t n, int argc, char **argv,
                             const char *prog, const char *summary, char *err, size_t errlen)
{
    char dummy[1];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (table == NULL || n > CONFIG_MAX_SETTINGS) {
        snprintf(err, errlen, "bad settings table");
        return KILN_EINVAL;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            config_print_usage(table, n, prog, summary);
            return KILN_EHELP;
        }
    }

    const char *text[CONFIG_MAX_SETTINGS];
    config_source src[CONFIG_MAX_SETTINGS];
    for (size_t i = 0; i < n; i++) {
        text[i] = table[i].def;
        src[i] = table[i].def != NULL ? SRC_DEFAULT : SRC_NONE;
        if (table[i].dst == NULL || table[i].flag == NULL || table[i].env == NULL) {
            snprintf(err, errlen, "bad settings table entry %zu", i);
            return KILN_EINVAL;
        }
        const char *e = getenv(table[i].env);
        if (e != NULL) {
            text[i] = e;
            src[i] = SRC_ENV;
        }
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return KILN_EINVAL;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t namelen = eq != NULL ? (size_t)(eq - name) : strlen(name);
        size_t idx = 0;
        const kiln_setting *s = config_find_flag(table, n, name, namelen, &idx);
        if (s == NULL) {
            snprintf(err, errlen, "unknown flag '--%.*s' (see --help)", (int)namelen, name);
            return KILN_EINVAL;
        }
        const char *val;
        if (eq != NULL) {
            val = eq + 1;
        } else if (s->type == KILN_SET_BOOL) {
            /* "--flag" alone means true; "--flag no" is accepted too. */
            bool b;
            if (i + 1 < argc && kiln_config_parse_bool(argv[i + 1], &b) == KILN_OK) val = argv[++i];
            else val = "true";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            snprintf(err, errlen, "--%s: needs a value", s->flag);
            return KILN_EINVAL;
        }
        text[idx] = val;
        src[idx] = SRC_FLAG;
    }

    for (size_t i = 0; i < n; i++) {
        if (src[i] == SRC_NONE) {
            snprintf(err, errlen, "%s (--%s) is required: %s", table[i].env, table[i].flag,
                     table[i].help != NULL ? table[i].help : "no default");
            return KILN_EINVAL;
        }
        kiln_status st = config_apply(&table[i], src[i], text[i], err, errlen);
        if (st != KILN_OK) return st;
    }
    return KILN_OK;
}
