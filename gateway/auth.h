/* auth.h - API keys (KILN_API_KEYS) and Bearer token authentication. */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include <stddef.h>

#include <microhttpd.h>

#include "status.h"

#define GW_AUTH_MAX_KEYS 1024
#define GW_AUTH_TOKEN_MAX 512

/* Parses "token:user[,token:user...]" once at start. On error writes one
 * sentence to err (never the token itself) and returns KILN_EINVAL. */
kiln_status gw_auth_init(const char *spec, char *err, size_t errlen);
void gw_auth_free(void);
size_t gw_auth_count(void);

/* Checks the Authorization header of c. Returns the key index and sets *user,
 * or returns -1. Compares in constant time against every key. */
int gw_auth_check(struct MHD_Connection *c, const char **user);
/* The same for an Authorization header value (NULL = absent). */
int gw_auth_check_header(const char *authorization, const char **user);

#endif
