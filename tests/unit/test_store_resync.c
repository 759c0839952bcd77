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
