"""The simulated link's schedule: pure decisions of when the link is down and how long a
publish is held back, replayed the same way for the same seed."""

from __future__ import annotations

import pytest

from fedsa_common.net.link_schedule import LinkSchedule


def test_the_link_is_down_exactly_inside_its_windows():
    schedule = LinkSchedule(offline=((2.0, 5.0), (9.0, 10.0)))
    down = [t for t in (0.0, 1.99, 2.0, 4.99, 5.0, 8.0, 9.0, 9.5, 10.0, 50.0)
            if schedule.is_offline(t)]
    assert down == [2.0, 4.99, 9.0, 9.5]


def test_a_link_without_windows_or_delays_is_always_up_and_immediate():
    schedule = LinkSchedule()
    assert not any(schedule.is_offline(t) for t in (0.0, 1.0, 1e9))
    assert [schedule.publish_delay(i) for i in range(5)] == [0.0] * 5


def test_publish_delays_are_a_function_of_seed_and_number_within_the_jitter():
    a = LinkSchedule(publish_delay_s=1.0, delay_jitter_s=0.5, seed=7)
    delays = [a.publish_delay(i) for i in range(50)]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 40  # jittered, not one value
    assert [a.publish_delay(i) for i in reversed(range(50))] == delays[::-1]  # order-free
    other = LinkSchedule(publish_delay_s=1.0, delay_jitter_s=0.5, seed=8)
    assert [other.publish_delay(i) for i in range(50)] != delays


def test_churning_replays_for_a_seed_and_starts_online_with_disjoint_windows():
    def draw(seed: int) -> LinkSchedule:
        return LinkSchedule.churning(seed=seed, horizon_s=600.0, online_mean_s=20.0,
                                     offline_mean_s=5.0)

    first, again, other = draw(3), draw(3), draw(4)
    assert first == again and first.offline != other.offline
    assert len(first.offline) > 5
    assert first.offline[0][0] > 0 and not first.is_offline(0.0)
    ends = [0.0] + [end for _, end in first.offline]
    assert all(prev < start < end <= 600.0
               for prev, (start, end) in zip(ends, first.offline, strict=False))
    down = sum(end - start for start, end in first.offline)
    assert 0.05 < down / 600.0 < 0.5  # about 5 / (20 + 5) of the time


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"publish_delay_s": -1.0}, "publish_delay_s"),
    ({"delay_jitter_s": float("nan")}, "delay_jitter_s"),
    ({"offline": ((3.0, 3.0),)}, "offline[0]"),
    ({"offline": ((0.0, 4.0), (3.0, 6.0))}, "offline[1]"),
])
def test_a_bad_schedule_names_its_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[")):
        LinkSchedule(**kwargs)


def test_a_bad_churn_mean_names_its_field():
    with pytest.raises(ValueError, match="offline_mean_s"):
        LinkSchedule.churning(seed=0, horizon_s=10.0, online_mean_s=1.0, offline_mean_s=0.0)
