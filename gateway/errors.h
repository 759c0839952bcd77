/* errors.h - the CONTRACT §3 error body and the code -> HTTP status table. */
#ifndef GW_ERRORS_H
#define GW_ERRORS_H

#include "server.h"

/* HTTP status of a CONTRACT error code (503 for an unknown code). */
int gw_errors_status(const char *code);

/* Makes a the error answer {"error":{"code","message"[,"field"]}} with the
 * status of code; adds WWW-Authenticate for 401 and Retry-After: 1 for 503.
 * field may be NULL. Any headers already on a are dropped. */
void gw_answer_error(gw_answer *a, const char *code, const char *message, const char *field);

#endif
