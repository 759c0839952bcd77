/* test_config.c - CONTRACT §1: every binary "exits non-zero with a clear
 * message on bad configuration". Each binary is run alone with one bad
 * setting (nothing else is started: a value wrongly accepted shows as a
 * process still trying to reach NATS at the deadline, exit 137) and must
 * exit 2 at once, naming the setting, without showing a password. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(config, .timeout = 120);

#define CONFIG_DEADLINE_MS 5000

typedef struct {
    const char *prog;
    const char *env[3]; /* bad settings (NULL-terminated), beyond the base environment */
    const char *named;  /* what the message must name */
} config_case;

static void config_expect_refused(const config_case *c, const char *dir)
{
    char data_dir[PATH_MAX + 16];
    snprintf(data_dir, sizeof data_dir, "KILN_DATA_DIR=%s", dir);
    /* A base that would start: only the bad settings are wrong. The NATS
     * port is dead, so a process that accepted everything never finishes. */
    const char *base[] = {data_dir, "KILN_NATS_URL=nats://127.0.0.1:1", "KILN_API_KEYS=tok:u",
                          "KILN_HTTP_ADDR=127.0.0.1:0", "KILN_DEVPROVIDER_ADDR=127.0.0.1:0",
                          "ASAN_OPTIONS=detect_leaks=0"};
    const size_t nbase = sizeof base / sizeof base[0];
    char *envp[16];
    size_t n = 0;
    for (size_t i = 0; i < nbase; i++) {
        const char *name_end = strchr(base[i], '=');
        int overridden = 0;
        for (size_t k = 0; c->env[k] != NULL; k++)
            if (strncmp(c->env[k], base[i], (size_t)(name_end - base[i]) + 1) == 0) overridden = 1;
        if (!overridden) envp[n++] = (char *)base[i];
    }
    for (size_t k = 0; c->env[k] != NULL; k++) envp[n++] = (char *)c->env[k];
    envp[n] = NULL;
    char *argv[] = {(char *)c->prog, NULL};
    char *out = NULL;
    int64_t t0 = h_now_ms();
    int code = h_run_alone(argv, envp, &out, CONFIG_DEADLINE_MS);
    cr_expect_eq(code, 2, "%s with %s: exit %d after %lld ms, want 2 at once; output: %.400s",
                 c->prog, c->env[0], code, (long long)(h_now_ms() - t0), out);
    cr_expect(strstr(out, c->named) != NULL, "%s with %s: the message does not name %s: %.400s",
              c->prog, c->env[0], c->named, out);
    cr_expect(strstr(out, "s3cret") == NULL, "%s with %s: the output shows the password: %.400s",
              c->prog, c->env[0], out);
    cr_expect(strstr(out, "Sanitizer") == NULL && strstr(out, "runtime error") == NULL,
              "%s with %s: sanitizer report: %.600s", c->prog, c->env[0], out);
    free(out);
}

Test(config, every_binary_refuses_bad_settings_with_exit_2)
{
    static const config_case cases[] = {
        {"kiln-consumer", {"KILN_CONCURRENCY=0"}, "KILN_CONCURRENCY"},
        {"kiln-consumer", {"KILN_TRANSFER_THREADS=17"}, "KILN_TRANSFER_THREADS"},
        {"kiln-consumer", {"KILN_PROVIDER_URL=ftp://x/v1"}, "KILN_PROVIDER_URL"},
        {"kiln-consumer", {"KILN_RETRY_BASE=10s", "KILN_RETRY_CAP=1s"}, "KILN_RETRY_CAP"},
        {"kiln-consumer", {"KILN_MIN_AVAILABLE_MEM=lots"}, "KILN_MIN_AVAILABLE_MEM"},
        {"kiln-consumer", {"KILN_ACK_WAIT=1ms"}, "KILN_ACK_WAIT"},
        {"kiln-consumer", {"KILN_METRICS_ADDR=garbage"}, "KILN_METRICS_ADDR"},
        {"kiln-consumer", {"KILN_NATS_URL="}, "KILN_NATS_URL"},
        {"kiln-consumer", {"KILN_NATS_URL=http://127.0.0.1:4222"}, "KILN_NATS_URL"},
        {"kiln-consumer", {"KILN_LOG_LEVEL=loud"}, "KILN_LOG_LEVEL"},
        {"kiln-consumer", {"KILN_DRAIN_TIMEOUT=soon"}, "KILN_DRAIN_TIMEOUT"},
        {"kiln-gateway", {"KILN_HTTP_THREADS=0"}, "KILN_HTTP_THREADS"},
        {"kiln-gateway", {"KILN_HTTP_ADDR=nohost"}, "KILN_HTTP_ADDR"},
        {"kiln-gateway", {"KILN_SUBMIT_RATE=-1/s"}, "KILN_SUBMIT_RATE"},
        {"kiln-gateway", {"KILN_SUBMIT_BURST=-1"}, "KILN_SUBMIT_BURST"},
        {"kiln-gateway", {"KILN_API_KEYS=a:b,a:c"}, "KILN_API_KEYS"},
        {"kiln-gateway", {"KILN_API_KEYS="}, "KILN_API_KEYS"},
        {"kiln-gateway", {"KILN_STORE_TIMEOUT=0"}, "KILN_STORE_TIMEOUT"},
        {"kiln-gateway", {"KILN_NATS_URL=nats://alice:s3cret@127.0.0.1:0"}, "KILN_NATS_URL"},
        {"kiln-store", {"KILN_STORE_CACHE_MB=0"}, "KILN_STORE_CACHE_MB"},
        {"kiln-store", {"KILN_IDEM_TTL=1h"}, "KILN_IDEM_TTL"},
        {"kiln-store", {"KILN_METRICS_ADDR=127.0.0.1:99999"}, "KILN_METRICS_ADDR"},
        {"kiln-store", {"KILN_NATS_URL=ws://127.0.0.1:1"}, "KILN_NATS_URL"},
        {"kiln-store", {"KILN_SWEEP_INTERVAL=-1s"}, "KILN_SWEEP_INTERVAL"},
        {"kiln-devprovider", {"KILN_DEVPROVIDER_SIZE=0x0"}, "KILN_DEVPROVIDER_SIZE"},
        {"kiln-devprovider", {"KILN_DEVPROVIDER_LATENCY_MS=-1"}, "KILN_DEVPROVIDER_LATENCY_MS"},
        {"kiln-devprovider", {"KILN_DEVPROVIDER_ADDR=garbage"}, "KILN_DEVPROVIDER_ADDR"},
        {"kiln-devprovider", {"KILN_DEVPROVIDER_MAX_PROMPTS=0"}, "KILN_DEVPROVIDER_MAX_PROMPTS"},
    };
    char dir[] = "/tmp/kiln-it-config.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) config_expect_refused(&cases[i], dir);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(config, the_cli_refuses_a_bad_server_list_with_exit_2)
{
    char *envp[] = {"KILN_NATS_URL=nats://alice:s3cret@127.0.0.1:1", "ASAN_OPTIONS=detect_leaks=0",
                    NULL};
    char *argv[] = {"kiln", "get", "some-job", "--nats-url", "http://127.0.0.1:4222", NULL};
    char *out = NULL;
    int code = h_run_alone(argv, envp, &out, CONFIG_DEADLINE_MS);
    cr_expect_eq(code, 2, "kiln --nats-url http://...: exit %d; output: %.400s", code, out);
    cr_expect(strstr(out, "--nats-url") != NULL, "the message does not name --nats-url: %s", out);
    free(out);
    /* The environment's list is valid but unreachable: the error names it
     * without its password. */
    char *argv2[] = {"kiln", "get", "some-job", NULL};
    code = h_run_alone(argv2, envp, &out, CONFIG_DEADLINE_MS);
    cr_expect_eq(code, 3, "unreachable NATS: exit %d; output: %.400s", code, out);
    cr_expect(strstr(out, "s3cret") == NULL, "the output shows the password: %.400s", out);
    cr_expect(strstr(out, "***@127.0.0.1:1") != NULL, "the server is not named: %.400s", out);
    free(out);
}
