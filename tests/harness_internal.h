/* harness_internal.h - what the harness's files share (harness.c,
 * harness_http.c, harness_nats.c, harness_cli.c); not for tests. */
#ifndef KILN_HARNESS_INTERNAL_H
#define KILN_HARNESS_INTERNAL_H

#include <stddef.h>
#include <sys/types.h>

#include "harness.h"

#define H_BODY_CAP (32u * 1024u * 1024u) /* largest HTTP body or CLI output read */

/* A growing buffer, NUL-terminated. */
typedef struct {
    char *buf;
    size_t len, cap;
} h_buf;

/* Appends n bytes; returns n, or 0 when past H_BODY_CAP or out of memory. */
size_t h_buf_append(h_buf *b, const char *p, size_t n);
void h_sleep_ms(int ms);
/* Forks and execs exe with argv and envp; its stderr goes to log_path
 * (NULL: with its stdout to stdout_fd). Returns the pid, -1 on failure. */
pid_t h_spawn(const char *exe, char *const argv[], char **envp, const char *log_path, int stdout_fd);
/* Waits up to deadline_ms for pid to exit; 1 with its *status, 0 if not. */
int h_reap(pid_t pid, int deadline_ms, int *status);
int h_status_code(int st); /* exit code, 128 + signal, -1 unknown */
void h_curl_global_init(void); /* once per process, before threads */
/* p's environment for exec: p's KILN_* entries, then this process's
 * environment without KILN_* (malloc'ed array; the strings are borrowed).
 * NULL on failure. */
char **h_build_envp(const h_proc *p);

#endif
