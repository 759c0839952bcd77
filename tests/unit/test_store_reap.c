/* test_store_reap.c - unit tests for the store's burst reaper: it takes a
 * settled batch's messages, keeps them within its bounds, and destroys each
 * exactly once (ASan/LSan in `make test` catch a double free or a leak). */
#include <criterion/criterion.h>
#include <nats/nats.h>
#include <stdlib.h>
#include <string.h>

#include "../../store/reap.h"

static void setup(void) { cr_assert_eq(nats_Open(-1), NATS_OK); }

/* The library frees destroyed messages on its own thread: wait for it, so
 * LeakSanitizer sees what the reaper handed over as freed. */
static void teardown(void) { cr_assert_eq(nats_CloseAndWait(5000), NATS_OK); }

TestSuite(store_reap, .init = setup, .fini = teardown);

static void make_list(natsMsgList *list, int n, size_t payload)
{
    char *data = calloc(1, payload + 1);
    cr_assert_not_null(data);
    list->Msgs = calloc((size_t)n, sizeof *list->Msgs);
    cr_assert_not_null(list->Msgs);
    list->Count = n;
    for (int i = 0; i < n; i++)
        cr_assert_eq(natsMsg_Create(&list->Msgs[i], "jobs.generate", NULL, data, (int)payload),
                     NATS_OK);
    free(data);
}

/* Hands the reaper a new list of n messages; the list must come back empty. */
static void take_new(reap *r, int n, size_t payload)
{
    natsMsgList list;
    make_list(&list, n, payload);
    reap_take(r, &list);
    cr_assert_eq(list.Count, 0);
    cr_assert_null(list.Msgs);
}

static reap *new_reap(void)
{
    reap *r = NULL;
    cr_assert_eq(reap_create(&r), KILN_OK);
    return r;
}

Test(store_reap, takes_the_list_and_keeps_its_messages)
{
    reap *r = new_reap();
    take_new(r, 10, 100);
    cr_assert_eq(reap_kept(r), 10);
    reap_destroy(r);
}

Test(store_reap, destroys_the_kept_ones_at_the_count_bound)
{
    reap *r = new_reap();
    int batches = REAP_MAX_MSGS / 100; /* 40 batches of 100 fit */
    for (int i = 0; i < batches; i++) take_new(r, 100, 10);
    cr_assert_eq(reap_kept(r), batches * 100);
    take_new(r, 100, 10); /* would pass REAP_MAX_MSGS: the kept ones go first */
    cr_assert_eq(reap_kept(r), 100);
    reap_destroy(r);
}

Test(store_reap, destroys_the_kept_ones_at_the_byte_bound)
{
    reap *r = new_reap();
    size_t payload = 256 * 1024; /* 16 of these are 4 MiB with the allowance */
    int max_seen = 0;
    for (int i = 0; i < 40; i++) {
        take_new(r, 1, payload);
        if (reap_kept(r) > max_seen) max_seen = reap_kept(r);
    }
    cr_assert_lt((size_t)max_seen * payload, (size_t)REAP_MAX_BYTES, "kept %d", max_seen);
    cr_assert_gt(max_seen, 1, "messages below the bound are kept");
    reap_destroy(r);
}

Test(store_reap, a_list_over_the_bounds_is_destroyed_at_once)
{
    reap *r = new_reap();
    take_new(r, 3, 10);
    take_new(r, REAP_MAX_MSGS + 1, 1);
    cr_assert_eq(reap_kept(r), 0, "the kept ones went first, the big list at once");
    reap_destroy(r);
}

Test(store_reap, destroy_accepts_null)
{
    reap_destroy(NULL);
}
