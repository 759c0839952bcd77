/* harness.c - integration test harness: real processes on free ports,
 * stacks of them, deadline-based waits, the runner's report hooks (see
 * harness.h). HTTP is harness_http.c, NATS harness_nats.c, the kiln CLI
 * harness_cli.c. */
#include "harness.h"
#include "harness_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <netinet/in.h>
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

extern char **environ;

#define H_START_DEADLINE_MS 30000 /* per component, generous for ASan builds */
#define H_STOP_DEADLINE_MS 10000
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

void h_sleep_ms(int ms)
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
char **h_build_envp(const h_proc *p)
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

pid_t h_spawn(const char *exe, char *const argv[], char **envp, const char *log_path,
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
int h_reap(pid_t pid, int deadline_ms, int *status)
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

int h_status_code(int st)
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
    int port = h_comp_port(s, c), bound = 0;
    if (port <= 0) return; /* first: only a real component indexes procs (gcc -O2 -Warray-bounds) */
    h_proc *p = &s->procs[c];
    if (p->port_hold != 0) return;
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
    /* A consumer the test starts later keeps its metrics port, as a stopped one does. */
    if (opts != NULL && opts->no_consumer) h_port_hold(s, H_CONSUMER);
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
    h_curl_global_init();
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
