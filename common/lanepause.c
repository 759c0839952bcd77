/* lanepause.c - lane pause state in the KILN_CONTROL key-value bucket. */
#include <stdio.h>
#include <string.h>

#include "lanepause.h"
#include "log.h"
#include "natsconn.h"

#define LANEPAUSE_KEY_MAX 32

int kiln_lane_index(const char *name) {
    for (int i = 0; name != NULL && i < KILN_LANES; i++)
        if (strcmp(name, kiln_lanes[i].name) == 0) return i;
    return -1;
}

static void lanepause_key(char *buf, size_t len, int lane) {
    snprintf(buf, len, "pause.%s", kiln_lanes[lane].name);
}

kiln_status kiln_lane_pause_provision(jsCtx *js) {
    kvStore *kv = NULL;
    natsStatus s = js_KeyValue(&kv, js, KILN_CONTROL_BUCKET);
    if (s == NATS_NOT_FOUND) {
        kvConfig cfg;
        kvConfig_Init(&cfg);
        cfg.Bucket = KILN_CONTROL_BUCKET;
        cfg.History = 1;
        cfg.StorageType = js_FileStorage;
        s = js_CreateKeyValue(&kv, js, &cfg);
    }
    if (kv != NULL) kvStore_Destroy(kv);
    if (s != NATS_OK) {
        kiln_status st = kiln_nats_status(s);
        /* A transient failure is retried by kiln_provision. */
        KILN_LOG(kiln_nats_transient(st) ? KILN_LOG_WARN : KILN_LOG_ERROR,
                 "cannot provision bucket=%s status=%s err=\"%s\"", KILN_CONTROL_BUCKET, natsStatus_GetText(s),
                 nats_GetLastError(NULL));
        return st;
    }
    return KILN_OK;
}

kiln_status kiln_lane_pause_set(jsCtx *js, int lane, bool paused, const char *reason) {
    if (js == NULL || lane < 0 || lane >= KILN_LANES) return KILN_EINVAL;
    if (reason == NULL || reason[0] == '\0') reason = "paused";
    if (strlen(reason) > KILN_PAUSE_REASON_MAX) return KILN_EINVAL;
    kvStore *kv = NULL;
    char key[LANEPAUSE_KEY_MAX];
    lanepause_key(key, sizeof key, lane);
    natsStatus s = js_KeyValue(&kv, js, KILN_CONTROL_BUCKET);
    if (s == NATS_OK)
        s = paused ? kvStore_PutString(NULL, kv, key, reason) : kvStore_Delete(kv, key);
    if (kv != NULL) kvStore_Destroy(kv);
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}

kiln_status kiln_lane_pause_bucket(jsCtx *js, kvStore **out) {
    if (js == NULL || out == NULL) return KILN_EINVAL;
    natsStatus s = js_KeyValue(out, js, KILN_CONTROL_BUCKET);
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}

kiln_status kiln_lane_pause_read_kv(kvStore *kv, bool paused[KILN_LANES],
                                    char reasons[][KILN_PAUSE_REASON_MAX + 1]) {
    if (kv == NULL || paused == NULL) return KILN_EINVAL;
    for (int i = 0; i < KILN_LANES; i++) {
        paused[i] = false;
        if (reasons != NULL) reasons[i][0] = '\0';
    }
    natsStatus s = NATS_OK;
    for (int i = 0; i < KILN_LANES && s == NATS_OK; i++) {
        char key[LANEPAUSE_KEY_MAX];
        kvEntry *e = NULL;
        lanepause_key(key, sizeof key, i);
        s = kvStore_Get(&e, kv, key);
        if (s == NATS_NOT_FOUND) { /* never paused, or resumed (deleted) */
            s = NATS_OK;
            continue;
        }
        if (s != NATS_OK) break;
        paused[i] = true;
        if (reasons != NULL)
            snprintf(reasons[i], KILN_PAUSE_REASON_MAX + 1, "%s", kvEntry_ValueString(e));
        kvEntry_Destroy(e);
    }
    return s == NATS_OK ? KILN_OK : kiln_nats_status(s);
}

kiln_status kiln_lane_pause_read(jsCtx *js, bool paused[KILN_LANES],
                                 char reasons[][KILN_PAUSE_REASON_MAX + 1]) {
    kvStore *kv = NULL;
    kiln_status st = kiln_lane_pause_bucket(js, &kv);
    if (st == KILN_OK) st = kiln_lane_pause_read_kv(kv, paused, reasons);
    if (kv != NULL) kvStore_Destroy(kv);
    return st;
}
