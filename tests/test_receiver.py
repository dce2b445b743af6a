"""wal-receive's pure parts: pg_receivewal's argv, and how a streamed .partial extends the chain."""

from __future__ import annotations

from pathlib import Path

from pgbackup.engine.receiver import ReceiverSettings, create_slot_argv, receivewal_argv
from pgbackup.engine.walchain import chain_from, streamed_names

RS = ReceiverSettings("pgbackup_main", False, Path("/spool"), "pgbackup_main")
META = {"timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100"}


def test_receivewal_argv() -> None:
    assert receivewal_argv("/bin/pg_receivewal", "host='h' port='5432'", RS) == [
        "/bin/pg_receivewal",
        "--dbname",
        "host='h' port='5432' application_name='pgbackup_main'",
        "--directory",
        "/spool",
        "--slot",
        "pgbackup_main",
        "--no-loop",
        "--no-password",
        "--verbose",
        "--status-interval",
        "1",
    ]
    sync = receivewal_argv("/bin/pg_receivewal", "", RS._replace(synchronous=True))
    assert sync[-1] == "--synchronous"


def test_create_slot_argv() -> None:
    argv = create_slot_argv("/bin/pg_receivewal", "host='h'", RS)
    assert argv[-4:] == ["pgbackup_main", "--create-slot", "--if-not-exists", "--no-password"]


def names(*files: str) -> dict[str, str]:
    return {f: f"t/wal/{f}.zst" for f in files}


def test_partial_extends_the_chain_but_not_the_newest_complete_segment() -> None:
    archived = names("000000010000000000000002", "000000010000000000000003.partial")
    chain = chain_from(META, archived, {})
    assert chain["gaps"] == []
    assert chain["last_segment"] == "000000010000000000000003"
    assert chain["newest_segment"] == "000000010000000000000002"
    assert streamed_names(archived)["000000010000000000000003"].endswith(".partial.zst")


def test_a_hole_before_a_partial_is_a_gap_as_for_wal_fetch() -> None:
    archived = names("000000010000000000000002", "000000010000000000000004.partial")
    chain = chain_from(META, archived, {})
    assert chain["gaps"] == ["000000010000000000000003"]
    assert chain["last_segment"] == "000000010000000000000002"


def test_a_stale_partial_beside_its_segment_is_ignored() -> None:
    archived = names(
        "000000010000000000000002", "000000010000000000000003", "000000010000000000000003.partial"
    )
    assert (
        streamed_names(archived)["000000010000000000000003"] == "t/wal/000000010000000000000003.zst"
    )


def test_receiver_lag_counts_the_silence_of_a_cut_link() -> None:
    from pgbackup.operations.slots import lag_seconds

    streaming = {"active": True, "lag_bytes": 8192, "write_lag": 0.2, "reply_age": 0.6}
    assert lag_seconds(streaming) == 0.6
    # The link is cut: write_lag froze at its last value, the replies stopped 12 s ago.
    cut = {**streaming, "write_lag": 0.2, "reply_age": 12.0}
    assert lag_seconds(cut) == 12.0
    # Caught up: no WAL missing, however old the last reply (an idle server).
    assert lag_seconds({**cut, "lag_bytes": 0}) == 0.0
    assert lag_seconds({**cut, "active": False}) == float("inf")
    assert (
        lag_seconds({"active": True, "lag_bytes": 1, "write_lag": None, "reply_age": None}) == 0.0
    )


def test_a_role_that_cannot_see_the_receivers_details_is_told_what_to_grant() -> None:
    from types import SimpleNamespace

    from pgbackup.operations.slots import receiver_checks

    policy = SimpleNamespace(sla=SimpleNamespace(rpo=300))
    target = SimpleNamespace(name="platform", wal_receiver={"slot": "s"})
    slot = {"slot": "s", "active": True, "wal_status": "reserved", "safe_wal_size": None}
    slot.update(retained_bytes=1 << 20, lag_bytes=1 << 20, write_lag=None, reply_age=None)
    checks, _ = receiver_checks(policy, target, [{**slot, "details_hidden": True}], None)
    hidden = [c for c in checks if c.name == "wal_receiver"]
    assert [c.status for c in hidden] == ["WARNING"]
    assert "GRANT pg_read_all_stats" in hidden[0].summary
    checks, _ = receiver_checks(policy, target, [{**slot, "details_hidden": False}], None)
    assert [c.status for c in checks if c.name == "wal_receiver"] == ["OK"]
