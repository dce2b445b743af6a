"""Steps for sla_compliance.feature: real SMTP (aiosmtpd) and HTTP receivers on loopback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from harness import Harness, do_restore
from pytest_bdd import given, parsers, scenarios, then, when
from receivers import AlertReceivers

scenarios("sla_compliance.feature")


@given(
    parsers.parse(
        "a policy with rto 1h and rpo {rpo:d}s that alerts a local SMTP server and a local webhook"
    )
)
def policy_with_alerts(
    h: Harness, alert_receivers: AlertReceivers, ctx: dict[str, Any], rpo: int
) -> None:
    ctx["rpo"] = rpo
    h.env["XDG_STATE_HOME"] = str(h.root / "state")
    h.env["PGBACKUP_TEST_WEBHOOK"] = f"http://127.0.0.1:{alert_receivers.http_port}/hook/s3cr3t"
    h.policy["sla"] = {"rto": "1h", "rpo": f"{rpo}s"}
    h.policy["alerts"] = {
        "smtp": {
            "host": "127.0.0.1",
            "port": alert_receivers.smtp_port,
            "from": "pgbackup@example.com",
            "to": ["dba@example.com"],
        },
        "webhooks": [{"name": "ops", "url": "${PGBACKUP_TEST_WEBHOOK}", "format": "json"}],
    }
    h.write_policy()


@given(parsers.parse('the drill checks that tenants count "{expect}"'))
def drill_expect(h: Harness, expect: str) -> None:
    h.policy["drill"] = {
        "checks": [
            {"name": "tenants exist", "sql": "SELECT count(*) FROM tenants", "expect": expect}
        ]
    }
    h.write_policy()


@when("I run a drill that is expected to fail")
def run_failing_drill(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("drill", expect_ok=False)
    assert proc.returncode != 0
    assert "FAIL tenants exist" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@when("I run the check")
def run_check(h: Harness, ctx: dict[str, Any]) -> None:
    proc = h.run("check", "--json", expect_ok=None)
    ctx["check"] = json.loads(proc.stdout)["platform"]
    ctx["check_rc"] = proc.returncode


@then(parsers.parse("the check says {status}"))
def check_says(ctx: dict[str, Any], status: str) -> None:
    check = ctx["check"]
    assert check["status"] == status, json.dumps(check, indent=2)
    assert ctx["check_rc"] == {"OK": 0, "WARNING": 1, "CRITICAL": 2}[status]


def sla_json(h: Harness) -> dict[str, Any]:
    return dict(json.loads(h.run("sla-report", "--format", "json").stdout)["platform"])


@then("the SLA report is COMPLIANT with the drill's measured RTO")
def report_compliant(h: Harness, ctx: dict[str, Any]) -> None:
    report = sla_json(h)
    assert report["verdict"] == "COMPLIANT", report["reasons"]
    rto = report["sections"]["rto"]
    assert rto["objective_seconds"] == 3600
    assert rto["latest_seconds"] == pytest.approx(ctx["drill"]["rto_seconds"])
    assert 0 < rto["latest_seconds"] < 3600
    assert report["sections"]["rpo"]["objective_seconds"] == ctx["rpo"]
    assert report["sections"]["rpo"]["worst_exposure_seconds"] is not None
    md = h.run("sla-report").stdout
    assert "**COMPLIANT**" in md


@when("archiving is broken with a bad archive path")
def break_archiving(h: Harness) -> None:
    cluster = h.sandbox()
    cluster.sql("ALTER SYSTEM SET archive_command = 'cp %p /nonexistent/pgbackup-archive/%f'")
    cluster.sql("SELECT pg_reload_conf()")


@when("WAL is written and switched until archiving fails for longer than the RPO")
def write_wal_until_breach(h: Harness, ctx: dict[str, Any]) -> None:
    cluster = h.sandbox()
    h.sql(
        cluster,
        "INSERT INTO tenants SELECT 800000 + g, 'after-break-' || g FROM generate_series(1, 100) g",
    )
    cluster.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ok_time, bad_time = cluster.sql(
            "SELECT last_archived_time, last_failed_time FROM pg_stat_archiver"
        )[0]
        if bad_time is not None and (ok_time is None or bad_time > ok_time):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the archiver never reported a failure")
    # The exposure runs from the last successful archive; let it pass the objective.
    wait = ctx["rpo"] + 1 - (datetime.now(UTC) - ok_time).total_seconds()
    if wait > 0:
        time.sleep(wait)


@then("exactly one alert arrived by e-mail and one at the webhook")
@then("still exactly one alert arrived by e-mail and one at the webhook")
def one_alert_each(alert_receivers: AlertReceivers) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (alert_receivers.mails and alert_receivers.posts):
        time.sleep(0.1)
    assert len(alert_receivers.mails) == 1, [m["Subject"] for m in alert_receivers.mails]
    assert len(alert_receivers.posts) == 1, alert_receivers.posts
    mail = alert_receivers.mails[0]
    assert "CRITICAL" in mail["Subject"] and "platform" in mail["Subject"]
    assert "archiving is failing" in mail.get_payload()
    post = alert_receivers.posts[0]
    assert post["path"] == "/hook/s3cr3t"
    assert post["body"]["status"] == "critical" and post["body"]["event"] == "check"
    assert post["body"]["previous"] is None or post["body"]["previous"] == "ok"


@then(parsers.parse("the SLA report is BREACHED for {area}"))
def report_breached(h: Harness, area: str) -> None:
    report = sla_json(h)
    assert report["verdict"] == "BREACHED", report["reasons"]
    assert report["sections"][area.lower()]["verdict"] == "BREACHED", report["sections"][
        area.lower()
    ]
    assert any(r.startswith(f"{area}:") for r in report["reasons"]), report["reasons"]
    md = h.run("sla-report").stdout
    assert "**BREACHED**" in md


@then("the drill is recorded as failed with the value the check saw")
def drill_recorded_failed(h: Harness) -> None:
    files = sorted((h.repo / "platform" / "drills").glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["status"] == "failed"
    assert record["checks"][0]["ok"] is False
    assert record["checks"][0]["value"] == 10  # the sandbox's tenants: real, but not < 0
    assert "tenants exist" in record["error"]
    assert record["backup_id"] == h.backups()[-1]["backup_id"]
    assert set(record["timings"]) >= {"fetch", "restore", "recovery", "checks", "total"}
    rows = h.sql(h.sandbox(), "SELECT count(*) FROM tenants")
    assert rows[0][0] == 10  # the source was never touched


@when("I write the SLA report as HTML")
def write_html(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.root / "report.html"
    h.run("sla-report", "--format", "html", "--output", str(out))
    ctx["html"] = out


@then("the HTML report has inline SVG charts and no scripts")
def html_has_charts(ctx: dict[str, Any]) -> None:
    text = ctx["html"].read_text()
    assert text.count("<svg") == 3  # the recoverability timeline, backup durations and sizes
    assert "Restore drills: measured RTO" in text and "Backup duration" in text
    assert "objective 1 h" in text
    assert "<script" not in text and "https://" not in text
    assert set(re.findall(r"http://[^\"' ]+", text)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }  # SVG namespaces: names, nothing fetched
    assert "COMPLIANT" in text or "AT RISK" in text


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@then("headless Chromium renders it to a non-trivial PNG")
def render_png(h: Harness, ctx: dict[str, Any]) -> None:
    program = chromium()
    if program is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    png = h.root / "report.png"
    subprocess.run(
        [
            program,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={h.root / 'chromium-profile'}",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            f"file://{ctx['html']}",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert png.exists(), "Chromium wrote no screenshot"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 1600)
    # A blank 1200x1600 page compresses to a few kB; text, tables and charts do not.
    assert len(data) > 30_000, len(data)


# --- where the time goes, and the RTO projection (#26 point 4) ----------------------------


@given(parsers.parse("the policy's RTO objective is {seconds:d}s"))
def rto_objective(h: Harness, seconds: int) -> None:
    h.policy["sla"]["rto"] = f"{seconds}s"
    h.write_policy()


def measured(phases: dict[str, Any], names: list[str]) -> None:
    for name in names:
        assert phases[name]["seconds"] > 0 and phases[name]["bytes"] > 0, (name, phases)


@then(
    "the backup's run record and metadata.json have seconds and bytes for server, compress, "
    "transfer and sync"
)
def backup_phases(h: Harness, ctx: dict[str, Any]) -> None:
    backup_id = ctx["backup_ids"][-1]
    records = [
        json.loads(p.read_text()) for p in sorted((h.repo / "platform" / "runs").glob("*.json"))
    ]
    run = next(r for r in records if r["kind"] == "backup" and r.get("backup_id") == backup_id)
    metadata = json.loads((h.repo / "platform" / "base" / backup_id / "metadata.json").read_text())
    measured(run["phases"], ["server", "compress", "transfer", "sync", "metadata"])
    measured(metadata["phases"], ["server", "compress", "transfer", "sync"])
    assert run["phases"]["server"]["bytes"] == metadata["raw_bytes"]
    assert "metadata" not in metadata["phases"]  # it cannot hold the time of its own writing
    for name in ("server", "compress", "transfer", "sync"):
        assert run["phases"][name] == metadata["phases"][name]
    listed = next(b for b in h.backups() if b["backup_id"] == backup_id)
    assert listed["phases"] == metadata["phases"]  # list --json says it too (bench/scale.py)
    ctx["backup_metadata"] = metadata


def drill_record(h: Harness, ctx: dict[str, Any]) -> dict[str, Any]:
    path = h.repo / "platform" / "drills" / f"{ctx['drill']['drill_id']}.json"
    return dict(json.loads(path.read_text()))


@then("the drill's record has seconds and bytes for transfer, decode, write, sync and wal_replay")
def drill_phases(h: Harness, ctx: dict[str, Any]) -> None:
    record = drill_record(h, ctx)
    measured(record["phases"], ["transfer", "decode", "write", "sync", "wal_replay"])
    assert record["phases"] == ctx["drill"]["phases"]
    assert record["phases"]["wal_replay"]["seconds"] == record["timings"]["recovery"]
    # transfer reads what is stored; decode yields at least the raw bytes it restored
    assert record["phases"]["transfer"]["bytes"] == record["stored_bytes"]
    assert record["phases"]["write"]["bytes"] <= record["phases"]["decode"]["bytes"]


def wal_after(h: Harness, stop_lsn: str, seg_size: int) -> tuple[int, int]:
    """The WAL archived after ``stop_lsn``, counted here from the repository's files."""
    from pgbackup.formats.lsn import parse_lsn

    positions = {
        int(p.name[8:16], 16) * (0x100000000 // seg_size) + int(p.name[16:24], 16)
        for p in (h.repo / "platform" / "wal").iterdir()
        if re.fullmatch(r"[0-9A-F]{24}", p.name[:24])
    }
    stop = parse_lsn(stop_lsn)
    after = [n * seg_size for n in positions if (n + 1) * seg_size > stop]
    return (max(after) + seg_size - stop, len(after)) if after else (0, 0)


@then(
    "the SLA report projects the RTO from the drill's rates, the backup's size and the WAL since it"
)
def report_projects(h: Harness, ctx: dict[str, Any]) -> None:
    record = drill_record(h, ctx)
    metadata = ctx["backup_metadata"]
    p = sla_json(h)["sections"]["rto"]["projection"]
    replay = record["phases"]["wal_replay"]
    assert p["restore_bytes_per_second"] == record["restore_throughput_bytes_per_second"]
    assert p["restore_measured_by"] == record["drill_id"]
    assert p["replay_bytes_per_second"] == pytest.approx(replay["bytes"] / replay["seconds"])
    assert p["backup_bytes"] == metadata["raw_bytes"] and p["chain_increments_bytes"] == []
    wal_bytes, segments = wal_after(h, metadata["stop_lsn"], metadata["wal_segment_size"])
    assert (p["wal_bytes"], p["wal_segments"]) == (wal_bytes, segments)
    assert segments >= 1  # the late rows' segment, at least
    assert p["restore_seconds"] == pytest.approx(
        metadata["raw_bytes"] / p["restore_bytes_per_second"], abs=0.06
    )
    assert p["replay_seconds"] == pytest.approx(wal_bytes / p["replay_bytes_per_second"], abs=0.06)
    assert p["projected_seconds"] == pytest.approx(
        p["restore_seconds"] + p["replay_seconds"], abs=0.11
    )
    assert p["objective_seconds"] == 3600 and p["warning"] is None and p["note"] is None
    md = h.run("sla-report").stdout
    assert "RTO projection (the newest backup restored now" in md
    assert "WARNING" not in md


@then("the SLA report warns that the projected restore time exceeds the objective")
def report_warns(h: Harness) -> None:
    report = sla_json(h)
    rto = report["sections"]["rto"]
    p = rto["projection"]
    assert p["objective_seconds"] == 1
    assert p["projected_seconds"] > 1, p
    warning = (
        f"WARNING: the projected restore time {p['projected_seconds']:.1f}s exceeds the RTO "
        "objective 1.0s"
    )
    assert p["warning"] == warning
    assert warning in rto["reasons"] and f"RTO: {warning}" in report["reasons"]
    md = h.run("sla-report").stdout
    assert f"- {warning}" in md
    out = h.root / "report.html"
    h.run("sla-report", "--format", "html", "--output", str(out))
    assert warning in out.read_text()


@then("the check warns that the projected restore time exceeds the objective")
def check_warns(h: Harness) -> None:
    proc = h.run("check", "--json", expect_ok=None)
    report = json.loads(proc.stdout)["platform"]
    projected = sla_json(h)["sections"]["rto"]["projection"]["projected_seconds"]
    check = next(c for c in report["checks"] if c["name"] == "rto_projection")
    assert check["status"] == "WARNING", report["checks"]
    assert check["value"] == projected
    assert "restoring the newest backup and the WAL since it" in check["summary"]
    assert report["status"] in ("WARNING", "CRITICAL") and proc.returncode in (1, 2)


@when("I restore the latest point with --json and start it")
def restore_latest_json(h: Harness, ctx: dict[str, Any]) -> None:
    do_restore(h, ctx, ["--target", "latest"])


@then("the restore's result has seconds and bytes for transfer, decode, write, sync and wal_replay")
def restore_phases(ctx: dict[str, Any]) -> None:
    result = ctx["restore_result"]
    phases = result["phases"]
    measured(phases, ["transfer", "decode", "write", "sync", "wal_replay"])
    assert phases["transfer"]["bytes"] == result["stored_bytes"]
    assert phases["wal_replay"]["seconds"] <= result["seconds"]
