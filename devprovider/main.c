/* main.c - kiln-devprovider: settings, signals and wiring of the dev image
 * provider (an OpenAI Images API double with fault injection, CONTRACT §6). */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "images.h"
#include "log.h"
#include "server.h"
#include "status.h"

int main(int argc, char **argv)
{
    char *addr = NULL, *level = NULL, *key = NULL, *size = NULL;
    int64_t latency_ms = 0, max_prompts = 0;
    const kiln_setting table[] = {
        {"KILN_DEVPROVIDER_ADDR", "addr", KILN_SET_LISTEN_ADDR, "127.0.0.1:8090", 0, -1,
         "listen address host:port (port 0 picks a free port)", &addr},
        {"KILN_DEVPROVIDER_LATENCY_MS", "latency", KILN_SET_DURATION, "200ms", 0, 3600000,
         "delay of every generation without a !sleep directive (e.g. 0, 200ms, 2s)", &latency_ms},
        {"KILN_DEVPROVIDER_KEY", "key", KILN_SET_STRING, "", 0, -1,
         "if set, require Authorization: Bearer <key> on /v1/images/generations", &key},
        {"KILN_DEVPROVIDER_SIZE", "size", KILN_SET_STRING, DEV_DEFAULT_SIZE, 0, -1,
         "picture size WxH when a request names none (pictures are capped at 1024x1024)", &size},
        {"KILN_DEVPROVIDER_MAX_PROMPTS", "max-prompts", KILN_SET_INT, "100000", 1, 10000000,
         "prompts whose fault-injection attempts are counted (least recently used evicted)",
         &max_prompts},
        {"KILN_LOG_LEVEL", "log-level", KILN_SET_STRING, "info", 0, -1,
         "debug, info, warn or error (debug logs one line per request)", &level},
    };
    char err[512];
    kiln_log_init("devprovider");
    kiln_status st = kiln_config_load(table, sizeof table / sizeof table[0], argc, argv,
                                      "kiln-devprovider",
                                      "A local image provider speaking the OpenAI Images API, "
                                      "with fault injection by prompt directives "
                                      "(!sleep=MS !fail=CODE[:K] !ratelimit=K !hang).",
                                      err, sizeof err);
    if (st == KILN_EHELP) return 0;
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-devprovider: %s\n", err);
        return 2;
    }
    unsigned def_w = 0, def_h = 0;
    if (dev_images_parse_size(size, &def_w, &def_h) != KILN_OK) {
        fprintf(stderr, "kiln-devprovider: KILN_DEVPROVIDER_SIZE must be WxH with sides 1 to %d\n",
                DEV_SIZE_MAX);
        return 2;
    }
    if (kiln_log_set_level(level) != KILN_OK) {
        fprintf(stderr, "kiln-devprovider: KILN_LOG_LEVEL must be debug, info, warn or error\n");
        return 2;
    }

    /* Block the stop signals before MHD starts its threads (they inherit the
     * mask), so only sigwait below receives them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
        fprintf(stderr, "kiln-devprovider: cannot block signals\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    dev_server_opts o = {.addr = addr,
                         .latency_ms = latency_ms,
                         .api_key = key,
                         .max_prompts = (size_t)max_prompts,
                         .default_w = def_w,
                         .default_h = def_h};
    dev_server *srv = NULL;
    st = dev_server_start(&o, &srv);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-devprovider: KILN_DEVPROVIDER_ADDR=%s: cannot serve there (%s)\n", addr,
                kiln_status_str(st));
        return 2;
    }
    LOG_INFO("listening addr=%s port=%u latency_ms=%lld auth=%s", addr,
             (unsigned)dev_server_port(srv), (long long)latency_ms,
             key[0] != '\0' ? "bearer" : "off");

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    LOG_INFO("stopping signal=%s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    dev_server_stop(srv);
    srv = NULL;
    LOG_INFO("stopped");
    return 0;
}
