/* server.h - the dev provider's HTTP server (libmicrohttpd's epoll thread
 * pool; a thread only for each request while it waits): POST
 * /v1/images/generations with fault injection, GET /v1/files/<name>.png,
 * /healthz and /metrics. */
#ifndef DEV_SERVER_H
#define DEV_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DEV_BODY_MAX (1024 * 1024) /* request bodies above this answer 413 */
#define DEV_CONN_MAX 1024          /* concurrent connections */

typedef struct {
    const char *addr;       /* "host:port"; port 0 picks a free one */
    int64_t latency_ms;     /* delay of every generation without !sleep */
    const char *api_key;    /* NULL or "": no authentication */
    size_t max_prompts;     /* attempt counters kept; 0 = DEV_ATTEMPTS_DEFAULT_MAX */
    unsigned default_w;     /* picture size when a request names none (1..8192) */
    unsigned default_h;
} dev_server_opts;

typedef struct dev_server dev_server;

/* Starts listening and serving on MHD's threads. The caller stops and frees
 * the server with dev_server_stop(). */
kiln_status dev_server_start(const dev_server_opts *o, dev_server **out);

/* The bound port (useful with port 0). */
uint16_t dev_server_port(const dev_server *s);

/* Ends sleeping and hanging requests (their waiter threads resume them
 * within 100 ms), closes every connection, joins MHD's threads and frees s.
 * Accepts NULL. */
void dev_server_stop(dev_server *s);

#endif
