/* test_store_resync.c - which messages the store's durable counts as handled:
 * up to its ack floor, or up to its delivered sequence when nothing is left
 * unacked (store/resync.c compares that with what the store applied). */
#include <criterion/criterion.h>

#include "../../store/resync.h"

Test(resync, handled_up_to_the_ack_floor_while_messages_are_unacked)
{
    cr_expect_eq(resync_handled_upto(3985, 820, 5), 820);
    cr_expect_eq(resync_handled_upto(10, 10, 1), 10, "a redelivery below the floor keeps it");
}

Test(resync, handled_up_to_the_delivered_sequence_when_nothing_is_unacked)
{
    cr_expect_eq(resync_handled_upto(3985, 820, 0), 3985, "the chaos run's kiln-store");
    cr_expect_eq(resync_handled_upto(7, 7, 0), 7);
    cr_expect_eq(resync_handled_upto(0, 0, 0), 0, "a new durable");
}

/* Two looks a round apart at a durable that holds 40 messages for the store
 * and delivers none of them, while a fetch begun after the first look came
 * back empty. */
static void stuck_looks(resync_look *prev, resync_look *cur)
{
    *prev = (resync_look){.delivered_seq = 297, .num_pending = 40, .num_ack_pending = 0,
                          .applied_seq = 297, .fetch_epoch = 10, .idle_epoch = 10};
    *cur = *prev;
    cur->num_pending = 41;
    cur->fetch_epoch = 18;
    cur->idle_epoch = 17;
}

Test(resync, a_durable_holding_messages_and_answering_fetches_with_nothing_is_stuck)
{
    resync_look prev, cur;
    stuck_looks(&prev, &cur);
    cr_expect(resync_pending_stuck(&prev, &cur));
}

Test(resync, a_durable_that_delivered_or_had_nothing_to_deliver_is_not_stuck)
{
    resync_look prev, cur;
    stuck_looks(&prev, &cur);
    cur.delivered_seq = 298;
    cr_expect(!resync_pending_stuck(&prev, &cur), "it delivered something");
    stuck_looks(&prev, &cur);
    cur.applied_seq = 298;
    cr_expect(!resync_pending_stuck(&prev, &cur), "the store applied something");
    stuck_looks(&prev, &cur);
    prev.num_pending = 0;
    cr_expect(!resync_pending_stuck(&prev, &cur), "nothing pending at the first look");
    stuck_looks(&prev, &cur);
    cur.num_pending = 0;
    cr_expect(!resync_pending_stuck(&prev, &cur), "nothing pending now");
    stuck_looks(&prev, &cur);
    cur.num_ack_pending = 1;
    cr_expect(!resync_pending_stuck(&prev, &cur), "a batch is in the store's hands");
    stuck_looks(&prev, &cur);
    cur.idle_epoch = 10;
    cr_expect(!resync_pending_stuck(&prev, &cur), "no fetch came back empty since the first look");
    stuck_looks(&prev, &cur);
    prev.fetch_epoch = 17;
    cr_expect(!resync_pending_stuck(&prev, &cur), "the empty fetch began before the first look");
}
