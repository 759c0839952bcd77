/* test_metrics.c - unit tests for common/metrics.c: text format, listen addresses, /metrics. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

Test(metrics, counter_gauge_histogram_text)
{
    kiln_metric *c = kiln_metric_counter("t_jobs_total", "Jobs seen.");
    kiln_metric *g = kiln_metric_gauge("t_inflight", "Jobs running.");
    kiln_metric *h = kiln_metric_histogram_ms("t_latency_ms", "Latency.");
    cr_assert(c != NULL && g != NULL && h != NULL);
    cr_assert_eq(kiln_metric_counter("t_jobs_total", "again"), c); /* same name = same metric */
    cr_assert_null(kiln_metric_gauge("t_jobs_total", "wrong type"));
    kiln_metric_add(c, 3);
    kiln_metric_add(c, 2);
    kiln_metric_set(g, 7);
    kiln_metric_add(g, -2);
    kiln_metric_observe_ms(h, 0.2);   /* le 0.5 */
    kiln_metric_observe_ms(h, 1.0);   /* le 1 (inclusive) */
    kiln_metric_observe_ms(h, 30);    /* le 50 */
    kiln_metric_observe_ms(h, 20000); /* +Inf only */
    kiln_metric_add(NULL, 1);         /* NULL-safe */
    kiln_metric_observe_ms(NULL, 1);

    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(kiln_metrics_render(&text, &len), KILN_OK);
    cr_assert_eq(strlen(text), len);
    const char *want[] = {
        "# HELP t_jobs_total Jobs seen.\n# TYPE t_jobs_total counter\nt_jobs_total 5\n",
        "# TYPE t_inflight gauge\nt_inflight 5\n",
        "# TYPE t_latency_ms histogram\n",
        "t_latency_ms_bucket{le=\"0.5\"} 1\n",
        "t_latency_ms_bucket{le=\"1\"} 2\n",
        "t_latency_ms_bucket{le=\"25\"} 2\n",
        "t_latency_ms_bucket{le=\"50\"} 3\n",
        "t_latency_ms_bucket{le=\"10000\"} 3\n",
        "t_latency_ms_bucket{le=\"+Inf\"} 4\n",
        "t_latency_ms_sum 20031.200\n",
        "t_latency_ms_count 4\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(text, want[i]) != NULL, "missing %s in:\n%s", want[i], text);
    free(text);
}

/* Labelled gauges of one name render as one family: one HELP and TYPE,
 * every member's sample together, even when registered between others. */
Test(metrics, labelled_gauges_render_as_one_family)
{
    kiln_metric *hi = kiln_metric_gauge_labeled("t_waiting", "lane=\"high\"", "Waiting jobs.");
    kiln_metric *other = kiln_metric_gauge("t_other", "Another gauge.");
    kiln_metric *lo = kiln_metric_gauge_labeled("t_waiting", "lane=\"low\"", "ignored help");
    cr_assert(hi != NULL && other != NULL && lo != NULL);
    cr_assert_neq(hi, lo, "different labels are different members");
    cr_assert_eq(kiln_metric_gauge_labeled("t_waiting", "lane=\"low\"", NULL), lo,
                 "the same name and labels are the same member");
    cr_assert_null(kiln_metric_gauge_labeled("t_waiting", "", "no labels"));
    cr_assert_null(kiln_metric_gauge_labeled("t_waiting", NULL, "no labels"));
    cr_assert_null(kiln_metric_counter("t_waiting", "a family has one type"));
    kiln_metric_set(hi, 2);
    kiln_metric_set(lo, 7);
    kiln_metric_set(other, 1);

    char *text = NULL;
    cr_assert_eq(kiln_metrics_render(&text, NULL), KILN_OK);
    const char *family = "# HELP t_waiting Waiting jobs.\n# TYPE t_waiting gauge\n"
                         "t_waiting{lane=\"high\"} 2\nt_waiting{lane=\"low\"} 7\n";
    cr_assert(strstr(text, family) != NULL, "family not rendered together in:\n%s", text);
    const char *first = strstr(text, "# TYPE t_waiting");
    cr_assert(first != NULL && strstr(first + 1, "# TYPE t_waiting") == NULL,
              "TYPE repeated in:\n%s", text);
    cr_assert(strstr(text, "ignored help") == NULL, "a second HELP in:\n%s", text);
    cr_assert(strstr(text, "\nt_other 1\n") != NULL, "plain gauge missing in:\n%s", text);
    free(text);
}

Test(metrics, registry_is_capped)
{
    static char names[300][16];
    int got = 0;
    for (int i = 0; i < 300; i++) {
        snprintf(names[i], sizeof names[i], "t_m_%d", i);
        if (kiln_metric_counter(names[i], "x") != NULL) got++;
    }
    cr_assert_eq(got, 256);
}

Test(metrics, parse_listen_addr)
{
    struct sockaddr_storage ss;
    size_t len = 0;
    cr_assert_eq(kiln_parse_listen_addr("127.0.0.1:8080", &ss, &len), KILN_OK);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    cr_assert_eq(ss.ss_family, AF_INET);
    cr_assert_eq(len, sizeof *v4);
    cr_assert_eq(ntohs(v4->sin_port), 8080);
    cr_assert_eq(v4->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

    cr_assert_eq(kiln_parse_listen_addr(":9090", &ss, &len), KILN_OK);
    cr_assert_eq(ss.ss_family, AF_INET);
    cr_assert_eq(v4->sin_addr.s_addr, htonl(INADDR_ANY));
    cr_assert_eq(ntohs(v4->sin_port), 9090);
    cr_assert_eq(kiln_listen_addr_port(&ss), 9090);

    cr_assert_eq(kiln_parse_listen_addr("[::1]:8080", &ss, &len), KILN_OK);
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    cr_assert_eq(ss.ss_family, AF_INET6);
    cr_assert_eq(len, sizeof *v6);
    cr_assert_eq(ntohs(v6->sin6_port), 8080);
    cr_assert_eq(kiln_listen_addr_port(&ss), 8080, "the port of an IPv6 address");
    cr_assert(IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr));

    cr_assert_eq(kiln_parse_listen_addr("localhost:8081", &ss, &len), KILN_OK);
    cr_assert_eq(ss.ss_family, AF_INET);
    cr_assert_eq(ntohs(v4->sin_port), 8081);

    const char *bad[] = {"", "8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
                         "127.0.0.1:http", "::1:8080", "[::1]8080", "[::1", "host name:80",
                         "127.0.0.1:-1", "no-such-host.invalid:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(kiln_parse_listen_addr(bad[i], &ss, &len), KILN_EINVAL, "accepted '%s'",
                     bad[i]);
}

/* Starts the metrics listener on a loopback port it binds itself and
 * returns the port. Ports come from below the kernel's ephemeral range: a
 * port from bind(0), once closed, could be given to any outgoing connection
 * before the listener binds it (tests/harness.c h_free_ports). A port some
 * other process listens on fails the start, and the next one is tried. */
static int start_on_free_port(void)
{
    int low = 32768, hi = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d %d", &low, &hi) != 2) low = 32768;
        fclose(f);
    }
    cr_assert_gt(low, 11000, "no room below the ephemeral range (it starts at %d)", low);
    unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    char addr[64];
    for (int t = 0; t < 100; t++) {
        int port = 10000 + (int)(rand_r(&seed) % (unsigned)(low - 10000));
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        if (kiln_metrics_http_start(addr) == KILN_OK) return port;
    }
    cr_assert_fail("no free port for the metrics listener in 100 tries");
    return -1;
}

static void http_get(int port, const char *path, char *out, size_t outlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    cr_assert_eq(write(fd, req, (size_t)n), n);
    size_t got = 0;
    ssize_t r;
    while (got < outlen - 1 && (r = read(fd, out + got, outlen - 1 - got)) > 0) got += (size_t)r;
    out[got] = '\0';
    close(fd);
}

Test(metrics, http_listener)
{
    kiln_metric *c = kiln_metric_counter("t_http_total", "HTTP test.");
    kiln_metric_add(c, 9);
    cr_assert_eq(kiln_metrics_http_start(""), KILN_OK); /* off */
    kiln_metrics_http_stop();
    int port = start_on_free_port();
    char buf[16384];
    http_get(port, "/metrics", buf, sizeof buf);
    cr_assert(strstr(buf, "HTTP/1.0 200") == buf || strstr(buf, "HTTP/1.1 200") == buf, "%s", buf);
    cr_assert(strstr(buf, "t_http_total 9\n") != NULL, "%s", buf);
    http_get(port, "/healthz", buf, sizeof buf);
    cr_assert(strstr(buf, " 200 ") != NULL && strstr(buf, "\r\n\r\nok\n") != NULL, "%s", buf);
    http_get(port, "/nope", buf, sizeof buf);
    cr_assert(strstr(buf, " 404 ") != NULL, "%s", buf);
    kiln_metrics_http_stop();
    kiln_metrics_http_stop();
}
