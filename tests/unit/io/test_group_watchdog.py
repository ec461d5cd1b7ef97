"""GroupStallWatchdog: replace a consumer only when it has no partitions AND its group is stuck."""

from nearline.io.group_watchdog import GroupStallWatchdog


class Totals:
    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    def __call__(self):
        self.calls += 1
        return self.answers.pop(0)


def test_stuck_member_of_a_stuck_group_is_replaced_after_two_looks():
    w, totals = GroupStallWatchdog(stall_s=20), Totals((100, 40), (130, 40))
    assert not w.observe(0, False, totals)
    assert not w.observe(19, False, totals) and totals.calls == 0  # too early to look
    assert not w.observe(20, False, totals) and totals.calls == 1  # first look only records
    assert not w.observe(35, False, totals) and totals.calls == 1  # looks at most every stall_s
    assert w.observe(40, False, totals)  # nothing committed in 20 s while input waits


def test_an_idle_extra_instance_is_left_alone_while_a_peer_makes_progress():
    w, totals = GroupStallWatchdog(stall_s=10), Totals((100, 50), (120, 90), (150, 140))
    for t in (0, 10, 20, 30):
        assert not w.observe(t, False, totals)
    assert totals.calls == 3


def test_no_input_waiting_means_no_stall():
    w, totals = GroupStallWatchdog(stall_s=10), Totals((70, 70), (70, 70))
    assert not any(w.observe(t, False, totals) for t in (0, 10, 20))


def test_getting_partitions_resets_the_clock():
    w, totals = GroupStallWatchdog(stall_s=10), Totals((100, 0), (100, 0))
    w.observe(0, False, totals)
    w.observe(10, False, totals)
    assert not w.observe(15, True, totals)
    assert not w.observe(20, False, totals) and not w.observe(29, False, totals)  # a new stretch starts at 20
    assert totals.calls == 1
