/* sha256.c - SHA-256 with the libcrypto algorithm fetched once. */
#include <pthread.h>

#include <openssl/evp.h>

#include "sha256.h"

static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md; /* kept for the process's life; read-only once fetched */

static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); }

kiln_status kiln_sha256(const void *data, size_t len, uint8_t out[KILN_SHA256_LEN])
{
    unsigned int n = 0;
    if (data == NULL && len != 0) return KILN_EINVAL;
    pthread_once(&sha256_once, sha256_fetch);
    if (sha256_md == NULL || EVP_Digest(data, len, out, &n, sha256_md, NULL) != 1 ||
        n != KILN_SHA256_LEN)
        return KILN_ERR;
    return KILN_OK;
}
