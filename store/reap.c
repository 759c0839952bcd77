/* reap.c - frees the apply loop's finished messages in bursts (reap.h). */
#include <stdlib.h>
#include <string.h>

#include "reap.h"

struct reap {
    natsMsg *msgs[REAP_MAX_MSGS];
    int n;
    size_t bytes;
};

kiln_status reap_create(reap **out)
{
    *out = calloc(1, sizeof **out);
    return *out != NULL ? KILN_OK : KILN_ENOMEM;
}

static void reap_flush(reap *r)
{
    for (int i = 0; i < r->n; i++) natsMsg_Destroy(r->msgs[i]);
    r->n = 0;
    r->bytes = 0;
}

void reap_destroy(reap *r)
{
    if (r == NULL) return;
    reap_flush(r);
    free(r);
}

/* What a kept message holds: its payload, and headers and subjects roughly. */
static size_t reap_size(natsMsg *m)
{
    return (size_t)natsMsg_GetDataLength(m) + 256;
}

void reap_take(reap *r, natsMsgList *list)
{
    size_t bytes = 0;
    for (int i = 0; i < list->Count; i++) bytes += reap_size(list->Msgs[i]);
    if (r->n + list->Count > REAP_MAX_MSGS || r->bytes + bytes > REAP_MAX_BYTES) reap_flush(r);
    if (list->Count > REAP_MAX_MSGS || bytes > REAP_MAX_BYTES) {
        natsMsgList_Destroy(list); /* larger than the bounds on its own */
    } else {
        memcpy(r->msgs + r->n, list->Msgs, (size_t)list->Count * sizeof *list->Msgs);
        r->n += list->Count;
        r->bytes += bytes;
        free(list->Msgs);
    }
    memset(list, 0, sizeof *list);
}

int reap_kept(const reap *r) { return r->n; }
