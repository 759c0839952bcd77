/* routes.h - path + method routing, authentication of API routes. */
#ifndef GW_ROUTES_H
#define GW_ROUTES_H

#include "server.h"

/* The route of a path (method not considered), for metrics; NONE if unknown. */
gw_route gw_routes_classify(const char *url);

/* Routes r: unknown path 404, wrong method 405 with Allow, missing or bad
 * token 401, else the handler, which answers r or suspends it. */
void gw_routes_dispatch(gw_req *r);

#endif
