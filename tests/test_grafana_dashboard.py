"""The example Grafana dashboard asks only for metrics the exporter serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pgbackup.operations.metrics import SPECS

DASHBOARD = Path(__file__).parents[1] / "examples" / "grafana" / "pgbackup-dashboard.json"


def test_every_query_names_a_served_metric() -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\bpgbackup_[a-z_]+", e)}
    assert named, exprs
    assert named <= set(SPECS), named - set(SPECS)
    # The questions the dashboard exists for: is it restorable, since when, how fast.
    for wanted in (
        "pgbackup_backup_last_success_timestamp_seconds",
        "pgbackup_recovery_window_start_timestamp_seconds",
        "pgbackup_recovery_window_end_timestamp_seconds",
        "pgbackup_wal_archive_lag_seconds",
        "pgbackup_drill_last_rto_seconds",
        "pgbackup_sla_status",
        "pgbackup_repository_up",
    ):
        assert wanted in named, wanted
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for var in ("datasource", "target"):
        assert var in {v["name"] for v in board["templating"]["list"]}
