/* b64.h - standard base64 (RFC 4648, with padding) encoding. */
#ifndef DEV_B64_H
#define DEV_B64_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Encodes len bytes into a new NUL-terminated string the caller frees. */
kiln_status dev_b64_encode(const uint8_t *in, size_t len, char **out);

#endif
