"""A corpus of malformed policies: every one a clear message with its YAML path, exit 2,
no traceback. Most run in-process through ``pgbackup.policy.validate_file`` (fast); a
sample runs through the real CLI (``pgbackup --config FILE validate``).

Generated with hypothesis (mutations of the shipped ``backup.yaml``: wrong types, unknown
keys, bad durations, bad cron, missing environment variables, YAML syntax errors,
literal passwords), plus hand-written edge cases.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import counts
import pytest
import yaml
from harness import PGBACKUP
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgbackup.errors import ConfigError
from pgbackup.policy import parse_duration, validate_file
from pgbackup.policy.parsers import _cron_problem

REPO = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((REPO / "backup.yaml").read_text())
EXAMPLES = counts.pick(40, 300)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="pgbackup-faults-policies-"))
CLI_SAMPLE: list[tuple[str, bytes, str]] = []  # (kind, text, expected path) for the CLI test

# Leaves by the type the schema wants (paths into DEFAULT).
INT_LEAVES = [
    ("compression", "level"),
    ("retention", "days"),
    ("retention", "weekly"),
    ("retention", "monthly"),
    ("version",),
]
STR_LEAVES = [
    ("repository", "path"),
    ("sla", "rto"),
    ("schedules", "backup"),
    ("targets", "platform", "connection", "user"),
    ("targets", "platform", "sandbox", "path"),
    ("drill", "checks", 0, "sql"),
    ("drill", "checks", 0, "name"),
    ("compression", "method"),
]
OBJECTS = [
    (),
    ("repository",),
    ("compression",),
    ("retention",),
    ("sla",),
    ("schedules",),
    ("drill",),
    ("targets", "platform"),
    ("targets", "platform", "connection"),
    ("targets", "platform", "sandbox"),
    ("drill", "checks", 0),
]
SECRET = "Sup3r-s3cret-Value"


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def check(kind: str, text: bytes, expected_path: str | None) -> None:
    """Validate in-process; count; assert a clean rejection that names the path."""
    SCRATCH.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".yaml", dir=SCRATCH)
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    try:
        problems = validate_file(name)
        error = None
    except ConfigError as exc:  # unreadable / not UTF-8: a clean error too
        problems = exc.problems or [("(file)", exc.message)]
        error = None
    except BaseException as exc:  # noqa: BLE001 - anything else is a traceback
        problems = []
        error = exc
    finally:
        os.unlink(name)
    rejected = bool(problems) and error is None
    counts.inputs(kind, 1, rejected=int(rejected), tracebacks=int(error is not None))
    assert error is None, f"{kind}: {type(error).__name__}: {error}"
    assert problems, f"{kind}: accepted\n{text[:500]!r}"
    for path, message in problems:
        assert path and message, problems
        assert SECRET not in message and SECRET not in path, problems
    if expected_path is not None:
        assert any(p == expected_path or p.startswith(expected_path) for p, _ in problems), (
            expected_path,
            problems,
        )
    if len(CLI_SAMPLE) < 400 and kind not in {k for k, _, _ in CLI_SAMPLE[-3:]}:
        CLI_SAMPLE.append((kind, text, expected_path or ""))


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


scalars = st.one_of(
    st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()
)


@SETTINGS
@given(
    st.sampled_from(INT_LEAVES),
    st.one_of(
        st.text(min_size=1, max_size=12).filter(lambda s: not re.fullmatch(r"\s*[-+]?\d+\s*", s)),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
        st.booleans(),
    ),
)
def test_wrong_types_for_integers(path: tuple[Any, ...], value: Any) -> None:
    assume(not (isinstance(value, str) and "$" in value))
    check("wrong type", dump(put(DEFAULT, path, value)), dotted(path))


@SETTINGS
@given(
    st.sampled_from(STR_LEAVES),
    st.one_of(
        st.lists(scalars, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=5), scalars, max_size=2),
    ),
)
def test_wrong_types_for_strings(path: tuple[Any, ...], value: Any) -> None:
    check("wrong type", dump(put(DEFAULT, path, value)), dotted(path))


@SETTINGS
@given(
    st.sampled_from(OBJECTS),
    st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
    scalars,
)
def test_unknown_keys(path: tuple[Any, ...], key: str, value: Any) -> None:
    node = get(DEFAULT, path)
    assume(key not in node)
    allowed = {
        (): {"uploads", "encryption", "alerts", "version", "monitoring", "description"},
        ("targets", "platform"): {"pg_bin_dir", "description", "labels", "docker", "sla"},
        ("targets", "platform", "connection"): {
            "host",
            "port",
            "sslmode",
            "passfile",
            "options",
            "application_name",
            "connect_timeout",
            "sslrootcert",
            "sslcert",
            "sslkey",
        },
    }
    assume(key not in allowed.get(path, set()))
    doc = put(DEFAULT, (*path, key), value) if path else {**DEFAULT, key: value}
    check("unknown key", dump(doc), dotted((*path, key)))


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
        return True
    except ValueError:
        return False


@SETTINGS
@given(
    st.sampled_from([("sla", "rto"), ("sla", "rpo")]),
    st.one_of(
        st.text(min_size=0, max_size=15),
        st.from_regex(r"-?[0-9]{1,4} ?(parsecs|y|ms|H|M|[smhdw]{2})", fullmatch=True),
    ),
)
def test_bad_durations(path: tuple[Any, ...], text: str) -> None:
    assume("$" not in text and not _is_duration(text))
    check("bad duration", dump(put(DEFAULT, path, text)), dotted(path))


@SETTINGS
@given(
    st.sampled_from(["backup", "verify", "cleanup", "check", "drill"]),
    st.one_of(
        st.text(max_size=20),
        st.lists(
            st.one_of(st.integers(-5, 99).map(str), st.sampled_from(["*", "*/0", "1-", "a", "?"])),
            min_size=1,
            max_size=7,
        ).map(" ".join),
    ),
)
def test_bad_cron(which: str, text: str) -> None:
    assume("$" not in text and _cron_problem(text) is not None)
    check("bad cron", dump(put(DEFAULT, ("schedules", which), text)), f"schedules.{which}")


@SETTINGS
@given(st.sampled_from(STR_LEAVES), st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True))
def test_missing_env_vars(path: tuple[Any, ...], var: str) -> None:
    name = f"PGB_FAULT_UNSET_{var}"
    assume(name not in os.environ)
    check("missing env var", dump(put(DEFAULT, path, "${" + name + "}")), dotted(path))


BROKEN = [
    "key: [unclosed",
    "\tindented: with a tab",
    "a: b: c",
    '"unterminated',
    "{",
    "*undefined_alias",
    "- item",
    "  : no key",
    "%YAML 9.9",
    "! !",
    "@reserved",
    "`backtick",
    "key: 'it''s' extra'",
]


@SETTINGS
@given(st.integers(0, 60), st.sampled_from(BROKEN), st.integers(0, 4))
def test_yaml_syntax_errors(line: int, fragment: str, indent: int) -> None:
    lines = (REPO / "backup.yaml").read_text().splitlines()
    lines.insert(min(line, len(lines)), " " * indent + fragment)
    text = "\n".join(lines) + "\n"
    try:
        yaml.safe_load(text)
        assume(False)
    except yaml.YAMLError:
        pass
    check("YAML syntax error", text.encode(), "line ")


@SETTINGS
@given(
    st.sampled_from(
        [
            (("targets", "platform", "connection", "password"), "{s}"),
            (("targets", "platform", "connection", "host"), "postgresql://u:{s}@db.internal/x"),
            (("targets", "platform", "connection", "dbname"), "postgres://app:{s}@h:5432/db"),
            (("targets", "platform", "connection", "options"), "password={s}"),
            (("repository", "secret_access_key"), "{s}"),
            (("repository", "password"), "{s}"),
            (("alerts",), {"webhooks": [{"name": "x", "url": "https://hooks.example/{s}"}]}),
            (("alerts",), {"smtp": {"host": "h", "from": "a", "to": "b", "password": "{s}"}}),
        ]
    ),
)
def test_literal_passwords(case: tuple[tuple[Any, ...], Any]) -> None:
    path, template = case
    value = (
        template.format(s=SECRET)
        if isinstance(template, str)
        else yaml.safe_load(yaml.safe_dump(template).replace("{s}", SECRET))
    )
    doc = put(DEFAULT, path, value)
    check("literal password", dump(doc), dotted(path))


HAND_WRITTEN: list[tuple[str, bytes, str | None]] = [
    ("empty file", b"", "(file)"),
    ("only comments", b"# nothing\n# here\n", "(file)"),
    ("top-level list", b"- a\n- b\n", "(file)"),
    ("top-level scalar", b"42\n", "(file)"),
    ("not UTF-8", b"version: 1\nrepository:\n  path: \xff\xfe\n", None),
    ("NUL byte", b"version: 1\x00\n", None),
    ("duplicate key", dump(DEFAULT) + b"version: 1\n", "version"),
    ("huge integer", dump(put(DEFAULT, ("compression", "level"), 10**100)), "compression.level"),
    ("negative retention", dump(put(DEFAULT, ("retention", "days"), -1)), "retention.days"),
    ("version 2", dump(put(DEFAULT, ("version",), 2)), "version"),
    ("no targets", dump(put(DEFAULT, ("targets",), {})), "targets"),
    ("null target", dump(put(DEFAULT, ("targets", "platform"), None)), "targets.platform"),
    ("integer key", dump(put(DEFAULT, ("retention", 7), 1)), "retention"),
    ("unterminated ${", dump(put(DEFAULT, ("repository", "path"), "${BACKUP_DIR")), None),
    ("empty ${}", dump(put(DEFAULT, ("repository", "path"), "${}")), None),
    ("bad compression", dump(put(DEFAULT, ("compression", "method"), "rar")), "compression"),
    ("zstd level 99", dump(put(DEFAULT, ("compression", "level"), 99)), "compression"),
    ("bad expect", dump(put(DEFAULT, ("drill", "checks", 0, "expect"), "> many")), "drill"),
    ("port as text", dump(put(DEFAULT, ("targets", "platform", "connection", "port"), "x")), None),
    ("1 MB string", dump(put(DEFAULT, ("sla", "rto"), "h" * (1 << 20))), "sla.rto"),
]


@pytest.mark.parametrize("name,text,path", HAND_WRITTEN, ids=[c[0] for c in HAND_WRITTEN])
def test_hand_written(name: str, text: bytes, path: str | None) -> None:
    check("hand-written edge case", text, path)


PATHOLOGICAL = {
    "deep nesting": b"version: 1\nrepository: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "alias bomb": b"a: &a [x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n".encode()
        for i in range(8)
    )
    + b"version: 1\n",
}


def run_cli(
    path: Path, task: str = "validate", timeout: float | None = None
) -> tuple[subprocess.CompletedProcess[str], str, bool]:
    """``pgbackup --config PATH TASK`` (quiet, private cache): (process, output, traceback?).

    Exit status 70 is the CLI's "internal error" (a bug that escaped as a one-liner).
    """
    env = {**os.environ, "XDG_CACHE_HOME": str(SCRATCH / "cache"), "PGBACKUP_QUIET": "1"}
    proc = subprocess.run(
        [PGBACKUP, "--config", str(path), task],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    return proc, out, "Traceback" in out or proc.returncode == 70


@pytest.mark.parametrize(
    "name",
    list(PATHOLOGICAL),
)
def test_pathological_yaml(name: str) -> None:
    """Through the real CLI with a time limit: a hang or a crash must not take the test down."""
    f = SCRATCH / f"{name.replace(' ', '-')}.yaml"
    f.write_bytes(PATHOLOGICAL[name])
    try:
        proc, out, tb = run_cli(f, timeout=10)
        ok = proc.returncode == 2 and not tb
        detail = f"exit {proc.returncode}: {out[-300:]}"
    except subprocess.TimeoutExpired:
        tb, ok, detail = False, False, "did not finish within 10s"
    counts.inputs("pathological YAML (CLI)", 1, rejected=int(ok), tracebacks=int(tb))
    assert ok, detail


@pytest.mark.timeout(240)
def test_cli_sample() -> None:
    """A sample of the corpus through the real CLI: exit 2, one clear message, no traceback."""
    sample = [(k, t, p) for k, t, p in CLI_SAMPLE]
    by_kind: dict[str, list[tuple[str, bytes, str]]] = {}
    for item in sample:
        by_kind.setdefault(item[0], []).append(item)
    chosen = [c for items in by_kind.values() for c in items[: counts.pick(3, 12)]]
    chosen += [(f"hand-written: {n}", t, p or "") for n, t, p in HAND_WRITTEN]
    problems = []
    for kind, text, path in chosen:
        f = SCRATCH / "cli.yaml"
        f.write_bytes(text)
        proc, out, tb = run_cli(f, timeout=60)
        ok = proc.returncode == 2 and not tb and out.lstrip().startswith("pgbackup")
        ok = ok and (not path or path in out) and SECRET not in out
        counts.inputs(
            "through the CLI (`pgbackup validate`)", 1, rejected=int(ok), tracebacks=int(tb)
        )
        if not ok:
            problems.append(f"{kind}: exit {proc.returncode}: {out[-600:]}")
    assert len(chosen) >= 20
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value", [99999999999, 1.0e18])
def test_huge_retention_is_refused_or_handled(value: Any) -> None:
    f = SCRATCH / "huge-retention.yaml"
    f.write_bytes(dump(put(DEFAULT, ("retention", "days"), value)))
    outcomes = []
    tb = False
    for task in ("validate", "plan"):
        proc, _out, task_tb = run_cli(f, task)
        tb = tb or task_tb
        outcomes.append((task, proc.returncode, proc.stdout[-300:] + proc.stderr[-300:]))
        if proc.returncode != 0:
            break
    counts.inputs("huge retention values", 1, rejected=int(not tb), tracebacks=int(tb))
    assert not tb, outcomes
