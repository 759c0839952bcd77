/* log.c - one line per event on stderr, written with a single write(2). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "status.h"

#define LOG_LINE_MAX 4096 /* longer lines are truncated, marked with "..." */

kiln_log_level kiln_log_min_level = KILN_LOG_INFO;
static const char *log_component = "kiln";

void kiln_log_init(const char *component)
{
    if (component != NULL && component[0] != '\0') log_component = component;
}

int kiln_log_set_level(const char *name)
{
    if (name == NULL) return KILN_EINVAL;
    if (strcmp(name, "debug") == 0) kiln_log_min_level = KILN_LOG_DEBUG;
    else if (strcmp(name, "info") == 0) kiln_log_min_level = KILN_LOG_INFO;
    else if (strcmp(name, "warn") == 0 || strcmp(name, "warning") == 0)
        kiln_log_min_level = KILN_LOG_WARN;
    else if (strcmp(name, "error") == 0) kiln_log_min_level = KILN_LOG_ERROR;
    else return KILN_EINVAL;
    return KILN_OK;
}

static const char *log_level_name(kiln_log_level level)
{
    switch (level) {
    case KILN_LOG_DEBUG: return "debug";
    case KILN_LOG_INFO: return "info";
    case KILN_LOG_WARN: return "warn";
    case KILN_LOG_ERROR: return "error";
    }
    return "info";
}

void kiln_log_write(kiln_log_level level, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    char ts[32];
    kiln_rfc3339_ms(kiln_now_ms(), ts, sizeof ts);
    int n = snprintf(line, sizeof line, "ts=%s level=%s comp=%s ", ts, log_level_name(level),
                     log_component);
    if (n < 0) return;
    size_t len = (size_t)n;
    if (len < sizeof line - 1) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + len, sizeof line - len, fmt, ap);
        va_end(ap);
        if (m > 0) len += (size_t)m;
    }
    if (len >= sizeof line - 1) {
        /* Truncated: keep room for the marker and the newline. */
        len = sizeof line - 5;
        memcpy(line + len, "...", 3);
        len += 3;
    }
    /* One message is one line: embedded newlines would split it. */
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    line[len++] = '\n';
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        len -= (size_t)w;
    }
}

void kiln_log_mhd(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
    /* What MHD says when a handler drops a request on purpose (a hang, a client gone). */
    if (strncmp(buf, "Application reported internal error", 35) == 0)
        LOG_DEBUG("libmicrohttpd msg=\"%s\"", buf);
    else
        LOG_WARN("libmicrohttpd msg=\"%s\"", buf);
}
