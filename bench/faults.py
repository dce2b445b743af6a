"""Run the fault-injection suite and print the reliability table.

    .venv/bin/python bench/faults.py            # long mode (PGBACKUP_FAULTS=long)
    .venv/bin/python bench/faults.py --ci       # CI mode (what `pytest` runs by default)
    .venv/bin/python bench/faults.py --table    # only print the table of the last run

The suite lives in tests/faults/; each run writes its counts to var/fault-counts.json
(long mode: var/fault-counts-long.json)
(tests/faults/counts.py) and this script renders them as Markdown (docs/reliability.md).
Extra arguments after `--` go to pytest (e.g. `-- -k kill`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faults"))

import counts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ci", action="store_true", help="CI mode (fewer injections)")
    parser.add_argument("--table", action="store_true", help="only print the last table")
    parser.add_argument("--seed", help="PGBACKUP_FAULTS_SEED for the random fault points")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    rc = 0
    if not args.table:
        env = {**os.environ, "PGBACKUP_FAULTS": "ci" if args.ci else "long"}
        if args.seed:
            env["PGBACKUP_FAULTS_SEED"] = args.seed
        t0 = time.monotonic()
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"]
            + args.pytest_args,
            cwd=ROOT,
            env=env,
        )
        print(f"\nsuite finished in {time.monotonic() - t0:.0f}s (pytest exit {rc})\n")
    path = counts.output_path("ci" if args.ci else "long")
    if not path.exists():
        print(f"no counts in {path}", file=sys.stderr)
        return rc or 1
    print(counts.table(json.loads(path.read_text())))
    return rc


if __name__ == "__main__":
    sys.exit(main())
