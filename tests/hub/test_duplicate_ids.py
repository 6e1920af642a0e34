"""Telling two devices with one client id from a restarted device (pure), and how
``hub status`` shows what a regional hub flagged."""

from __future__ import annotations

from hub.duplicate_ids import SESSIONS_KEPT, DuplicateWatch, notice
from hub.status import Snapshot, duplicate_clients, render


def test_a_restart_is_not_a_duplicate_and_the_old_will_does_not_count() -> None:
    watch = DuplicateWatch()
    assert watch.online("d1", "a", since=10.0) is None
    assert watch.online("d1", "a", since=10.0) is None  # a reconnect of the same start
    assert watch.online("d1", "b", since=20.0) is None  # restarted: a new session
    assert not watch.is_current("d1", "a")  # a's will, arriving late, is not d1 leaving
    assert watch.is_current("d1", "b") and watch.is_current("d1", None)
    assert watch.status_fields() == {}


def test_a_superseded_session_coming_back_flags_the_pair_and_names_the_newer() -> None:
    watch = DuplicateWatch()
    watch.online("d1", "a", since=10.0)
    assert watch.online("d1", "b", since=20.0) is None  # could still be a restart
    dup = watch.online("d1", "a", since=10.0)  # a is alive: two devices
    assert dup is not None and dup.first
    assert (dup.older, dup.newer, dup.older_since) == ("a", "b", 10.0)
    again = watch.online("d1", "b", since=20.0)  # they keep alternating
    assert again is not None and not again.first and again.newer == "b"
    flagged = watch.status_fields()["duplicate_clients"]
    assert flagged["d1"]["sessions"] == ["a", "b"] and flagged["d1"]["newer"] == "b"
    told = notice(dup)
    assert (told.kind, told.id, told.session, told.accepted) == ("duplicate", "d1", "b", False)
    assert told.reason is not None and "'d1'" in told.reason and "--client-id" in told.reason


def test_copies_in_two_regions_are_flagged_with_both_regions() -> None:
    watch = DuplicateWatch()
    watch.online("d1", "a", since=10.0, region="north")
    watch.online("d1", "b", since=20.0, region="south")
    dup = watch.online("d1", "a", since=10.0, region="north")
    assert dup is not None and (dup.older_region, dup.newer_region) == ("north", "south")
    assert watch.status_fields()["duplicate_clients"]["d1"]["regions"] == ["north", "south"]
    assert "in use in region north" in (notice(dup).reason or "")


def test_the_newer_is_the_later_start_not_the_later_message() -> None:
    watch = DuplicateWatch()
    watch.online("d1", "late", since=50.0)
    watch.online("d1", "early", since=5.0)
    dup = watch.online("d1", "late", since=50.0)
    assert dup is not None and dup.newer == "late" and dup.older == "early"


def test_presence_without_a_session_and_bounded_memory() -> None:
    watch = DuplicateWatch(max_clients=2)
    assert watch.online("d1", None, since=0.0) is None
    for client in ("d1", "d2", "d3"):
        watch.online(client, "a", since=1.0)
    assert "d1" not in watch._clients and len(watch._clients) == 2
    for i in range(SESSIONS_KEPT + 3):  # many restarts keep a few sessions
        watch.online("d3", f"s{i}", since=float(i))
    assert len(watch._clients["d3"].started) == SESSIONS_KEPT


def test_hub_status_names_a_flagged_client_id() -> None:
    flagged = {"sessions": ["a", "b"], "newer": "b", "detected": 95.0}
    regional = {"online": True, "round": 1, "duplicate_clients": {"d1": flagged}}
    cloud = {"online": True, "round": 1, "duplicate_clients": {  # the same pair, and one
        "d1": {**flagged, "regions": ["north", "north"]},       # across two regions
        "d7": {"sessions": ["x", "y"], "newer": "y", "regions": ["north", "south"],
               "detected": 90.0}}}
    snap = Snapshot("demo", statuses={"regional/north": regional, "cloud/cloud": cloud},
                    presence={"north/d1": True})
    assert duplicate_clients(snap) == [
        {"region": "north", "client": "d1", "sessions": ["a", "b"], "newer": "b",
         "detected": 95.0},
        {"region": "north,south", "client": "d7", "sessions": ["x", "y"], "newer": "y",
         "detected": 90.0}]
    text, _ = render(snap, now=100.0)
    assert ("client id north/d1: two running devices claim it (sessions a, b), detected 5s "
            "ago; the newer (b) was told to leave") in text
