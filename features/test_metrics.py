"""Steps for metrics.feature: the real exporter process, scraped over real HTTP."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from harness import PGBACKUP, Harness
from prometheus_client.parser import text_string_to_metric_families
from pytest_bdd import given, parsers, scenarios, then, when

from pgbackup.postgres.cluster import free_port

scenarios("metrics.feature")

Metrics = dict[str, Any]  # family name -> Metric (with .documentation, .type, .samples)


class Exporter:
    """`pgbackup exporter` as its own process on a free loopback port."""

    def __init__(self, h: Harness, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.proc = subprocess.Popen(
            [
                PGBACKUP,
                "--config",
                str(h.config),
                "exporter",
                "--listen",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=h.env,
            cwd=h.root,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the socket listens
        assert line.startswith("serving metrics of platform on "), (line, self.stop())

    def scrape(self, timeout: float = 60) -> tuple[Metrics, float]:
        """The parsed families, and how long the scrape took."""
        started = time.monotonic()
        with urllib.request.urlopen(self.url, timeout=timeout) as resp:
            text = resp.read().decode()
        took = time.monotonic() - started
        return {f.name: f for f in text_string_to_metric_families(text)}, took

    def stop(self) -> str:
        """SIGTERM (a service manager's stop): exit 0, no traceback; the stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _out, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for e in started:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.communicate()


def value(metrics: Metrics, family: str, **labels: str) -> float:
    """The one sample of ``family`` (counter families without their _total) with ``labels``."""
    found = [
        s.value
        for s in metrics[family].samples
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created")
    ]
    assert len(found) == 1, (family, labels, metrics[family].samples)
    return float(found[0])


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- given / when -----------------------------------------------------------------------


@given("the backups were verified")
def verified(h: Harness) -> None:
    h.run("verify", "--backup", "all")


@when(parsers.parse("I start the exporter with an interval of {interval}"))
def start_with_interval(
    h: Harness, ctx: dict[str, Any], exporters: list[Exporter], interval: str
) -> None:
    ctx["interval"] = int(interval.rstrip("s"))
    exporters.append(Exporter(h, "--interval", interval, "--timeout", "60s"))


@when(parsers.parse("I start the exporter with a timeout of {timeout}"))
def start_with_timeout(
    h: Harness, ctx: dict[str, Any], exporters: list[Exporter], timeout: str
) -> None:
    ctx["timeout"] = int(timeout.rstrip("s"))
    exporters.append(Exporter(h, "--interval", "1s", "--timeout", timeout))


@pytest.fixture
def hole() -> Iterator[socket.socket]:
    """A listening socket nobody accepts from: the kernel completes the TCP handshake, the
    request is sent, no answer ever comes (an object store that hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


@when("the policy gains an upload destination on an S3 endpoint that never answers")
def hanging_upload(h: Harness, hole: socket.socket) -> None:
    h.env.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    h.policy["uploads"] = [
        {
            "name": "offsite",
            "kind": "s3",
            "bucket": "backups",
            "endpoint_url": f"http://127.0.0.1:{hole.getsockname()[1]}",
        }
    ]
    h.write_policy()


@when("I run the check with a Prometheus textfile")
def check_textfile(h: Harness, ctx: dict[str, Any]) -> None:
    h.env["XDG_STATE_HOME"] = str(h.root / "state")
    ctx["prom"] = h.root / "textfiles" / "pgbackup.prom"
    h.run("check", "--no-alert", "--prometheus", str(ctx["prom"]), expect_ok=None)


@when(parsers.parse("I start the exporter with --listen {listen}"))
def start_bad(h: Harness, ctx: dict[str, Any], listen: str) -> None:
    if listen == "busy":
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ctx["taken"] = taken
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
    h.run("exporter", "--listen", listen, expect_ok=False, timeout=60)


# --- then -------------------------------------------------------------------------------


@then(parsers.parse("a scrape says {count:d} restorable backups and the newest backup's end time"))
def scrape_backups(h: Harness, ctx: dict[str, Any], exporters: list[Exporter], count: int) -> None:
    metrics, _took = exporters[-1].scrape()
    ctx["metrics"], ctx["scraped_at"] = metrics, time.monotonic()
    backups = h.backups()
    assert len(backups) == count
    primary = {"target": "platform", "repository": "primary"}
    assert value(metrics, "pgbackup_backups_restorable", **primary) == count
    assert value(metrics, "pgbackup_backup_last_success_timestamp_seconds", **primary) == unix(
        backups[-1]["stop_time"]
    )
    assert (
        value(metrics, "pgbackup_backup_last_stored_bytes", **primary)
        == backups[-1]["stored_bytes"]
    )
    assert value(metrics, "pgbackup_backup_last_duration_seconds", **primary) == pytest.approx(
        backups[-1]["duration_seconds"]
    )
    assert value(metrics, "pgbackup_repository_up", repository="primary") == 1


@then("the scraped recoverable window is the one list shows")
def scrape_window(h: Harness, ctx: dict[str, Any]) -> None:
    metrics = ctx["metrics"]
    window = h.json("list")["platform"]["window"]
    primary = {"target": "platform", "repository": "primary"}
    start = value(metrics, "pgbackup_recovery_window_start_timestamp_seconds", **primary)
    end = value(metrics, "pgbackup_recovery_window_end_timestamp_seconds", **primary)
    assert start == unix(window["earliest_time"])
    assert end == unix(window["latest_time"])
    assert value(metrics, "pgbackup_wal_missing_segments", **primary) == 0
    archived = [
        p
        for p in (h.repo / "platform" / "wal").iterdir()
        if re.fullmatch(r"[0-9A-F]{24}\.zst", p.name)
    ]
    assert value(metrics, "pgbackup_wal_archived_segments", **primary) == len(archived)
    newest = max(p.stat().st_mtime for p in archived)
    assert value(
        metrics, "pgbackup_wal_last_archived_timestamp_seconds", **primary
    ) == pytest.approx(newest)
    lag = value(metrics, "pgbackup_wal_archive_lag_seconds", **primary)
    assert 0 <= lag <= time.time() - newest + 1


@then("the scraped drill RTO and verify result are the recorded ones")
def scrape_drill(h: Harness, ctx: dict[str, Any]) -> None:
    metrics = ctx["metrics"]
    records = [
        json.loads(p.read_text()) for p in sorted((h.repo / "platform" / "drills").glob("*.json"))
    ]
    assert len(records) == 1
    assert value(metrics, "pgbackup_drill_last_rto_seconds", target="platform") == pytest.approx(
        records[0]["rto_seconds"]
    )
    assert value(metrics, "pgbackup_drill_last_success", target="platform") == 1
    assert value(metrics, "pgbackup_drill_last_timestamp_seconds", target="platform") == unix(
        records[0]["finished_at"]
    )
    assert value(metrics, "pgbackup_verify_last_success", target="platform") == 1
    assert value(metrics, "pgbackup_sla_rto_objective_seconds", target="platform") == 3600
    sla = json.loads(h.run("sla-report", "--format", "json").stdout)["platform"]
    level = {"COMPLIANT": 0, "AT RISK": 1, "BREACHED": 2}
    assert (
        value(metrics, "pgbackup_sla_status", target="platform", area="overall")
        == level[sla["verdict"]]
    )
    for area, section in sla["sections"].items():
        assert (
            value(metrics, "pgbackup_sla_status", target="platform", area=area)
            == level[section["verdict"]]
        )


@then("every scraped metric has a HELP text and a name that follows Prometheus' rules")
def naming(ctx: dict[str, Any]) -> None:
    metrics: Metrics = ctx["metrics"]
    ours = [f for name, f in metrics.items() if name.startswith("pgbackup_")]
    assert len(ours) >= 20, sorted(metrics)
    for f in ours:
        assert re.fullmatch(r"pgbackup_[a-z][a-z0-9_]*[a-z]", f.name), f.name
        assert f.documentation and len(f.documentation) > 15, f.name
        assert f.type in ("gauge", "counter"), (f.name, f.type)
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith("_total"), s.name
            else:
                assert not s.name.endswith("_total"), s.name
            # Base units only: seconds and bytes, never milliseconds, minutes or MiB.
            assert not re.search(r"_(milliseconds|ms|minutes|hours|days|mib|kb|mb)(_|$)", s.name), (
                s.name
            )
            if "timestamp" in s.name:
                assert s.name.endswith("_timestamp_seconds"), s.name


@then(parsers.parse("a scrape within the interval still says {count:d} restorable backups"))
def cached(h: Harness, ctx: dict[str, Any], exporters: list[Exporter], count: int) -> None:
    metrics, _took = exporters[-1].scrape()
    assert len(h.backups()) == count + 1  # the repository has one more ...
    assert time.monotonic() - ctx["scraped_at"] < ctx["interval"]
    primary = {"target": "platform", "repository": "primary"}
    assert value(metrics, "pgbackup_backups_restorable", **primary) == count  # ... not yet read
    assert value(metrics, "pgbackup_repository_read_age_seconds", repository="primary") > value(
        ctx["metrics"], "pgbackup_repository_read_age_seconds", repository="primary"
    )


@then(parsers.parse("after the interval a scrape says {count:d} restorable backups"))
def refreshed(h: Harness, ctx: dict[str, Any], exporters: list[Exporter], count: int) -> None:
    primary = {"target": "platform", "repository": "primary"}
    deadline = time.monotonic() + ctx["interval"] + 60
    seen = None
    while time.monotonic() < deadline:
        metrics, _took = exporters[-1].scrape()
        seen = value(metrics, "pgbackup_backups_restorable", **primary)
        if seen == count:
            break
        time.sleep(1)
    assert seen == count
    assert value(metrics, "pgbackup_backup_last_success_timestamp_seconds", **primary) == unix(
        h.backups()[-1]["stop_time"]
    )
    assert exporters[-1].stop().strip() == ""  # SIGTERM: a quiet exit
    assert exporters[-1].proc.returncode == 0


@then(parsers.parse("every scrape answers within {limit:d} seconds"))
def scrapes_fast(ctx: dict[str, Any], exporters: list[Exporter], limit: int) -> None:
    times = []
    for _ in range(3):
        metrics, took = exporters[-1].scrape(timeout=limit + 30)
        times.append(took)
        time.sleep(1.5)  # past the 1s interval: every scrape starts new reads
    assert max(times) < limit, times
    ctx["metrics"] = metrics


@then(
    parsers.parse(
        "the primary repository is up with {count:d} restorable backup and the destination is down"
    )
)
def destination_down(h: Harness, ctx: dict[str, Any], count: int) -> None:
    metrics = ctx["metrics"]
    assert value(metrics, "pgbackup_repository_up", repository="primary") == 1
    assert (
        value(metrics, "pgbackup_backups_restorable", target="platform", repository="primary")
        == count
    )
    assert value(metrics, "pgbackup_repository_up", repository="offsite") == 0
    assert value(metrics, "pgbackup_repository_read_failures", repository="offsite") >= 1
    assert not [
        s
        for s in metrics["pgbackup_backups_restorable"].samples
        if s.labels["repository"] == "offsite"
    ]


@then(
    parsers.parse("the textfile says {count:d} restorable backup and the newest backup's end time")
)
def textfile_says(h: Harness, ctx: dict[str, Any], count: int) -> None:
    text = ctx["prom"].read_text()
    metrics = {f.name: f for f in text_string_to_metric_families(text)}
    primary = {"target": "platform", "repository": "primary"}
    assert value(metrics, "pgbackup_backups_restorable", **primary) == count
    assert value(metrics, "pgbackup_backup_last_success_timestamp_seconds", **primary) == unix(
        h.backups()[-1]["stop_time"]
    )
    assert value(metrics, "pgbackup_check_status", target="platform", check="overall") in (0, 1, 2)
    assert value(metrics, "pgbackup_archiver_failing", target="platform") == 0
    assert "# HELP pgbackup_archiver_failed_total " in text
