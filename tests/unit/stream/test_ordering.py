"""BatchSequencer: a partition group's batches reach the join in poll order, whatever order they arrive in."""

from dataclasses import dataclass

from nearline.stream.ordering import BatchSequencer


@dataclass
class B:
    epoch: int
    seq: int


def test_batches_are_released_in_poll_order():
    s = BatchSequencer()
    assert s.offer(B(0, 1)) == ([], False)          # early: held back
    assert s.offer(B(0, 2)) == ([], False)
    ready, reset = s.offer(B(0, 0))
    assert [b.seq for b in ready] == [0, 1, 2] and not reset
    assert [b.seq for b in s.offer(B(0, 3))[0]] == [3] and s.held == {}


def test_a_new_reader_restarts_the_sequence_and_older_batches_are_dropped():
    s = BatchSequencer()
    s.offer(B(1, 0))
    s.offer(B(1, 1))
    s.offer(B(1, 3))                                 # held: seq 2 of epoch 1 never comes (group reassigned)
    ready, reset = s.offer(B(2, 0))                  # the group came back to this instance
    assert [b.seq for b in ready] == [0] and reset and s.held == {}
    assert s.offer(B(1, 2)) == ([], False)           # a late batch of the old reader: dropped
    assert [(b.epoch, b.seq) for b in s.offer(B(2, 1))[0]] == [(2, 1)]


def test_the_first_reader_of_a_process_is_not_a_reset():
    s = BatchSequencer()
    assert s.offer(B(0, 0)) == ([B(0, 0)], False)   # static assignment: epoch 0, nothing to drop
