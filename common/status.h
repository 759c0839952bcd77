/* status.h - the one status type every Kiln module returns (KILN_OK == 0). */
#ifndef KILN_STATUS_H
#define KILN_STATUS_H

typedef enum {
    KILN_OK = 0,
    KILN_ERR,          /* generic failure; the message says more */
    KILN_EINVAL,       /* bad argument or bad input */
    KILN_ENOMEM,
    KILN_ENOTFOUND,
    KILN_EIO,          /* file system or RocksDB */
    KILN_ENATS,        /* NATS / JetStream */
    KILN_ETIMEOUT,
    KILN_ECONFLICT,
    KILN_EUNAVAILABLE, /* a dependency (NATS, store) cannot take the request now */
    KILN_EHELP,        /* --help was printed; the caller exits 0 */
    KILN_ESTOPPED,     /* SIGTERM/SIGINT came while waiting (to connect); the caller exits 0 */
} kiln_status;

/* Short lower-case name of a status, for log lines. Never NULL. */
const char *kiln_status_str(kiln_status s);

#endif
