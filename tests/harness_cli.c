/* harness_cli.c - runs the kiln CLI for a test and collects its output
 * (see harness.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "harness_internal.h"

/* ---- CLI ------------------------------------------------------------------ */

/* Reads fd until EOF or timeout_ms (then kills pid), reaps pid; *out gets
 * what was read (caller frees). Returns h_status_code (137 when killed). */
static int h_collect(pid_t pid, int fd, const char *name, int64_t timeout_ms, char **out)
{
    h_buf b = {0};
    int64_t end = h_now_ms() + timeout_ms;
    int killed = 0;
    for (;;) {
        int64_t left = end - h_now_ms();
        if (left <= 0) {
            kill(pid, SIGKILL);
            killed = 1;
            break;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(left > 200 ? 200 : left));
        if (pr < 0 && errno == EINTR) continue;
        if (pr > 0) {
            char tmp[4096];
            ssize_t n = read(fd, tmp, sizeof tmp);
            if (n > 0) {
                h_buf_append(&b, tmp, (size_t)n);
                continue;
            }
            if (n == 0) break; /* EOF: the child closed its output */
        }
    }
    close(fd);
    int st = 0;
    if (!h_reap(pid, killed ? 5000 : (int)(timeout_ms > 0 ? timeout_ms : 1000), &st)) {
        kill(pid, SIGKILL);
        h_reap(pid, 5000, &st);
        killed = 1;
    }
    *out = b.buf != NULL ? b.buf : strdup("");
    if (killed) fprintf(stderr, "harness: %s timed out after %lld ms\n", name, (long long)timeout_ms);
    return h_status_code(st);
}

int h_run_cli(h_stack *s, char *const argv[], char **out, int64_t timeout_ms)
{
    *out = NULL;
    char exe[PATH_MAX], log[PATH_MAX];
    snprintf(exe, sizeof exe, "%s/%s", h_bin_dir(), argv[0]);
    snprintf(log, sizeof log, "%s/cli.log", s->log_dir);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    char **envp = h_build_envp(&s->procs[H_GATEWAY]);
    if (envp == NULL) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    pid_t pid = h_spawn(exe, argv, envp, log, fds[1]);
    free(envp);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    return h_collect(pid, fds[0], argv[0], timeout_ms, out);
}

json_t *h_kiln_stats(h_stack *s)
{
    char *out = NULL;
    char *argv[] = {"kiln", "stats", "--json", NULL};
    int rc = h_run_cli(s, argv, &out, 30000);
    cr_assert_eq(rc, 0, "kiln stats exited %d: %s", rc, out);
    json_t *o = json_loads(out, 0, NULL);
    cr_assert_not_null(o, "kiln stats --json printed no JSON: %s", out);
    free(out);
    return o;
}

int h_run_alone(char *const argv[], char *const envp[], char **out, int64_t timeout_ms)
{
    *out = NULL;
    char exe[PATH_MAX];
    snprintf(exe, sizeof exe, "%s/%s", h_bin_dir(), argv[0]);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    pid_t pid = h_spawn(exe, argv, (char **)envp, NULL, fds[1]);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    return h_collect(pid, fds[0], argv[0], timeout_ms, out);
}
