"""Static assignment of partition groups to job instances."""

import pytest

from nearline.stream.assignment import AssignmentError, StaticOwnership, instance_from_hostname, static_groups


@pytest.mark.parametrize("partitions,instances", [(4, 1), (4, 2), (4, 3), (4, 4), (12, 5)])
def test_instances_split_every_group_exactly_once(partitions, instances):
    owned = [static_groups(partitions, i, instances) for i in range(instances)]
    flat = sorted(p for groups in owned for p in groups)
    assert flat == list(range(partitions))                     # every group owned, none twice
    assert all(groups for groups in owned)                       # nobody idle
    assert max(map(len, owned)) - min(map(len, owned)) <= 1     # balanced


def test_impossible_pairs_are_one_line_errors():
    with pytest.raises(AssignmentError, match=r"--instance must be in 0..1 \(instances: 2\), not 2"):
        static_groups(4, 2, 2)
    with pytest.raises(AssignmentError, match="5 instances but only 4 partitions"):
        static_groups(4, 0, 5)
    with pytest.raises(AssignmentError, match="at least 1"):
        static_groups(4, 0, 0)


def test_statefulset_ordinal_from_the_host_name():
    assert instance_from_hostname("nearline-job-0") == 0
    assert instance_from_hostname("nearline-job-12") == 12
    with pytest.raises(AssignmentError, match="StatefulSet"):
        instance_from_hostname("laptop")


def test_static_ownership_never_changes_epoch():
    own = StaticOwnership([1, 3])
    assert own.owns(3) and not own.owns(2) and own.epoch(3) == 0
