/* harness.c - integration test harness: real processes on free ports, HTTP via
 * libcurl, NATS via libnats, deadline-based waits (see harness.h). */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <curl/curl.h>

#include "kiln.pb-c.h"

extern char **environ;

#define H_START_DEADLINE_MS 30000 /* per component, generous for ASan builds */
#define H_STOP_DEADLINE_MS 10000
#define H_BODY_CAP (32u * 1024u * 1024u)
#define H_ENV_CAP 512

static const char *const h_comp_names[H_NPROC] = {"nats", "devprovider", "store", "consumer",
                                                  "gateway"};
static const char *const h_comp_bins[H_NPROC] = {NULL, "kiln-devprovider", "kiln-store",
                                                 "kiln-consumer", "kiln-gateway"};

/* Every pid this worker started and has not reaped, for h_fini. */
#define H_MAX_PIDS 64
static pid_t h_pids[H_MAX_PIDS];

static void h_pid_add(pid_t p)
{
    for (int i = 0; i < H_MAX_PIDS; i++) {
        if (h_pids[i] == 0) {
            h_pids[i] = p;
            return;
        }
    }
}

static void h_pid_del(pid_t p)
{
    for (int i = 0; i < H_MAX_PIDS; i++)
        if (h_pids[i] == p) h_pids[i] = 0;
}

/* ---- small utilities ------------------------------------------------------ */

/* Added to the monotonic clock so that every h_now_ms() value is larger
 * than any wait: an absolute time passed where a duration belongs fails
 * h_wait_for's check even just after boot (only differences of h_now_ms()
 * values mean anything). */
#define H_CLOCK_OFFSET_MS (1000LL * 1000 * 1000)

int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return H_CLOCK_OFFSET_MS + (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int h_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t h_median(int64_t *v, size_t n)
{
    if (n == 0) return 0;
    qsort(v, n, sizeof v[0], h_cmp_i64);
    return v[n / 2];
}

static void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* No test waits a day: a larger "duration" is an absolute time passed by
 * mistake (h_now_ms() + N), which would wait until the suite's timeout. */
#define H_WAIT_MAX_MS (24LL * 3600 * 1000)

int h_wait_for(int (*cond)(void *arg), void *arg, int64_t deadline_ms, int poll_ms)
{
    cr_assert(deadline_ms <= H_WAIT_MAX_MS,
              "h_wait_for takes a duration in ms, not an absolute time (got %lld)",
              (long long)deadline_ms);
    int64_t end = h_now_ms() + deadline_ms;
    for (;;) {
        if (cond(arg)) return 1;
        if (h_now_ms() >= end) return 0;
        h_sleep_ms(poll_ms > 0 ? poll_ms : 50);
    }
}

const char *h_bin_dir(void)
{
    const char *d = getenv("KILN_BIN_DIR");
    return (d != NULL && d[0] != '\0') ? d : "build/san/bin";
}

/* The first port the kernel hands out to outgoing connections (and to
 * bind(port 0)); ports below it are never taken by a connect(). */
static int h_ephemeral_low(void)
{
    int lo = 32768, hi = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768;
        fclose(f);
    }
    return lo;
}

/* Binds a loopback TCP socket to port (0: any), with SO_REUSEADDR when
 * reuse is set; returns the fd or -1, and the bound port in *bound. */
static int h_bind_port(int port, int reuse, int *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd >= 0 && reuse) (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

/* n distinct free loopback ports for a stack's listeners. They come from
 * below the ephemeral range: a port from bind(0) is free only until it is
 * closed, and between that and the daemon's own bind an outgoing
 * connection of any process could be given it (a dev provider once failed
 * with "address in use" that way). Each candidate is bound while the rest
 * are chosen, so none is handed out twice. 0 on success. */
static int h_free_ports(int *ports, int n)
{
    int fds[8], ok = n <= 8, low = h_ephemeral_low(), base = 10000;
    unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int i = 0; i < n; i++) fds[i] = -1;
    for (int i = 0; ok && i < n; i++) {
        /* Random tries in [base, low); bind(0) if that range is too small. */
        for (int t = 0; t < 200 && fds[i] < 0 && low - base > 1000; t++)
            fds[i] = h_bind_port(base + (int)(rand_r(&seed) % (unsigned)(low - base)), 0, &ports[i]);
        if (fds[i] < 0) fds[i] = h_bind_port(0, 0, &ports[i]);
        ok = fds[i] >= 0;
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
    return ok ? 0 : -1;
}

static int h_tcp_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static int h_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void h_rm_rf(const char *path)
{
    nftw(path, h_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void h_mkdir(const char *p)
{
    if (mkdir(p, 0755) != 0 && errno != EEXIST) fprintf(stderr, "harness: mkdir %s: %s\n", p, strerror(errno));
}

static char *h_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (len + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n == 0) break;
    }
    fclose(f);
    if (buf == NULL) return NULL;
    buf[len] = '\0';
    if (len_out != NULL) *len_out = len;
    return buf;
}

static void h_print_tail(const char *path, int lines)
{
    size_t len = 0;
    char *buf = h_read_file(path, &len);
    if (buf == NULL) return;
    const char *p = buf + len;
    int seen = 0;
    while (p > buf) {
        p--;
        if (*p == '\n' && p != buf + len - 1 && ++seen >= lines) {
            p++;
            break;
        }
    }
    fprintf(stderr, "----- tail of %s -----\n%s%s----- end of %s -----\n", path, p,
            (len > 0 && buf[len - 1] != '\n') ? "\n" : "", path);
    free(buf);
}

/* Sanitizer reports in a log file. */
static int h_log_sanitizer_hits(const char *path)
{
    char *buf = h_read_file(path, NULL);
    if (buf == NULL) return 0;
    static const char *const pats[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                       "runtime error:", "AddressSanitizer:DEADLYSIGNAL",
                                       "ThreadSanitizer"};
    int hits = 0;
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++)
        if (strstr(buf, pats[i]) != NULL) hits++;
    free(buf);
    return hits;
}

/* ---- environment ---------------------------------------------------------- */

static int h_env_has(char **env, int n, const char *kv)
{
    const char *eq = strchr(kv, '=');
    size_t klen = eq != NULL ? (size_t)(eq - kv) : strlen(kv);
    for (int i = 0; i < n; i++)
        if (strncmp(env[i], kv, klen) == 0 && env[i][klen] == '=') return 1;
    return 0;
}

/* Adds a strdup of kv unless its name is already present (first wins). */
static void h_proc_env_add(h_proc *p, const char *kv)
{
    if (kv == NULL || p->nenv >= H_MAX_ENV || h_env_has(p->env, p->nenv, kv)) return;
    if (strlen(kv) >= sizeof p->env_store[0]) {
        fprintf(stderr, "harness: environment entry too long: %.40s...\n", kv);
        return;
    }
    snprintf(p->env_store[p->nenv], sizeof p->env_store[0], "%s", kv);
    p->env[p->nenv] = p->env_store[p->nenv];
    p->nenv++;
}

static void h_proc_env_addf(h_proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void h_proc_env_addf(h_proc *p, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    h_proc_env_add(p, buf);
}

int h_proc_setenv(h_stack *s, h_comp c, const char *kv)
{
    h_proc *p = &s->procs[c];
    const char *eq = strchr(kv, '=');
    size_t klen = eq != NULL ? (size_t)(eq - kv) : strlen(kv);
    if (strlen(kv) >= sizeof p->env_store[0]) return -1;
    for (int i = 0; i < p->nenv; i++) {
        if (strncmp(p->env_store[i], kv, klen) != 0 || p->env_store[i][klen] != '=') continue;
        if (eq != NULL) {
            snprintf(p->env_store[i], sizeof p->env_store[0], "%s", kv);
            return 0;
        }
        /* Remove: close the gap, pointers follow their slots. */
        for (int k = i; k + 1 < p->nenv; k++)
            memcpy(p->env_store[k], p->env_store[k + 1], sizeof p->env_store[0]);
        p->nenv--;
        p->env[p->nenv] = NULL;
        return 0;
    }
    if (eq == NULL) return 0;
    if (p->nenv >= H_MAX_ENV) return -1;
    h_proc_env_add(p, kv);
    return 0;
}

/* The full envp for a child: the process's KILN_* entries, then the parent's
 * environment without KILN_* (so a developer's shell settings do not leak in).
 * Built before fork: no malloc in the child. */
static char **h_build_envp(const h_proc *p)
{
    size_t n = 0;
    while (environ[n] != NULL) n++;
    char **envp = calloc(n + (size_t)p->nenv + 1, sizeof *envp);
    if (envp == NULL) return NULL;
    size_t k = 0;
    for (int i = 0; i < p->nenv; i++) envp[k++] = p->env[i];
    for (size_t i = 0; i < n && k < n + (size_t)p->nenv; i++)
        if (strncmp(environ[i], "KILN_", 5) != 0) envp[k++] = environ[i];
    envp[k] = NULL;
    return envp;
}

static const char *h_nats_exe(void)
{
    static char path[PATH_MAX];
    if (path[0] != '\0') return path;
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/usr/bin:/usr/local/bin", env != NULL ? env : "");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d != NULL; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof path, "%s/nats-server", d);
        if (access(path, X_OK) == 0) return path;
    }
    snprintf(path, sizeof path, "nats-server");
    return path;
}

/* ---- processes ------------------------------------------------------------ */

static pid_t h_spawn(const char *exe, char *const argv[], char **envp, const char *log_path,
                     int stdout_fd)
{
    /* No log_path: stderr goes with stdout to stdout_fd. */
    int logfd = log_path != NULL ? open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)
                                 : dup(stdout_fd);
    if (logfd < 0) {
        fprintf(stderr, "harness: open %s: %s\n", log_path != NULL ? log_path : "stdout",
                strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* Dies with the test worker, so a timed-out test leaves nothing running. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(stdout_fd >= 0 ? stdout_fd : logfd, 1);
        dup2(logfd, 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(exe, argv, envp);
        dprintf(2, "harness: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(logfd);
    if (pid < 0) fprintf(stderr, "harness: fork: %s\n", strerror(errno));
    else h_pid_add(pid);
    return pid;
}

/* Waits for pid up to deadline_ms; returns 1 and the status when it exited. */
static int h_reap(pid_t pid, int deadline_ms, int *status)
{
    int64_t end = h_now_ms() + deadline_ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
            h_pid_del(pid);
            if (r < 0) *status = -1;
            return 1;
        }
        if (h_now_ms() >= end) return 0;
        h_sleep_ms(20);
    }
}

static int h_status_code(int st)
{
    if (st < 0) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

int h_proc_alive(h_stack *s, h_comp c)
{
    h_proc *p = &s->procs[c];
    if (p->pid <= 0) return 0;
    int st = 0;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        h_pid_del(p->pid);
        p->pid = 0;
        p->last_status = st;
        if (c != H_NATS) p->unclean++; /* exited on its own */
        fprintf(stderr, "harness: %s exited unexpectedly (code %d)\n", p->name, h_status_code(st));
        return 0;
    }
    return 1;
}

/* The port component c listens on (a daemon's metrics for store and consumer). */
static int h_comp_port(const h_stack *s, h_comp c)
{
    switch (c) {
    case H_NATS: return s->nats_port;
    case H_DEVPROVIDER: return s->dev_port;
    case H_STORE: return s->store_metrics_port;
    case H_CONSUMER: return s->cons_metrics_port;
    case H_GATEWAY: return s->gw_port;
    default: return 0;
    }
}

/* Binds c's port while a test keeps c stopped (harness.h). SO_REUSEADDR
 * lets the bind pass the stopped process's connections in TIME_WAIT;
 * another stack's h_free_ports binds without it, and so passes over the
 * port. A failed hold only leaves the port unguarded, as before. */
static void h_port_hold(h_stack *s, h_comp c)
{
    h_proc *p = &s->procs[c];
    int port = h_comp_port(s, c), bound = 0;
    if (p->port_hold != 0 || port <= 0) return;
    int fd = h_bind_port(port, 1, &bound);
    if (fd >= 0) p->port_hold = fd + 1;
}

static void h_port_release(h_proc *p)
{
    if (p->port_hold == 0) return;
    close(p->port_hold - 1);
    p->port_hold = 0;
}

int h_proc_start(h_stack *s, h_comp c)
{
    h_proc *p = &s->procs[c];
    if (p->pid > 0) return 0;
    h_port_release(p);
    char port[16];
    char *argv[12];
    int a = 0;
    if (c == H_NATS) {
        snprintf(port, sizeof port, "%d", s->nats_port);
        argv[a++] = (char *)"nats-server";
        argv[a++] = (char *)"-js";
        argv[a++] = (char *)"-a";
        argv[a++] = (char *)"127.0.0.1";
        argv[a++] = (char *)"-p";
        argv[a++] = port;
        argv[a++] = (char *)"-sd";
        argv[a++] = s->nats_dir;
    } else {
        argv[a++] = (char *)h_comp_bins[c];
    }
    argv[a] = NULL;
    char **envp = h_build_envp(p);
    if (envp == NULL) return -1;
    if (p->starts > 0) {
        int fd = open(p->log_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) {
            dprintf(fd, "===== harness: restart #%d of %s =====\n", p->starts, p->name);
            close(fd);
        }
    }
    pid_t pid = h_spawn(p->exe, argv, envp, p->log_path, -1);
    free(envp);
    if (pid < 0) return -1;
    p->pid = pid;
    p->starts++;
    return 0;
}

int h_proc_kill9(h_stack *s, h_comp c)
{
    h_proc *p = &s->procs[c];
    if (p->pid <= 0) return -1;
    kill(p->pid, SIGKILL);
    int st = 0;
    if (!h_reap(p->pid, H_STOP_DEADLINE_MS, &st)) return -1;
    p->pid = 0;
    p->last_status = st;
    h_port_hold(s, c);
    return 0;
}

pid_t h_spawn_another(h_stack *s, h_comp c, const char *const *env, const char *log_name)
{
    h_proc *p = &s->procs[c];
    h_proc tmp;
    memset(&tmp, 0, sizeof tmp);
    for (int i = 0; env != NULL && env[i] != NULL; i++) h_proc_env_add(&tmp, env[i]);
    for (int i = 0; i < p->nenv; i++) h_proc_env_add(&tmp, p->env[i]);
    char **envp = h_build_envp(&tmp);
    if (envp == NULL) return -1;
    char log_path[PATH_MAX];
    snprintf(log_path, sizeof log_path, "%s/%s.log", s->log_dir, log_name);
    char *argv[] = {(char *)h_comp_bins[c], NULL};
    pid_t pid = h_spawn(p->exe, argv, envp, log_path, -1);
    free(envp);
    return pid;
}

/* SIGTERMs pid and reaps it into *st; after H_STOP_DEADLINE_MS, SIGKILLs
 * it and returns 0 (1 when it exited on its own). */
static int h_term_reap(pid_t pid, int *st)
{
    kill(pid, SIGTERM);
    if (h_reap(pid, H_STOP_DEADLINE_MS, st)) return 1;
    kill(pid, SIGKILL);
    h_reap(pid, H_STOP_DEADLINE_MS, st);
    return 0;
}

int h_term_pid(pid_t pid)
{
    int st = 0;
    if (pid <= 0) return -1;
    return h_term_reap(pid, &st) ? h_status_code(st) : 128 + SIGKILL;
}

int h_proc_term(h_stack *s, h_comp c)
{
    h_proc *p = &s->procs[c];
    if (p->pid <= 0) return -1;
    int st = 0;
    if (!h_term_reap(p->pid, &st)) {
        fprintf(stderr, "harness: %s did not exit within %d ms of SIGTERM; SIGKILL\n", p->name,
                H_STOP_DEADLINE_MS);
        if (c != H_NATS) p->unclean++;
        p->pid = 0;
        p->last_status = st;
        h_port_hold(s, c);
        return 128 + SIGKILL;
    }
    p->pid = 0;
    p->last_status = st;
    h_port_hold(s, c);
    int code = h_status_code(st);
    if (code != 0 && c != H_NATS) {
        p->unclean++;
        fprintf(stderr, "harness: %s exited with code %d after SIGTERM\n", p->name, code);
    }
    return code;
}

int h_proc_restart(h_stack *s, h_comp c)
{
    if (s->procs[c].pid > 0) h_proc_term(s, c);
    return h_proc_start(s, c);
}

void h_stack_dump_logs(const h_stack *s, int lines)
{
    for (int c = 0; c < H_NPROC; c++)
        if (s->procs[c].log_path[0] != '\0') h_print_tail(s->procs[c].log_path, lines);
}

int h_log_count(const h_stack *s, h_comp c, const char *needle)
{
    return h_file_log_count(s->procs[c].log_path, needle);
}

int h_file_log_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f) != NULL) n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

int h_log_contains(const h_stack *s, h_comp c, const char *needle)
{
    return h_log_count(s, c, needle) > 0;
}

typedef struct {
    const h_stack *s;
    h_comp c;
    const char *needle;
} h_log_arg;

static int h_log_has(void *arg)
{
    h_log_arg *a = arg;
    return h_log_contains(a->s, a->c, a->needle);
}

int h_wait_log(const h_stack *s, h_comp c, const char *needle, int64_t deadline_ms)
{
    h_log_arg a = {s, c, needle};
    return h_wait_for(h_log_has, &a, deadline_ms, 50);
}

typedef struct {
    const char *path, *needle;
} h_file_log_arg;

static int h_file_log_has(void *arg)
{
    h_file_log_arg *a = arg;
    return h_file_log_count(a->path, a->needle) > 0;
}

int h_wait_file_log(const char *path, const char *needle, int64_t deadline_ms)
{
    h_file_log_arg a = {path, needle};
    return h_wait_for(h_file_log_has, &a, deadline_ms, 50);
}

/* ---- stack ---------------------------------------------------------------- */

static void h_test_dir(char *out, size_t len)
{
    const char *root = getenv("KILN_IT_ROOT");
    const char *suite = criterion_current_suite != NULL ? criterion_current_suite->name : "x";
    const char *test = criterion_current_test != NULL ? criterion_current_test->name : "x";
    if (root != NULL && root[0] != '\0') {
        for (int k = 0; k < 100; k++) {
            if (k == 0) snprintf(out, len, "%s/%s.%s", root, suite, test);
            else snprintf(out, len, "%s/%s.%s.%d", root, suite, test, k);
            if (mkdir(out, 0755) == 0) return;
        }
    }
    snprintf(out, len, "/tmp/kiln-it-%s.%s.XXXXXX", suite, test);
    if (mkdtemp(out) == NULL) fprintf(stderr, "harness: mkdtemp: %s\n", strerror(errno));
}

static pthread_once_t h_curl_once = PTHREAD_ONCE_INIT;
static void h_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

/* Waits until GET url answers `want`. */
typedef struct {
    const char *url;
    long want;
    h_stack *s;
    h_comp comp;
    int dead;
} h_ready_arg;

static int h_ready_http(void *arg)
{
    h_ready_arg *ra = arg;
    if (ra->s != NULL && !h_proc_alive(ra->s, ra->comp)) {
        ra->dead = 1;
        return 1;
    }
    h_resp r;
    long st = h_http_timeout(&r, "GET", ra->url, NULL, NULL, NULL, 0, NULL, 2000);
    h_resp_free(&r);
    return st == ra->want;
}

typedef struct {
    h_stack *s;
    int dead;
} h_nats_ready_arg;

static int h_ready_nats(void *arg)
{
    h_nats_ready_arg *na = arg;
    if (!h_proc_alive(na->s, H_NATS)) {
        na->dead = 1;
        return 1;
    }
    return h_tcp_open(na->s->nats_port);
}

static int h_wait_nats(h_stack *s)
{
    h_nats_ready_arg na = {s, 0};
    if (!h_wait_for(h_ready_nats, &na, H_START_DEADLINE_MS, 30) || na.dead) {
        fprintf(stderr, "harness: nats-server not ready on port %d\n", s->nats_port);
        return -1;
    }
    return 0;
}

static int h_wait_http(h_stack *s, h_comp c, const char *url, long want)
{
    h_ready_arg ra = {url, want, s, c, 0};
    if (!h_wait_for(h_ready_http, &ra, H_START_DEADLINE_MS, 50) || ra.dead) {
        fprintf(stderr, "harness: %s not ready: GET %s never answered %ld%s\n",
                s->procs[c].name, url, want, ra.dead ? " (process died)" : "");
        return -1;
    }
    return 0;
}

static int h_stack_start_once(h_stack *s, const h_stack_opts *opts)
{
    memset(s, 0, sizeof *s);
    h_test_dir(s->root, sizeof s->root);
    snprintf(s->data_dir, sizeof s->data_dir, "%s/data", s->root);
    snprintf(s->nats_dir, sizeof s->nats_dir, "%s/nats", s->root);
    snprintf(s->log_dir, sizeof s->log_dir, "%s/logs", s->root);
    h_mkdir(s->data_dir);
    h_mkdir(s->nats_dir);
    h_mkdir(s->log_dir);
    int ports[5];
    if (h_free_ports(ports, 5) != 0) return -1;
    s->nats_port = ports[0];
    s->gw_port = ports[1];
    s->dev_port = ports[2];
    s->cons_metrics_port = ports[3];
    s->store_metrics_port = ports[4];
    snprintf(s->nats_url, sizeof s->nats_url, "nats://127.0.0.1:%d", s->nats_port);
    snprintf(s->gw_url, sizeof s->gw_url, "http://127.0.0.1:%d", s->gw_port);
    snprintf(s->dev_url, sizeof s->dev_url, "http://127.0.0.1:%d", s->dev_port);
    s->started = 1;

    for (int c = 0; c < H_NPROC; c++) {
        h_proc *p = &s->procs[c];
        p->name = h_comp_names[c];
        p->last_status = -1;
        snprintf(p->log_path, sizeof p->log_path, "%s/%s.log", s->log_dir, p->name);
        if (c == H_NATS) snprintf(p->exe, sizeof p->exe, "%s", h_nats_exe());
        else snprintf(p->exe, sizeof p->exe, "%s/%s", h_bin_dir(), h_comp_bins[c]);
        if (c == H_NATS) continue;
        /* Most specific first: the first occurrence of a name wins. */
        if (c == H_CONSUMER && opts != NULL)
            for (int i = 0; i < 8 && opts->consumer_env[i] != NULL; i++)
                h_proc_env_add(p, opts->consumer_env[i]);
        if (c == H_CONSUMER) h_proc_env_addf(p, "KILN_METRICS_ADDR=127.0.0.1:%d", s->cons_metrics_port);
        if (c == H_STORE) h_proc_env_addf(p, "KILN_METRICS_ADDR=127.0.0.1:%d", s->store_metrics_port);
        if (opts != NULL)
            for (int i = 0; i < H_MAX_ENV && opts->env[i] != NULL; i++) h_proc_env_add(p, opts->env[i]);
        h_proc_env_addf(p, "KILN_NATS_URL=%s", s->nats_url);
        h_proc_env_addf(p, "KILN_DATA_DIR=%s", s->data_dir);
        const char *lvl = getenv("KILN_IT_LOG_LEVEL"); /* e.g. debug, while chasing a flaky test */
        h_proc_env_addf(p, "KILN_LOG_LEVEL=%s", lvl != NULL && lvl[0] != '\0' ? lvl : "info");
        h_proc_env_add(p, "KILN_ACK_WAIT=2s");
        h_proc_env_add(p, "KILN_API_KEYS=" H_TOKEN_ALICE ":alice," H_TOKEN_BOB ":bob");
        h_proc_env_addf(p, "KILN_PROVIDER_URL=%s/v1", s->dev_url);
        h_proc_env_addf(p, "KILN_DEVPROVIDER_ADDR=127.0.0.1:%d", s->dev_port);
        h_proc_env_add(p, "KILN_DEVPROVIDER_LATENCY_MS=0");
        h_proc_env_addf(p, "KILN_HTTP_ADDR=127.0.0.1:%d", s->gw_port);
        h_proc_env_add(p, "KILN_SUBMIT_RATE=0");
    }

    char url[128];
    if (h_proc_start(s, H_NATS) != 0 || h_wait_nats(s) != 0) goto fail;
    if (h_proc_start(s, H_DEVPROVIDER) != 0) goto fail;
    snprintf(url, sizeof url, "%s/healthz", s->dev_url);
    if (h_wait_http(s, H_DEVPROVIDER, url, 200) != 0) goto fail;
    if (h_proc_start(s, H_STORE) != 0) goto fail;
    if (!(opts != NULL && opts->no_consumer) && h_proc_start(s, H_CONSUMER) != 0) goto fail;
    if (h_proc_start(s, H_GATEWAY) != 0) goto fail;
    snprintf(url, sizeof url, "%s/readyz", s->gw_url);
    if (h_wait_http(s, H_GATEWAY, url, 200) != 0) goto fail;
    if (!h_proc_alive(s, H_STORE)) goto fail;
    if (!(opts != NULL && opts->no_consumer) && !h_proc_alive(s, H_CONSUMER)) goto fail;
    return 0;
fail:
    /* The report hook prints every log's tail for the failed test. */
    fprintf(stderr, "harness: stack failed to start in %s\n", s->root);
    return -1;
}

/* Whether a process of the stack could not bind its port. */
static bool h_stack_port_taken(const h_stack *s)
{
    static const char *const pats[] = {"cannot listen", "listener failed",
                                       "address already in use"};
    bool taken = false;
    for (int c = 0; c < H_NPROC && !taken; c++) {
        char *buf = h_read_file(s->procs[c].log_path, NULL);
        for (size_t i = 0; buf != NULL && i < sizeof pats / sizeof pats[0]; i++)
            taken = taken || strstr(buf, pats[i]) != NULL;
        free(buf);
    }
    return taken;
}

/* A stack's ports are free when chosen, but another test running beside
 * this one may pick and bind the same port before this stack's daemon does
 * (both choose at random below the ephemeral range). A start that failed
 * only because a port was taken is tried again on new ports, in a new
 * directory (the failed try's logs stay); any other failure is final. */
int h_stack_start(h_stack *s, const h_stack_opts *opts)
{
    pthread_once(&h_curl_once, h_curl_init);
    for (int try = 1;; try++) {
        if (h_stack_start_once(s, opts) == 0) return 0;
        if (try == 3 || !h_stack_port_taken(s)) return -1;
        fprintf(stderr, "harness: a port was taken, starting again on new ports\n");
        (void)h_stack_stop(s);
    }
}

int h_stack_wait_ready(h_stack *s)
{
    char url[128];
    snprintf(url, sizeof url, "%s/readyz", s->gw_url);
    return h_wait_http(s, H_GATEWAY, url, 200);
}

int h_stack_stop(h_stack *s)
{
    if (!s->started) return 0;
    int problems = 0;
    for (int c = H_NPROC - 1; c >= 0; c--) {
        h_proc *p = &s->procs[c];
        if (p->pid > 0) h_proc_term(s, (h_comp)c);
        if (c != H_NATS && p->unclean > 0) {
            fprintf(stderr, "harness: %s: %d unclean exit(s)\n", p->name, p->unclean);
            problems += p->unclean;
        }
    }
    /* Every log of the stack: its processes, the CLI's, and any started
     * with h_spawn_another (stopped by the test or with the worker). */
    DIR *d = opendir(s->log_dir);
    for (struct dirent *e = d != NULL ? readdir(d) : NULL; e != NULL; e = readdir(d)) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".log") != 0) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", s->log_dir, e->d_name);
        int hits = h_log_sanitizer_hits(path);
        if (hits > 0) fprintf(stderr, "harness: sanitizer report in %s\n", path);
        problems += hits;
    }
    if (d != NULL) closedir(d);
    for (int c = 0; c < H_NPROC; c++) {
        h_proc *p = &s->procs[c];
        p->unclean = 0; /* counted once */
        h_port_release(p);
    }
    s->started = 0;
    return problems;
}

void h_start(h_stack *s, const h_stack_opts *opts)
{
    cr_assert_eq(h_stack_start(s, opts), 0, "stack did not start (see logs)");
}

void h_stop(h_stack *s)
{
    cr_assert_eq(h_stack_stop(s), 0, "unclean shutdown (see logs)");
}

void h_fini(void)
{
    /* A failed test jumps here with its processes still running. */
    for (int i = 0; i < H_MAX_PIDS; i++)
        if (h_pids[i] > 0) kill(h_pids[i], SIGTERM);
    for (int i = 0; i < H_MAX_PIDS; i++) {
        if (h_pids[i] <= 0) continue;
        int st = 0;
        pid_t p = h_pids[i];
        if (!h_reap(p, 5000, &st)) {
            kill(p, SIGKILL);
            h_reap(p, 5000, &st);
        }
    }
    nats_Close();
}

/* ---- report hooks (run in the Criterion runner process) ------------------- */

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    const char *keep = getenv("KILN_IT_ROOT");
    if (keep != NULL && keep[0] != '\0') return;
    char root[] = "/tmp/kiln-it.XXXXXX";
    if (mkdtemp(root) != NULL) setenv("KILN_IT_ROOT", root, 1);
}

ReportHook(POST_FINI)(struct criterion_test_stats *st)
{
    const char *root = getenv("KILN_IT_ROOT");
    if (root == NULL || st == NULL || st->test == NULL) return;
    char pat[PATH_MAX];
    snprintf(pat, sizeof pat, "%s/%s.%s", root, st->test->category, st->test->name);
    char pat2[PATH_MAX + 8];
    snprintf(pat2, sizeof pat2, "%s.*", pat);
    int failed = st->test_status == CR_STATUS_FAILED || st->crashed || st->timed_out;
    const char *pats[2] = {pat, pat2};
    for (int k = 0; k < 2; k++) {
        glob_t g;
        memset(&g, 0, sizeof g);
        if (glob(pats[k], 0, NULL, &g) != 0) {
            globfree(&g);
            continue;
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (failed) {
                fprintf(stderr, "===== logs of failed test %s::%s (%s) =====\n", st->test->category,
                        st->test->name, g.gl_pathv[i]);
                char lpat[PATH_MAX + 16];
                snprintf(lpat, sizeof lpat, "%s/logs/*.log", g.gl_pathv[i]);
                glob_t lg;
                memset(&lg, 0, sizeof lg);
                if (glob(lpat, 0, NULL, &lg) == 0)
                    for (size_t j = 0; j < lg.gl_pathc; j++) h_print_tail(lg.gl_pathv[j], 25);
                globfree(&lg);
            }
            const char *keepall = getenv("KILN_IT_KEEP");
            if (!(keepall != NULL && keepall[0] == '1') && !(failed && keepall != NULL))
                h_rm_rf(g.gl_pathv[i]);
        }
        globfree(&g);
    }
}

ReportHook(POST_ALL)(struct criterion_global_stats *gs)
{
    (void)gs;
    const char *root = getenv("KILN_IT_ROOT");
    if (root != NULL && strncmp(root, "/tmp/kiln-it.", 13) == 0) rmdir(root); /* only if empty */
}

/* ---- HTTP ----------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
} h_buf;

static size_t h_buf_append(h_buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > H_BODY_CAP) return 0;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->len + n + 1) nc *= 2;
        char *nb = realloc(b->buf, nc);
        if (nb == NULL) return 0;
        b->buf = nb;
        b->cap = nc;
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->buf[b->len] = '\0';
    return n;
}

static size_t h_curl_write(char *p, size_t size, size_t nmemb, void *ud)
{
    return h_buf_append(ud, p, size * nmemb);
}

long h_http_timeout(h_resp *r, const char *method, const char *url, const char *token,
                    const char *ctype, const char *body, size_t body_len,
                    const char *extra_header, long timeout_ms)
{
    pthread_once(&h_curl_once, h_curl_init);
    memset(r, 0, sizeof *r);
    h_buf hb = {0}, bb = {0};
    struct curl_slist *hl = NULL;
    char line[1024];
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(r->error, sizeof r->error, "curl_easy_init failed");
        return 0;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_curl_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bb);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, h_curl_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    if (token != NULL) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", token);
        hl = curl_slist_append(hl, line);
    }
    if (ctype != NULL) {
        snprintf(line, sizeof line, "Content-Type: %s", ctype);
        hl = curl_slist_append(hl, line);
    }
    if (extra_header != NULL) hl = curl_slist_append(hl, extra_header);
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? body_len : 0));
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body != NULL) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        }
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s %s: %s", method, url, curl_easy_strerror(rc));
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    r->headers = hb.buf != NULL ? hb.buf : strdup("");
    r->body = bb.buf != NULL ? bb.buf : strdup("");
    r->body_len = bb.len;
    if (r->body_len > 0) r->json = json_loadb(r->body, r->body_len, 0, NULL);
    return r->status;
}

long h_http(h_resp *r, const char *method, const char *url, const char *token,
            const char *ctype, const char *body, const char *extra_header)
{
    return h_http_timeout(r, method, url, token, ctype, body, body != NULL ? strlen(body) : 0,
                          extra_header, 20000);
}

void h_resp_free(h_resp *r)
{
    free(r->headers);
    free(r->body);
    if (r->json != NULL) json_decref(r->json);
    memset(r, 0, sizeof *r);
}

int h_resp_header(const h_resp *r, const char *name, char *out, size_t outlen)
{
    if (r->headers == NULL) return 0;
    size_t nl = strlen(name);
    int found = 0;
    const char *p = r->headers;
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (len > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            const char *end = p + len;
            while (v < end && (*v == ' ' || *v == '\t')) v++;
            while (end > v && (end[-1] == '\r' || end[-1] == ' ')) end--;
            size_t vl = (size_t)(end - v);
            if (outlen > 0) {
                if (vl >= outlen) vl = outlen - 1;
                memcpy(out, v, vl);
                out[vl] = '\0';
            }
            found = 1;
        }
        if (eol == NULL) break;
        p = eol + 1;
    }
    return found;
}

long h_api(h_stack *s, h_resp *r, const char *method, const char *path, const char *token,
           const char *json_body)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", s->gw_url, path);
    return h_http(r, method, url, token, json_body != NULL ? "application/json" : NULL, json_body,
                  NULL);
}

long h_gw_status(h_stack *s, const char *path, long timeout_ms)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", s->gw_url, path);
    h_resp r;
    long st = h_http_timeout(&r, "GET", url, NULL, NULL, NULL, 0, NULL, timeout_ms);
    h_resp_free(&r);
    return st;
}

void h_expect_api_error(h_stack *s, const char *method, const char *path, const char *token,
                        const char *json_body, long status, const char *code, const char *field)
{
    h_resp r;
    h_api(s, &r, method, path, token, json_body);
    if (r.status != status)
        cr_log_error("%s %s with body %.200s", method, path, json_body != NULL ? json_body : "(none)");
    h_expect_error(&r, status, code, field);
    h_resp_free(&r);
}

const char *h_jstr(const json_t *o, const char *key)
{
    return o != NULL ? json_string_value(json_object_get(o, key)) : NULL;
}

long long h_jint(const json_t *o, const char *key)
{
    json_t *v = o != NULL ? json_object_get(o, key) : NULL;
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

const char *h_err_code(const h_resp *r)
{
    return r->json != NULL ? h_jstr(json_object_get(r->json, "error"), "code") : NULL;
}

const char *h_err_field(const h_resp *r)
{
    return r->json != NULL ? h_jstr(json_object_get(r->json, "error"), "field") : NULL;
}

void h_expect_error(const h_resp *r, long status, const char *code, const char *field)
{
    cr_expect_eq(r->status, status, "want HTTP %ld (%s), got %ld: %s", status, code, r->status,
                 r->body != NULL ? r->body : "");
    json_t *e = r->json != NULL ? json_object_get(r->json, "error") : NULL;
    cr_expect(json_is_object(e), "error body must be {\"error\":{...}}, got: %s",
              r->body != NULL ? r->body : "");
    const char *c = h_jstr(e, "code");
    const char *m = h_jstr(e, "message");
    cr_expect(c != NULL && strcmp(c, code) == 0, "want error.code %s, got %s (body %s)", code,
              c != NULL ? c : "(none)", r->body != NULL ? r->body : "");
    cr_expect(m != NULL && m[0] != '\0', "error.message must be a non-empty string: %s",
              r->body != NULL ? r->body : "");
    if (field != NULL) {
        const char *f = h_jstr(e, "field");
        cr_expect(f != NULL && strcmp(f, field) == 0, "want error.field %s, got %s (body %s)",
                  field, f != NULL ? f : "(none)", r->body != NULL ? r->body : "");
    }
}

void h_unique_id(char *out, const char *prefix)
{
    static unsigned seq;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(out, 65, "%s-%d-%lld%03u", prefix, (int)getpid(),
             (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, seq++ % 1000);
}

long h_submit(h_stack *s, const char *token, const char *body, char *id_out)
{
    h_resp r;
    long st = h_api(s, &r, "POST", "/v1/jobs", token, body);
    int ok = st == 202 || st == 200;
    if (id_out != NULL) {
        const char *id = h_jstr(r.json, "id");
        snprintf(id_out, 65, "%s", (ok && id != NULL) ? id : "");
    }
    if (!ok)
        fprintf(stderr, "harness: submit answered %ld: %s %s\n", st, r.body != NULL ? r.body : "",
                r.error);
    h_resp_free(&r);
    return st;
}

long h_submit_prompt(h_stack *s, const char *token, const char *prompt, char *id_out)
{
    json_t *o = json_pack("{s:s}", "prompt", prompt);
    char *body = json_dumps(o, JSON_COMPACT);
    long st = h_submit(s, token, body, id_out);
    free(body);
    json_decref(o);
    return st;
}

void h_submit_each(h_stack *s, const char *token, const char *body_fmt, int n, char ids[][65])
{
    for (int k = 0; k < n; k++) {
        /* %d by hand: a non-literal format would defeat -Wformat checks. */
        const char *at = strstr(body_fmt, "%d");
        cr_assert(at != NULL, "h_submit_each: no %%d in %s", body_fmt);
        char body[1024];
        snprintf(body, sizeof body, "%.*s%d%s", (int)(at - body_fmt), body_fmt, k, at + 2);
        long st = h_submit(s, token, body, ids[k]);
        cr_assert_eq(st, 202, "submit %s: HTTP %ld", body, st);
    }
}

json_t *h_get_job(h_stack *s, const char *token, const char *id, long *status_out)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    h_resp r;
    long st = h_api(s, &r, "GET", path, token, NULL);
    if (status_out != NULL) *status_out = st;
    json_t *job = NULL;
    if (st == 200 && r.json != NULL) job = json_incref(r.json);
    h_resp_free(&r);
    return job;
}

int h_state_terminal(const char *state)
{
    return state != NULL && (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 ||
                             strcmp(state, "cancelled") == 0);
}

json_t *h_wait_job(h_stack *s, const char *token, const char *id, const char *state,
                   int64_t deadline_ms)
{
    int64_t end = h_now_ms() + deadline_ms;
    json_t *last = NULL;
    for (;;) {
        json_t *j = h_get_job(s, token, id, NULL);
        if (j != NULL) {
            if (last != NULL) json_decref(last);
            last = j;
            const char *st = h_jstr(j, "status");
            if (state != NULL ? (st != NULL && strcmp(st, state) == 0) : h_state_terminal(st))
                return last;
            /* A different terminal state never changes again. */
            if (h_state_terminal(st)) return last;
        }
        if (h_now_ms() >= end) return last;
        h_sleep_ms(100);
    }
}

void h_expect_job(h_stack *s, const char *token, const char *id, const char *state, int attempts,
                  int64_t deadline_ms, const char *what)
{
    json_t *j = h_wait_job(s, token, id, state, deadline_ms);
    char *d = h_job_dump(j);
    const char *st = h_jstr(j, "status");
    if (state != NULL)
        cr_expect(st != NULL && strcmp(st, state) == 0, "%s: job %s: want status %s, got %s: %s", what, id,
                  state, st != NULL ? st : "(none)", d);
    else
        cr_expect(h_state_terminal(st), "%s: job %s not terminal: %s", what, id, d);
    if (attempts >= 0)
        cr_expect_eq(h_jint(j, "attempts"), attempts, "%s: job %s: want %d attempts: %s", what, id, attempts, d);
    free(d);
    json_decref(j);
}

int h_job_stays(h_stack *s, const char *token, const char *id, const char *state, int64_t window_ms,
                char *why, size_t whylen)
{
    int64_t end = h_now_ms() + window_ms;
    if (whylen > 0) why[0] = '\0';
    for (;;) {
        json_t *j = h_get_job(s, token, id, NULL);
        const char *st = h_jstr(j, "status");
        if (st == NULL || strcmp(st, state) != 0) {
            char *d = h_job_dump(j);
            snprintf(why, whylen, "%s", d);
            free(d);
            json_decref(j);
            return 0;
        }
        json_decref(j);
        if (h_now_ms() >= end) return 1;
        h_sleep_ms(100);
    }
}

long h_job_post(h_stack *s, h_resp *r, const char *token, const char *id, const char *action)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s/%s", id, action);
    return h_api(s, r, "POST", path, token, NULL);
}

json_t *h_list(h_stack *s, const char *token, const char *query)
{
    char path[512];
    snprintf(path, sizeof path, "/v1/jobs%s", query != NULL ? query : "");
    h_resp r;
    json_t *out = NULL;
    if (h_api(s, &r, "GET", path, token, NULL) == 200 && r.json != NULL) out = json_incref(r.json);
    h_resp_free(&r);
    return out;
}

int h_list_count(h_stack *s, const char *token)
{
    json_t *l = h_list(s, token, "?limit=200");
    json_t *jobs = json_object_get(l, "jobs");
    int n = json_is_array(jobs) ? (int)json_array_size(jobs) : -1;
    json_decref(l);
    return n;
}

/* ---- job fields ------------------------------------------------------------ */

char *h_job_dump(const json_t *job)
{
    char *d = job != NULL ? json_dumps(job, JSON_COMPACT) : NULL;
    return d != NULL ? d : strdup("(no job)");
}

int64_t h_ts_ms(const char *t)
{
    if (t == NULL || strlen(t) != 24 || t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' ||
        t[16] != ':' || t[19] != '.' || t[23] != 'Z')
        return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

int64_t h_job_ms(const json_t *job, const char *key)
{
    return h_ts_ms(h_jstr(job, key));
}

int h_jnull(const json_t *o, const char *key)
{
    json_t *v = o != NULL ? json_object_get(o, key) : NULL;
    return v == NULL || json_is_null(v);
}

double h_metric(h_stack *s, h_comp c, const char *name)
{
    char url[128];
    int port = c == H_CONSUMER ? s->cons_metrics_port
             : c == H_STORE    ? s->store_metrics_port
             : c == H_GATEWAY  ? s->gw_port
                               : s->dev_port;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    h_resp r;
    double sum = -1;
    if (h_http_timeout(&r, "GET", url, NULL, NULL, NULL, 0, NULL, 5000) == 200) {
        size_t nl = strlen(name);
        for (const char *p = r.body; p != NULL && *p != '\0';) {
            if (strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
                const char *sp = strchr(p + nl, ' ');
                if (sp != NULL) sum = (sum < 0 ? 0 : sum) + strtod(sp + 1, NULL);
            }
            p = strchr(p, '\n');
            if (p != NULL) p++;
        }
    }
    h_resp_free(&r);
    return sum;
}

typedef struct {
    h_stack *s;
    h_comp c;
    const char *name;
    double value; /* the bound, or the value wanted */
} h_metric_arg;

static int h_metric_is_above(void *arg)
{
    h_metric_arg *a = arg;
    return h_metric(a->s, a->c, a->name) > a->value;
}

static int h_metric_is(void *arg)
{
    h_metric_arg *a = arg;
    return h_metric(a->s, a->c, a->name) == a->value;
}

int h_wait_metric_above(h_stack *s, h_comp c, const char *name, double above, int64_t deadline_ms)
{
    h_metric_arg a = {s, c, name, above};
    return h_wait_for(h_metric_is_above, &a, deadline_ms, 5);
}

int h_wait_metric_eq(h_stack *s, h_comp c, const char *name, double want, int64_t deadline_ms)
{
    h_metric_arg a = {s, c, name, want};
    return h_wait_for(h_metric_is, &a, deadline_ms, 50);
}

/* ---- NATS ----------------------------------------------------------------- */

int h_nats_connect(h_stack *s, natsConnection **nc, jsCtx **js)
{
    natsOptions *o = NULL;
    natsConnection *c = NULL;
    jsCtx *j = NULL;
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK) st = natsOptions_SetURL(o, s->nats_url);
    if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, -1);
    if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 100);
    if (st == NATS_OK) st = natsConnection_Connect(&c, o);
    if (st == NATS_OK && js != NULL) st = natsConnection_JetStream(&j, c, NULL);
    natsOptions_Destroy(o);
    if (st != NATS_OK) {
        fprintf(stderr, "harness: nats connect %s: %s\n", s->nats_url, natsStatus_GetText(st));
        jsCtx_Destroy(j);
        natsConnection_Destroy(c);
        return -1;
    }
    *nc = c;
    if (js != NULL) *js = j;
    return 0;
}

void h_nats_close(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    if (nc != NULL) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
}

int h_js_publish(jsCtx *js, const char *subject, const void *data, int len, const char *msg_id)
{
    natsMsg *m = NULL;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    natsStatus st = natsMsg_Create(&m, subject, NULL, data, len);
    if (st == NATS_OK && msg_id != NULL) st = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (st == NATS_OK) st = js_PublishMsg(&ack, js, m, NULL, &jerr);
    if (st != NATS_OK)
        fprintf(stderr, "harness: js publish %s: %s (jerr %d)\n", subject, natsStatus_GetText(st),
                (int)jerr);
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    return st == NATS_OK ? 0 : -1;
}

void h_pack_completed(const char *id, const char *prompt, uint64_t size_bytes, uint8_t **buf,
                      size_t *len)
{
    Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__Image img = KILN__V1__IMAGE__INIT, *imgs[1] = {&img};
    char url[128];
    snprintf(url, sizeof url, "/v1/jobs/%s/images/0", id);
    req.id = (char *)id;
    req.user_id = "alice";
    req.prompt = (char *)prompt;
    t.request = &req;
    t.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    t.attempt = 1;
    t.at_ms = h_now_ms();
    img.url = url;
    img.content_type = "image/png";
    img.size_bytes = size_bytes;
    t.n_images = 1;
    t.images = imgs;
    *len = kiln__v1__job_transition__get_packed_size(&t);
    *buf = malloc(*len > 0 ? *len : 1);
    cr_assert_not_null(*buf);
    kiln__v1__job_transition__pack(&t, *buf);
}

int h_publish_request(jsCtx *js, const char *subject, const Kiln__V1__JobRequest *r,
                      int64_t max_wait_ms, uint64_t *seq)
{
    Kiln__V1__JobRequest q = *r;
    if (q.created_at_ms == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        q.created_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    size_t n = kiln__v1__job_request__get_packed_size(&q);
    uint8_t *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL) return -1;
    kiln__v1__job_request__pack(&q, buf);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = q.id;
    if (max_wait_ms > 0) po.MaxWait = max_wait_ms;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_Publish(&ack, js, subject, buf, (int)n, &po, &jerr);
    if (st == NATS_OK && seq != NULL) *seq = ack->Sequence;
    jsPubAck_Destroy(ack);
    free(buf);
    return st == NATS_OK ? 0 : -1;
}

int h_publish_jobreq(jsCtx *js, const char *subject, const char *id, const char *user,
                     const char *prompt)
{
    Kiln__V1__JobRequest r = KILN__V1__JOB_REQUEST__INIT;
    r.id = (char *)id;
    r.user_id = (char *)user;
    r.prompt = (char *)(prompt != NULL ? prompt : "");
    int rc = h_publish_request(js, subject, &r, 0, NULL);
    if (rc != 0) fprintf(stderr, "harness: js publish of job %s to %s failed\n", id, subject);
    return rc;
}

int h_msg_header(natsMsg *m, const char *name, char *out, size_t len)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL) return 0;
    snprintf(out, len, "%s", v);
    return 1;
}

int h_stream_scan(jsCtx *js, const char *stream, void (*fn)(natsMsg *m, void *arg), void *arg)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, js, stream, NULL, &jerr) != NATS_OK) return -1;
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    int seen = 0;
    for (uint64_t seq = first; seq >= 1 && seq <= last; seq++) {
        natsMsg *m = NULL;
        if (js_GetMsg(&m, js, stream, seq, NULL, &jerr) != NATS_OK) continue;
        fn(m, arg);
        natsMsg_Destroy(m);
        seen++;
    }
    return seen;
}

int h_done_scan(jsCtx *js, void (*fn)(natsMsg *m, void *arg), void *arg)
{
    return h_stream_scan(js, "KILN_DONE", fn, arg);
}

typedef struct {
    const char *id;
    int count;
    char *last_status;
    size_t len;
} h_done_count_arg;

static void h_done_count_one(natsMsg *m, void *arg)
{
    h_done_count_arg *a = arg;
    char v[128];
    if (!h_msg_header(m, "Kiln-Job-Id", v, sizeof v) || strcmp(v, a->id) != 0) return;
    a->count++;
    if (a->last_status != NULL) h_msg_header(m, "Kiln-Status", a->last_status, a->len);
}

int h_done_count(jsCtx *js, const char *id, char *last_status, size_t len)
{
    if (last_status != NULL && len > 0) last_status[0] = '\0';
    h_done_count_arg a = {id, 0, len > 0 ? last_status : NULL, len};
    return h_done_scan(js, h_done_count_one, &a) < 0 ? -1 : a.count;
}

Kiln__V1__JobStatus *h_msg_status(natsMsg *m)
{
    if (m == NULL) return NULL;
    return kiln__v1__job_status__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                        (const uint8_t *)natsMsg_GetData(m));
}

#define H_COLLECT_CAP 1024

struct h_collector {
    natsSubscription *sub;
    natsMsg *msgs[H_COLLECT_CAP];
    int n;
    int dropped; /* arrived after the table was full (never expected in a test) */
};

static int h_collect_matches(natsMsg *m, const char *id)
{
    if (id == NULL) return 1;
    char v[128];
    return h_msg_header(m, "Kiln-Job-Id", v, sizeof v) && strcmp(v, id) == 0;
}

static int h_collect_counted(const h_collector *c, const char *id)
{
    int k = 0;
    for (int i = 0; i < c->n; i++) k += h_collect_matches(c->msgs[i], id);
    return k;
}

/* Takes one message from the subscription, waiting up to wait_ms (>= 1). */
static int h_collect_one(h_collector *c, int64_t wait_ms)
{
    natsMsg *m = NULL;
    natsStatus st = natsSubscription_NextMsg(&m, c->sub, wait_ms > 0 ? wait_ms : 1);
    if (st != NATS_OK) {
        /* NATS_TIMEOUT, or the connection is reconnecting: nothing now. */
        if (st != NATS_TIMEOUT) h_sleep_ms((int)(wait_ms < 20 ? wait_ms : 20));
        return 0;
    }
    if (c->n < H_COLLECT_CAP) {
        c->msgs[c->n++] = m;
    } else {
        c->dropped++;
        natsMsg_Destroy(m);
    }
    return 1;
}

int h_collect_wait(h_collector *c, const char *id, int n, int64_t deadline_ms)
{
    if (c == NULL) return -1;
    while (h_collect_one(c, 1)) {
    }
    int64_t end = h_now_ms() + deadline_ms;
    int have = h_collect_counted(c, id);
    while (have < n) {
        int64_t left = end - h_now_ms();
        if (left <= 0) break;
        if (h_collect_one(c, left)) have = h_collect_counted(c, id);
    }
    return have;
}

natsMsg *h_collect_msg(h_collector *c, const char *id, int k)
{
    if (c == NULL) return NULL;
    h_collect_wait(c, id, 0, 0);
    for (int i = 0; i < c->n; i++)
        if (h_collect_matches(c->msgs[i], id) && k-- == 0) return c->msgs[i];
    return NULL;
}

static h_collector *h_collect_open(natsConnection *nc, const char *subject)
{
    h_collector *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    if (natsConnection_SubscribeSync(&c->sub, nc, subject) != NATS_OK) {
        free(c);
        return NULL;
    }
    return c;
}

static void h_collect_free(h_collector *c)
{
    if (c == NULL) return;
    for (int i = 0; i < c->n; i++) natsMsg_Destroy(c->msgs[i]);
    natsSubscription_Destroy(c->sub);
    free(c);
}

void h_nats_open(h_stack *s, h_nats *n)
{
    memset(n, 0, sizeof *n);
    cr_assert_eq(h_nats_connect(s, &n->nc, &n->js), 0, "cannot connect to nats-server");
    n->done = h_collect_open(n->nc, "jobs.done");
    n->dead = h_collect_open(n->nc, "jobs.dead");
    cr_assert(n->done != NULL && n->dead != NULL, "cannot subscribe to jobs.done / jobs.dead");
    /* The server knows the subscriptions before the test publishes anything. */
    cr_assert_eq(natsConnection_Flush(n->nc), NATS_OK, "flush after subscribing");
}

natsMsg *h_take_delivery(h_nats *n, const char *durable)
{
    char subject[256];
    natsMsg *m = NULL;
    snprintf(subject, sizeof subject, "$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.%s", durable);
    cr_assert_eq(natsConnection_RequestString(&m, n->nc, subject, "{\"batch\":1,\"expires\":5000000000}", 6000),
                 NATS_OK, "no delivery from durable %s", durable);
    const char *reply = natsMsg_GetReply(m);
    cr_assert(reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0, "not a job delivery from %s: %.*s", durable,
              natsMsg_GetDataLength(m), natsMsg_GetData(m));
    return m;
}

void h_nats_free(h_nats *n)
{
    h_collect_free(n->done);
    h_collect_free(n->dead);
    h_nats_close(n->nc, n->js);
    memset(n, 0, sizeof *n);
}

typedef struct {
    jsCtx *js;
    const char *id;
    int count;
    char status[64];
} h_done_arg;

static int h_done_seen(void *arg)
{
    h_done_arg *a = arg;
    a->count = h_done_count(a->js, a->id, a->status, sizeof a->status);
    return a->count >= 1;
}

void h_expect_done_once(h_nats *n, const char *id, const char *state, int64_t deadline_ms)
{
    h_done_arg a = {n->js, id, 0, ""};
    h_wait_for(h_done_seen, &a, deadline_ms, 100);
    cr_expect_eq(a.count, 1, "KILN_DONE holds %d copies for %s (want exactly 1)", a.count, id);
    if (state != NULL)
        cr_expect_str_eq(a.status, state, "KILN_DONE Kiln-Status for %s: %s, want %s", id, a.status, state);
}

Kiln__V1__JobStatus *h_status_request(h_nats *n, const char *id, char *err, size_t errlen)
{
    natsMsg *rep = NULL;
    if (errlen > 0) err[0] = '\0';
    natsStatus st = natsConnection_RequestString(&rep, n->nc, "jobs.status", id, 5000);
    if (st != NATS_OK) {
        snprintf(err, errlen, "request failed: %s", natsStatus_GetText(st));
        return NULL;
    }
    Kiln__V1__JobStatus *out = NULL;
    if (!h_msg_header(rep, "Kiln-Error", err, errlen)) {
        out = h_msg_status(rep);
        if (out == NULL) snprintf(err, errlen, "reply is not a JobStatus (%d bytes)", natsMsg_GetDataLength(rep));
    } else if (natsMsg_GetDataLength(rep) != 0) {
        /* An error reply has an empty body (CONTRACT §4). */
        snprintf(err + strlen(err), errlen - strlen(err), " (with a %d-byte body)", natsMsg_GetDataLength(rep));
    }
    natsMsg_Destroy(rep);
    return out;
}

void h_dump_durable(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr);
    if (st != NATS_OK) {
        fprintf(stderr, "harness: %s: no consumer info: %s (%d)\n", durable, natsStatus_GetText(st), (int)jerr);
        return;
    }
    fprintf(stderr,
            "harness: %s delivered.stream=%llu ack_floor.stream=%llu num_ack_pending=%lld "
            "num_redelivered=%lld num_waiting=%lld num_pending=%llu\n",
            durable, (unsigned long long)ci->Delivered.Stream, (unsigned long long)ci->AckFloor.Stream,
            (long long)ci->NumAckPending, (long long)ci->NumRedelivered, (long long)ci->NumWaiting,
            (unsigned long long)ci->NumPending);
    jsConsumerInfo_Destroy(ci);
}

int h_worker_idle(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr) != NATS_OK) return 0;
    int idle = ci->NumAckPending == 0 && ci->NumPending == 0 && ci->Delivered.Stream > 0;
    jsConsumerInfo_Destroy(ci);
    return idle;
}

typedef struct {
    jsCtx *js;
    const char *durable;
} h_idle_arg;

static int h_idle_cond(void *arg)
{
    h_idle_arg *a = arg;
    return h_worker_idle(a->js, a->durable);
}

int h_wait_worker_idle(jsCtx *js, const char *durable, int64_t deadline_ms)
{
    h_idle_arg a = {js, durable};
    return h_wait_for(h_idle_cond, &a, deadline_ms, 100);
}

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
