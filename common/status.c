/* status.c - names of kiln_status values for log lines. */
#include "status.h"

const char *kiln_status_str(kiln_status s)
{
    switch (s) {
    case KILN_OK: return "ok";
    case KILN_ERR: return "error";
    case KILN_EINVAL: return "invalid";
    case KILN_ENOMEM: return "nomem";
    case KILN_ENOTFOUND: return "not_found";
    case KILN_EIO: return "io";
    case KILN_ENATS: return "nats";
    case KILN_ETIMEOUT: return "timeout";
    case KILN_ECONFLICT: return "conflict";
    case KILN_EUNAVAILABLE: return "unavailable";
    case KILN_EHELP: return "help";
    case KILN_ESTOPPED: return "stopped";
    }
    return "unknown";
}
