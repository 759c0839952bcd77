/* test_config.c - unit tests for common/config.c: parsers, precedence, errors, --help. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* ---- parsers ---- */

Test(config, duration_units)
{
    int64_t v = -1;
    cr_assert_eq(kiln_config_parse_duration_ms("250ms", &v), KILN_OK);
    cr_assert_eq(v, 250);
    cr_assert_eq(kiln_config_parse_duration_ms("3s", &v), KILN_OK);
    cr_assert_eq(v, 3000);
    cr_assert_eq(kiln_config_parse_duration_ms("2m", &v), KILN_OK);
    cr_assert_eq(v, 120000);
    cr_assert_eq(kiln_config_parse_duration_ms("1h", &v), KILN_OK);
    cr_assert_eq(v, 3600000);
    cr_assert_eq(kiln_config_parse_duration_ms("7d", &v), KILN_OK);
    cr_assert_eq(v, 7LL * 24 * 3600000);
    cr_assert_eq(kiln_config_parse_duration_ms("42", &v), KILN_OK);
    cr_assert_eq(v, 42);
    cr_assert_eq(kiln_config_parse_duration_ms("0", &v), KILN_OK);
    cr_assert_eq(v, 0);
}

Test(config, duration_errors_leave_output_alone)
{
    const char *bad[] = {"", "abc", "3x", "-1s", "1.5s", " 3s", "3s ", "s", "ms", "3 s", "3S",
                         "99999999999999999999", "9999999999999999h",
                         "999999999999999d", "3D", "1dd"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 7;
        cr_assert_eq(kiln_config_parse_duration_ms(bad[i], &v), KILN_EINVAL, "accepted '%s'",
                     bad[i]);
        cr_assert_eq(v, 7);
    }
    cr_assert_eq(kiln_config_parse_duration_ms(NULL, NULL), KILN_EINVAL);
}

Test(config, rate_units)
{
    double r = -1;
    cr_assert_eq(kiln_config_parse_rate("20/s", &r), KILN_OK);
    cr_assert_float_eq(r, 20.0, 1e-9);
    cr_assert_eq(kiln_config_parse_rate("600/min", &r), KILN_OK);
    cr_assert_float_eq(r, 10.0, 1e-9);
    cr_assert_eq(kiln_config_parse_rate("100/h", &r), KILN_OK);
    cr_assert_float_eq(r, 100.0 / 3600.0, 1e-12);
    cr_assert_eq(kiln_config_parse_rate("2.5/s", &r), KILN_OK);
    cr_assert_float_eq(r, 2.5, 1e-12);
    r = 5;
    cr_assert_eq(kiln_config_parse_rate("0", &r), KILN_OK);
    cr_assert_float_eq(r, 0.0, 1e-12);
    r = 5;
    cr_assert_eq(kiln_config_parse_rate("off", &r), KILN_OK);
    cr_assert_float_eq(r, 0.0, 1e-12);
}

Test(config, rate_errors)
{
    const char *bad[] = {"", "abc", "20/d", "-1/s", "/s", "inf", "nan", "20/", "20/s/s", " 20/s",
                         "0x10/s", "1e3/s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double r = 7;
        cr_assert_eq(kiln_config_parse_rate(bad[i], &r), KILN_EINVAL, "accepted '%s'", bad[i]);
        cr_assert_float_eq(r, 7.0, 1e-12);
    }
}

Test(config, int_and_bool)
{
    int64_t v = 0;
    cr_assert_eq(kiln_config_parse_int("42", &v), KILN_OK);
    cr_assert_eq(v, 42);
    cr_assert_eq(kiln_config_parse_int("-5", &v), KILN_OK);
    cr_assert_eq(v, -5);
    cr_assert_eq(kiln_config_parse_int("9223372036854775807", &v), KILN_OK);
    cr_assert_eq(v, INT64_MAX);
    cr_assert_eq(kiln_config_parse_int("9223372036854775808", &v), KILN_EINVAL);
    cr_assert_eq(kiln_config_parse_int("", &v), KILN_EINVAL);
    cr_assert_eq(kiln_config_parse_int("4x", &v), KILN_EINVAL);
    cr_assert_eq(kiln_config_parse_int(" 4", &v), KILN_EINVAL);
    cr_assert_eq(kiln_config_parse_int("-", &v), KILN_EINVAL);

    bool b = false;
    const char *yes[] = {"true", "1", "yes", "on", "TRUE"};
    const char *no[] = {"false", "0", "no", "off", "Off"};
    for (size_t i = 0; i < 5; i++) {
        b = false;
        cr_assert_eq(kiln_config_parse_bool(yes[i], &b), KILN_OK);
        cr_assert(b, "%s", yes[i]);
        b = true;
        cr_assert_eq(kiln_config_parse_bool(no[i], &b), KILN_OK);
        cr_assert(!b, "%s", no[i]);
    }
    cr_assert_eq(kiln_config_parse_bool("maybe", &b), KILN_EINVAL);
    cr_assert_eq(kiln_config_parse_bool("", &b), KILN_EINVAL);
}

/* ---- loader ---- */

typedef struct {
    char *url;
    int64_t conc;
    int64_t ack_ms;
    double rate;
    bool flag;
    char *req;
} cfg_t;

#define N_SETTINGS 6

static void table_init(kiln_setting *t, cfg_t *c, const char *req_def)
{
    kiln_setting tab[N_SETTINGS] = {
        {"KILN_T_URL", "nats-url", KILN_SET_NATS_URLS, "nats://127.0.0.1:4222", 0, -1, "NATS servers",
         &c->url},
        {"KILN_CONCURRENCY", "concurrency", KILN_SET_INT, "16", 1, 4096, "parallel jobs", &c->conc},
        {"KILN_T_ACK_WAIT", "ack-wait", KILN_SET_DURATION, "30s", 1000, 3600000, "ack wait",
         &c->ack_ms},
        {"KILN_T_RATE", "rate", KILN_SET_RATE, "20/s", 0, -1, "submit rate", &c->rate},
        {"KILN_T_FLAG", "verbose", KILN_SET_BOOL, "false", 0, -1, "be loud", &c->flag},
        {"KILN_T_REQ", "provider-url", KILN_SET_STRING, req_def, 0, -1, "provider URL", &c->req},
    };
    memcpy(t, tab, sizeof tab);
}

static kiln_status load(cfg_t *c, const char *req_def, char **argv, char *err, size_t errlen)
{
    kiln_setting t[N_SETTINGS];
    table_init(t, c, req_def);
    int argc = 0;
    while (argv[argc] != NULL) argc++;
    return kiln_config_load(t, N_SETTINGS, argc, argv, "kiln-test", "A test binary.", err, errlen);
}

static void clear_env(void)
{
    unsetenv("KILN_T_URL");
    unsetenv("KILN_CONCURRENCY");
    unsetenv("KILN_T_ACK_WAIT");
    unsetenv("KILN_T_RATE");
    unsetenv("KILN_T_FLAG");
    unsetenv("KILN_T_REQ");
}

Test(config_load, defaults, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", NULL};
    cr_assert_eq(load(&c, "http://p", argv, err, sizeof err), KILN_OK, "%s", err);
    cr_assert_str_eq(c.url, "nats://127.0.0.1:4222");
    cr_assert_eq(c.conc, 16);
    cr_assert_eq(c.ack_ms, 30000);
    cr_assert_float_eq(c.rate, 20.0, 1e-9);
    cr_assert(!c.flag);
    cr_assert_str_eq(c.req, "http://p");
}

Test(config_load, env_over_default_flag_over_env, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    setenv("KILN_CONCURRENCY", "8", 1);
    setenv("KILN_T_URL", "nats://env:4222", 1);
    setenv("KILN_T_ACK_WAIT", "2m", 1);
    char *argv[] = {"prog", "--concurrency=32", "--rate", "600/min", "--verbose", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_OK, "%s", err);
    cr_assert_eq(c.conc, 32);                       /* flag beats env */
    cr_assert_str_eq(c.url, "nats://env:4222");     /* env beats default */
    cr_assert_eq(c.ack_ms, 120000);
    cr_assert_float_eq(c.rate, 10.0, 1e-9);
    cr_assert(c.flag);                              /* bare bool flag = true */
}

Test(config_load, flag_space_form_and_bool_value, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--nats-url", "nats://a:1,nats://b:2", "--verbose", "off",
                    "--provider-url", "http://q", NULL};
    cr_assert_eq(load(&c, NULL, argv, err, sizeof err), KILN_OK, "%s", err);
    cr_assert_str_eq(c.url, "nats://a:1,nats://b:2");
    cr_assert(!c.flag);
    cr_assert_str_eq(c.req, "http://q");
}

Test(config_load, env_not_an_integer, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    setenv("KILN_CONCURRENCY", "abc", 1);
    char *argv[] = {"prog", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert_str_eq(err, "KILN_CONCURRENCY=abc: not an integer");
}

Test(config_load, flag_out_of_range, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--concurrency=0", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert_str_eq(err, "--concurrency=0: must be between 1 and 4096");
    char *argv2[] = {"prog", "--concurrency", "4097", NULL};
    cr_assert_eq(load(&c, "x", argv2, err, sizeof err), KILN_EINVAL);
    cr_assert_str_eq(err, "--concurrency=4097: must be between 1 and 4096");
    char *argv3[] = {"prog", "--concurrency=4096", NULL};
    cr_assert_eq(load(&c, "x", argv3, err, sizeof err), KILN_OK, "%s", err);
    cr_assert_eq(c.conc, 4096);
}

Test(config_load, duration_errors_name_the_source, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    setenv("KILN_T_ACK_WAIT", "soon", 1);
    char *argv[] = {"prog", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert(strncmp(err, "KILN_T_ACK_WAIT=soon: not a duration", 36) == 0, "%s", err);
    char *argv2[] = {"prog", "--ack-wait=500ms", NULL};
    cr_assert_eq(load(&c, "x", argv2, err, sizeof err), KILN_EINVAL);
    cr_assert_str_eq(err, "--ack-wait=500ms: must be between 1s and 1h");
}

Test(config_load, rate_error, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--rate=20/fortnight", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "--rate=20/fortnight: not a rate") == err, "%s", err);
}

Test(config_load, unknown_flag_and_positional, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--bogus=1", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "--bogus") != NULL, "%s", err);
    char *argv2[] = {"prog", "stray", NULL};
    cr_assert_eq(load(&c, "x", argv2, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "stray") != NULL, "%s", err);
}

Test(config_load, flag_missing_value, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--concurrency", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "--concurrency") != NULL, "%s", err);
}

Test(config_load, required_missing, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", NULL};
    cr_assert_eq(load(&c, NULL, argv, err, sizeof err), KILN_EINVAL);
    cr_assert(strstr(err, "KILN_T_REQ") != NULL && strstr(err, "required") != NULL, "%s", err);
    /* Set through the environment it is fine, even without a flag. */
    setenv("KILN_T_REQ", "http://env", 1);
    cr_assert_eq(load(&c, NULL, argv, err, sizeof err), KILN_OK, "%s", err);
    cr_assert_str_eq(c.req, "http://env");
}

static void help_init(void)
{
    clear_env();
    cr_redirect_stdout();
}

Test(config_load, help_prints_every_setting, .init = help_init)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "--concurrency=0", "--help", NULL};
    /* --help wins even when other arguments are wrong. */
    cr_assert_eq(load(&c, NULL, argv, err, sizeof err), KILN_EHELP);
    fflush(stdout);
    FILE *f = cr_get_redirected_stdout();
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    cr_assert(strstr(text, "kiln-test") != NULL, "%s", text);
    const char *want[] = {"--nats-url", "KILN_T_URL", "nats://127.0.0.1:4222", "--concurrency",
                          "KILN_CONCURRENCY", "(default 16)", "parallel jobs", "--ack-wait",
                          "--rate", "--verbose", "KILN_T_REQ", "(required)"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(text, want[i]) != NULL, "missing '%s' in:\n%s", want[i], text);
    /* One line per setting: the env var and its help share the line. */
    const char *line = strstr(text, "--concurrency");
    const char *eol = strchr(line, '\n');
    const char *help = strstr(line, "parallel jobs");
    cr_assert(help != NULL && help < eol);
}

Test(config_load, short_help, .init = help_init)
{
    cfg_t c = {0};
    char err[256];
    char *argv[] = {"prog", "-h", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EHELP);
}

Test(config_load, nats_urls_are_checked_and_their_password_is_not_shown, .init = clear_env)
{
    cfg_t c = {0};
    char err[256];
    setenv("KILN_T_URL", "nats://alice:s3cret@h:0", 1);
    char *argv[] = {"prog", NULL};
    cr_assert_eq(load(&c, "x", argv, err, sizeof err), KILN_EINVAL);
    cr_expect(strncmp(err, "KILN_T_URL=nats://***@h:0: server 1: ", 37) == 0, "%s", err);
    cr_expect(strstr(err, "s3cret") == NULL && strstr(err, "alice") == NULL, "%s", err);
    char *argv2[] = {"prog", "--nats-url=", NULL};
    cr_assert_eq(load(&c, "x", argv2, err, sizeof err), KILN_EINVAL);
    cr_expect_str_eq(err, "--nats-url=: names no server (e.g. nats://127.0.0.1:4222)");
}
