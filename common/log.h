/* log.h - one line per event on stderr: "ts=... level=... comp=... msg key=val...".
 *
 * Use the macros; they skip formatting below the current level. Never log a
 * secret (API keys, bearer tokens). Thread-safe: a line is written with one
 * write(2). */
#ifndef KILN_LOG_H
#define KILN_LOG_H

#include <stdarg.h>

typedef enum { KILN_LOG_DEBUG = 0, KILN_LOG_INFO, KILN_LOG_WARN, KILN_LOG_ERROR } kiln_log_level;

extern kiln_log_level kiln_log_min_level;

/* Sets the component name printed as comp=NAME (a static string) and the level
 * from a name ("debug", "info", "warn", "error"). Returns KILN_EINVAL on an
 * unknown level name. */
void kiln_log_init(const char *component);
int kiln_log_set_level(const char *name);

void kiln_log_write(kiln_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* libmicrohttpd's error log (MHD_OPTION_EXTERNAL_LOGGER with
 * MHD_USE_ERROR_LOG), one line each: why a listener could not start ("Failed
 * to bind to port 8080: Address already in use"), a connection limit
 * reached. A handler's deliberate refusal is only debug. */
void kiln_log_mhd(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#define KILN_LOG(level, ...)                                                   \
    do {                                                                       \
        if ((level) >= kiln_log_min_level) kiln_log_write((level), __VA_ARGS__); \
    } while (0)
#define LOG_DEBUG(...) KILN_LOG(KILN_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) KILN_LOG(KILN_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) KILN_LOG(KILN_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) KILN_LOG(KILN_LOG_ERROR, __VA_ARGS__)

#endif
