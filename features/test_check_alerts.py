"""Steps for check_alerts.feature."""

from __future__ import annotations

import os
from typing import Any

from harness import Harness
from pytest_bdd import parsers, scenarios, then, when

scenarios("check_alerts.feature")


@when("I run the check for Nagios with a Prometheus textfile")
def nagios_check(h: Harness, ctx: dict[str, Any]) -> None:
    h.env["XDG_STATE_HOME"] = str(h.root / "state")
    ctx["prom"] = h.root / "textfiles" / "pgbackup.prom"
    h.run("check", "--nagios", "--prometheus", str(ctx["prom"]), expect_ok=None)


@then(parsers.parse('Nagios gets exit status {code:d} and a line starting "{text}"'))
def nagios_line(h: Harness, code: int, text: str) -> None:
    assert h.last is not None
    assert h.last.returncode == code, (h.last.stdout, h.last.stderr)
    lines = h.last.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(text), h.last.stdout


@then(parsers.parse('the line names "{name}"'))
def line_names(h: Harness, name: str) -> None:
    assert h.last is not None and name in h.last.stdout


@then("the textfile says the overall status is 1 and archiving is not failing")
def textfile(ctx: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = ctx["prom"].read_text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    status = "pgbackup_check_status"
    assert samples[(status, (("check", "overall"), ("target", "platform")))] == 1
    assert samples[("pgbackup_archiver_failing", (("target", "platform"),))] == 0
    assert samples[(status, (("check", "wal_archiving"), ("target", "platform")))] == 0
    assert not [p for p in ctx["prom"].parent.iterdir() if p.name.startswith(".")]  # no temp left


@when("the repository is made world-writable")
def open_repo(h: Harness) -> None:
    os.chmod(h.repo, 0o757)
