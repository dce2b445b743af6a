"""SLA arithmetic: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from pgbackup.operations import sla
from pgbackup.operations.sla import AT_RISK, BREACHED, COMPLIANT

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def check(exposure: float | None, minutes_ago: int = 5) -> dict:
    return {
        "checked_at": (NOW - timedelta(minutes=minutes_ago)).isoformat(),
        "rpo_exposure_seconds": exposure,
        "wal_last_archived_age_seconds": 100.0,
    }


def test_rpo_compliant_when_every_check_is_within_the_objective() -> None:
    s = sla.rpo_section(300, [check(0), check(120), check(10)], [NOW, NOW + timedelta(seconds=60)])
    assert s["verdict"] == COMPLIANT
    assert s["worst_exposure_seconds"] == 120
    assert s["largest_archive_gap_seconds"] == 60


def test_rpo_breached_by_one_check_over_the_objective_with_the_worst_case() -> None:
    s = sla.rpo_section(300, [check(0), check(301, 3), check(50)], [])
    assert s["verdict"] == BREACHED
    assert s["worst_exposure_seconds"] == 301
    assert "worst exposure 5.0m" in s["reasons"][0]


def test_rpo_close_to_the_objective_is_at_risk() -> None:
    assert sla.rpo_section(300, [check(250)], [])["verdict"] == AT_RISK


def test_rpo_without_measurements_is_at_risk_and_a_gap_then_counts() -> None:
    times = [NOW, NOW + timedelta(seconds=900)]
    s = sla.rpo_section(300, [], times)
    assert s["verdict"] == AT_RISK
    assert any("largest gap" in r for r in s["reasons"])
    # With measured checks an archive gap is only a note (idle servers archive nothing).
    assert sla.rpo_section(300, [check(0)], times)["verdict"] == COMPLIANT


def drill(rto: float | None, status: str = "ok", tp: float = 1e6) -> dict:
    return {
        "status": status,
        "started_at": NOW.isoformat(),
        "rto_seconds": rto,
        "restore_throughput_bytes_per_second": tp,
        "timings": {"fetch": 1.0, "restore": 10.0, "recovery": 4.0, "checks": 1.0},
        "error": None if status == "ok" else "check(s) failed",
    }


def test_rto_compliant_and_projection_from_throughput() -> None:
    s = sla.rto_section(3600, [drill(16.0)], 100e6)
    assert s["verdict"] == COMPLIANT
    # 100 MB at 1 MB/s plus fetch, recovery and checks of the last drill
    assert s["projected_seconds"] == 106.0


def test_rto_projection_over_the_objective_is_at_risk() -> None:
    s = sla.rto_section(60, [drill(16.0)], 100e6)
    assert s["verdict"] == AT_RISK
    assert any("projected" in r for r in s["reasons"])


def test_rto_projection_counts_the_chain_staged_then_combined() -> None:
    # 100 MB full + two 5 MB incrementals staged at 1 MB/s (110 s), then pg_combinebackup
    # writes the 100 MB directory again; no drill has combined yet, so at 1 MB/s (100 s);
    # plus the drill's fixed 6 s.
    seconds, note = sla.project_restore_seconds(sla.good_drills([drill(16.0)]), 100e6, [5e6, 5e6])
    assert seconds == 216.0
    assert note is not None and "chain of 3" in note and "not yet measured" in note
    # Once a drill has measured pg_combinebackup (4 MB/s here), its rate is used.
    combined = {**drill(30.0), "combine_throughput_bytes_per_second": 4e6}
    seconds, note = sla.project_restore_seconds(
        sla.good_drills([drill(16.0), combined]), 100e6, [5e6, 5e6]
    )
    assert seconds == 110.0 + 25.0 + 6.0
    assert note is not None and "not yet measured" not in note
    # A full backup: no chain, no combine, the figure of before.
    assert sla.project_restore_seconds(sla.good_drills([drill(16.0)]), 100e6, []) == (106.0, None)


def test_rto_projection_of_a_long_chain_is_at_risk_and_says_why() -> None:
    full = sla.rto_section(120, [drill(16.0)], 100e6, [])
    assert full["verdict"] == COMPLIANT and full["projected_chain_length"] == 1
    chain = sla.rto_section(120, [drill(16.0)], 100e6, [5e6] * 6)
    assert chain["verdict"] == AT_RISK
    assert chain["projected_chain_length"] == 7
    assert chain["projected_seconds"] == 130.0 + 100.0 + 6.0
    assert any("chain of 7" in r for r in chain["reasons"]), chain["reasons"]


def test_chain_increments_reads_the_newest_backups_chain() -> None:
    def backup(backup_id: str, raw: int, parent: str | None = None, chain: list | None = None):
        meta = {"raw_bytes": raw, "parent": parent, "chain": chain or []}
        return SimpleNamespace(backup_id=backup_id, metadata=meta)

    full = backup("F", 100)
    inc1 = backup("I1", 7, "F", ["F"])
    inc2 = backup("I2", 9, "I1", ["F", "I1"])
    assert sla.chain_increments([full, inc1, inc2]) == [7.0, 9.0]
    # The database an incremental stands for is its full backup's size, not its own.
    assert sla.full_backup_bytes([full, inc1, inc2]) == 100.0
    assert sla.full_backup_bytes([full]) == 100.0
    assert sla.chain_increments([inc1, inc2, backup("F2", 100)]) == []
    assert sla.chain_increments([]) == []


def test_rto_breached_by_a_slow_drill_or_a_failed_latest_drill() -> None:
    assert sla.rto_section(10, [drill(16.0)], None)["verdict"] == BREACHED
    s = sla.rto_section(3600, [drill(16.0), drill(None, "failed")], None)
    assert s["verdict"] == BREACHED
    assert s["drills_failed"] == 1


def test_rto_without_any_drill_is_at_risk() -> None:
    assert sla.rto_section(3600, [], None)["verdict"] == AT_RISK


def test_backup_frequency_lists_missed_runs() -> None:
    start = NOW - timedelta(days=5)
    backups = [start.replace(hour=2, minute=5) + timedelta(days=d) for d in (1, 2, 4, 5)]
    s = sla.frequency_section("0 2 * * *", backups, start, NOW)
    assert s["verdict"] == AT_RISK
    assert s["missed_runs"] == [(start.replace(hour=2, minute=0) + timedelta(days=3)).isoformat()]
    assert s["largest_gap_seconds"] == 2 * 86400
    assert s["interval_seconds"] == 86400


def test_backup_frequency_compliant_and_no_backup_is_breached() -> None:
    start = NOW - timedelta(days=2)
    backups = [start.replace(hour=2, minute=1) + timedelta(days=d) for d in (1, 2)]
    assert sla.frequency_section("0 2 * * *", backups, start, NOW)["verdict"] == COMPLIANT
    assert sla.frequency_section("0 2 * * *", [], start, NOW)["verdict"] == BREACHED


def test_retention_promise_against_the_oldest_restorable_point() -> None:
    old = NOW - timedelta(days=8)
    assert sla.retention_section(7, old, old, 9, NOW)["verdict"] == COMPLIANT
    young_repo = NOW - timedelta(days=2)
    assert sla.retention_section(7, young_repo, young_repo, 2, NOW)["verdict"] == COMPLIANT
    assert sla.retention_section(7, NOW - timedelta(days=1), old, 1, NOW)["verdict"] == AT_RISK
    assert sla.retention_section(7, None, old, 0, NOW)["verdict"] == BREACHED


def test_overall_is_the_worst_section_with_reasons() -> None:
    sections = {
        "rpo": {"verdict": BREACHED, "reasons": ["too old"]},
        "rto": {"verdict": AT_RISK, "reasons": ["slow"]},
        "backups": {"verdict": COMPLIANT, "reasons": ["fine"]},
    }
    verdict, reasons = sla.overall(sections)
    assert verdict == BREACHED
    assert reasons == ["RPO: too old", "RTO: slow"]


def offsite(exposure: float, lags: dict[str, float | None], minutes_ago: int = 5) -> dict:
    return {**check(exposure, minutes_ago), "offsite_lag_seconds": lags}


def test_rpo_host_loss_counts_the_least_behind_destination() -> None:
    # Locally fine, but the off-site copies were a day behind: a lost host loses a day.
    s = sla.rpo_section(300, [offsite(0, {"nas": 86400.0, "s3": None})], [])
    assert s["verdict"] == BREACHED
    assert s["host_loss_worst_exposure_seconds"] == 86400
    assert any(
        r.startswith("host loss (restoring from an upload destination)") for r in s["reasons"]
    )
    # One destination within the objective is enough to restore from.
    s = sla.rpo_section(300, [offsite(2, {"nas": 86400.0, "s3": 1.5})], [])
    assert s["verdict"] == COMPLIANT
    assert s["host_loss_worst_exposure_seconds"] == 2
    # Every destination unreachable: the host-loss exposure is unknown, not fine.
    assert sla.rpo_section(300, [offsite(0, {"nas": None})], [])["verdict"] == AT_RISK
    # No uploads recorded: the local verdict alone.
    assert sla.rpo_section(300, [check(10)], [])["verdict"] == COMPLIANT


# --------------------------------------------------------------------------- RTO projection

MIB = 1024 * 1024
SEG = 16 * MIB


def phased_drill(restore_rate: float, replay_bytes: int, replay_seconds: float, **extra) -> dict:
    d = drill(20.0, tp=restore_rate)
    d["phases"] = {
        "transfer": {"seconds": 1.0, "bytes": 10},
        "wal_replay": {"seconds": replay_seconds, "bytes": replay_bytes},
    }
    return {**d, **extra}


def test_wal_since_backup_counts_the_segments_after_the_stop_lsn_once() -> None:
    names = [
        "000000010000000000000002",  # before the backup's end: not replayed
        "000000010000000000000003.zst",  # holds the stop LSN: its rest is replayed
        "000000010000000000000004.zst",
        "000000020000000000000004.partial.zst",  # the same position on timeline 2
        "000000020000000000000005.zst",
        "00000002.history.zst",
    ]
    stop = "0/3000100"
    assert sla.wal_since_backup(stop, names, SEG) == (0x6000000 - 0x3000100, 3)
    assert sla.wal_since_backup(stop, names[:1], SEG) == (0, 0)
    assert sla.wal_since_backup(None, names, SEG) == (0, 0)


def test_measured_rates_come_from_the_newest_drills_that_measured_them() -> None:
    old = phased_drill(1e6, 100 * MIB, 10.0, drill_id="old")
    new = phased_drill(2e6, 0, 3.0, drill_id="new")  # replayed nothing: no replay rate
    failed = {**phased_drill(9e9, 9, 1.0), "status": "failed"}
    rates = sla.measured_rates([old, new, failed])
    assert rates["restore_bytes_per_second"] == 2e6 and rates["restore_measured_by"] == "new"
    assert rates["replay_bytes_per_second"] == 10 * MIB and rates["replay_measured_by"] == "old"
    assert rates["combine_bytes_per_second"] is None


def test_projection_is_restore_plus_replay_at_the_measured_rates() -> None:
    d = phased_drill(4 * MIB, 64 * MIB, 8.0, drill_id="d1")  # replay at 8 MiB/s
    p = sla.rto_projection(3600, [d], 400 * MIB, [], 32 * MIB, 2)
    assert p["restore_seconds"] == 100.0  # 400 MiB at 4 MiB/s
    assert p["replay_seconds"] == 4.0  # 32 MiB at 8 MiB/s
    assert p["projected_seconds"] == 104.0
    assert p["warning"] is None and p["note"] is None
    assert (p["backup_bytes"], p["wal_bytes"], p["wal_segments"]) == (400 * MIB, 32 * MIB, 2)
    assert p["restore_bytes_per_second"] == 4 * MIB and p["replay_bytes_per_second"] == 8 * MIB
    lines = sla.projection_lines(p)
    assert "104.0s" in lines[0] and "400.0 MiB" in lines[1] and "4.0 MiB/s" in lines[1]
    assert "32.0 MiB in 2 segment(s)" in lines[2] and "8.0 MiB/s" in lines[2]
    assert not any(line.startswith("WARNING") for line in lines)


def test_projection_of_a_chain_stages_every_member_then_combines() -> None:
    d = phased_drill(4 * MIB, 64 * MIB, 8.0, combine_throughput_bytes_per_second=8 * MIB)
    p = sla.rto_projection(None, [d], 400 * MIB, [40 * MIB, 40 * MIB], 0, 0)
    assert p["restore_seconds"] == (480 / 4) + (400 / 8)
    assert p["replay_seconds"] == 0.0 and p["projected_seconds"] == 170.0
    assert p["warning"] is None  # no objective


def test_projection_over_the_objective_warns_and_puts_the_rto_at_risk() -> None:
    d = phased_drill(4 * MIB, 64 * MIB, 8.0)
    p = sla.rto_projection(60, [d], 400 * MIB, [], 32 * MIB, 2)
    assert p["warning"] == (
        "WARNING: the projected restore time 104.0s exceeds the RTO objective 60.0s"
    )
    assert sla.projection_lines(p)[-1] == p["warning"]
    s = sla.rto_section(60, [d], None, [], p)  # the drill itself (20 s) was within it
    assert s["verdict"] == AT_RISK
    assert s["projection"] is p and p["warning"] in s["reasons"]
    assert "restore with the WAL since the backup 104.0s" in sla.measure("rto", s)


def test_without_a_measured_rate_the_projection_says_no_measurement_yet() -> None:
    p = sla.rto_projection(60, [], 400 * MIB, [], 32 * MIB, 2)
    assert p["projected_seconds"] is None and p["warning"] is None
    assert p["note"].startswith("no measurement yet: no drill measured the restore rate")
    assert "WAL replay rate" in p["note"]
    assert sla.projection_lines(p) == [f"RTO projection: {p['note']}"]
    # an older drill: a restore rate, no replay phase
    old = drill(20.0, tp=4 * MIB)
    p = sla.rto_projection(60, [old], 400 * MIB, [], 32 * MIB, 2)
    assert p["restore_seconds"] == 100.0 and p["projected_seconds"] is None
    assert p["note"] == (
        "no measurement yet: no drill measured the WAL replay rate (run `pgbackup drill`)"
    )
    # no WAL since the backup: no replay rate needed
    assert sla.rto_projection(60, [old], 400 * MIB, [], 0, 0)["projected_seconds"] == 100.0
    s = sla.rto_section(3600, [old], None, [], p)
    assert "no measurement yet" in sla.measure("rto", s)


def test_a_wal_check_that_could_not_run_is_not_a_pass() -> None:
    """The newest check could not read the archive's records (pg_waldump missing): the
    archive is AT RISK, with check's own words (issue #29 point 3)."""
    unchecked = "wal_content: not checked: record checksums of 3 uncompressed segment(s) ..."
    newest = {"checked_at": "2026-01-02T00:00:00Z", "problems": [unchecked]}
    section = sla.archive_section({"wal_gaps": []}, [newest])
    assert section["verdict"] == AT_RISK
    assert section["reasons"] == [
        f"the newest check (2026-01-02T00:00:00Z) could not read all of it: {unchecked}"
    ]
    healed = {"checked_at": "2026-01-03T00:00:00Z", "problems": []}
    assert sla.archive_section({"wal_gaps": []}, [newest, healed])["verdict"] == COMPLIANT


def test_tampering_breaches_the_archive_and_a_short_lock_puts_it_at_risk() -> None:
    """check's immutability findings reach the SLA report (issue #28 point 4)."""
    tampered = (
        "tampering: 2 object(s) pgbackup wrote once were changed: ...; --as-of 2026-01-01T23:59:59Z"
    )
    newest = {"checked_at": "2026-01-02T00:00:00Z", "problems": [tampered]}
    section = sla.archive_section({"wal_gaps": []}, [newest])
    assert section["verdict"] == BREACHED
    assert section["reasons"] == [f"the newest check (2026-01-02T00:00:00Z) found {tampered}"]
    short = "object_lock: 1 object(s) hold a lock shorter than the policy promises: ..."
    newest = {"checked_at": "2026-01-02T00:00:00Z", "problems": [short]}
    assert sla.archive_section({"wal_gaps": []}, [newest])["verdict"] == AT_RISK
