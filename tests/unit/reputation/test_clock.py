"""Epochs on the chain's clock: a time is placed in an epoch only when the blocks read so
far settle it (a summary signed in the second a new epoch's first block was mined belongs
to the new epoch, even before that block is read)."""

from __future__ import annotations

from supernode.reputation.clock import EpochClock


def clock(head: int, head_time: int, starts: dict[int, int]) -> EpochClock:
    c = EpochClock(None, 5, 1)  # type: ignore[arg-type]  # no chain: a set cache
    c.head, c.head_time = head, head_time
    for e, t in starts.items():
        c.learn(e, t)
    return c


def test_a_time_is_placed_only_when_the_blocks_settle_it() -> None:
    c = clock(head=14, head_time=1014, starts={0: 1000, 1: 1005, 2: 1010})  # head in epoch 2
    assert c.epoch == 2
    assert c.epoch_at(1004) == 0 and c.epoch_at(1005) == 1 and c.epoch_at(1009) == 1
    assert c.epoch_at(1010) == 2 and c.epoch_at(1014) == 2  # at or before the head's time
    assert c.epoch_at(1015) is None  # epoch 3's first block may carry this very second
    assert c.epoch_at(999) is None  # before anything read
    c.head, c.head_time = 15, 1015
    c.learn(3, 1015)
    assert c.epoch_at(1015) == 3 and c.epoch_at(1014) == 2


def test_closing_follows_the_grace_epoch() -> None:
    c = clock(head=19, head_time=1019, starts={0: 1000, 1: 1005, 2: 1010, 3: 1015})
    assert c.last_closed() == 1  # epoch 3 is the head: 2 is in its grace, 1 is closed
    assert c.close_time(1) == 1015 and c.close_time(2) is None
