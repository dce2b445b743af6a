"""The policy file (``backup.yaml``): find it, load it, interpolate it, validate it.

The entry points the rest of pgbackup calls (``find_config``, ``load_policy``,
``load_policy_fast``, ``validate_file``) live here and run the other modules of this
package in order.

Loading runs in this order:

1. YAML is parsed (YAML 1.2 booleans: only ``true``/``false``, so ``on:`` stays a key;
   duplicate keys are reported).
2. Keys that look like secrets and values holding passwords are rejected on the raw
   document: a password never belongs in this file.
3. ``${VAR}`` / ``${VAR:-default}`` are expanded in every string scalar (``$$`` is a
   literal ``$``). A scalar that is exactly one ``${...}`` becomes an integer (or a
   boolean) where the schema expects one; when it expands to an empty string, the key
   is treated as not set.
4. The JSON Schema (``schema/backup.schema.json``) and the semantic checks (durations,
   cron expressions, ranges, uniqueness, ...) run; every problem is collected and
   reported at once, each with its YAML path (``targets.platform.connection.port``,
   ``uploads[0].name``).
5. Typed, immutable objects are built; relative paths are made relative to the file.

Each step has its module: 1 ``yamlfile``, 2 ``secrets``, 3 ``interpolation``,
4 ``validation`` (with ``schema`` and ``parsers``), 5 ``build`` into ``records``.

``load_policy_fast`` is the entry point for ``wal-push``/``wal-fetch``: when a cache
says this exact content (and the environment variables it references) was validated
before, it also holds the parsed document, so steps 1, 2 and 4 are skipped and neither
PyYAML, jsonschema nor croniter is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgbackup.errors import ConfigError
from pgbackup.policy.build import _build
from pgbackup.policy.cache import _cache_hit, _cache_key, _cache_store
from pgbackup.policy.interpolation import _Interpolator
from pgbackup.policy.records import Policy
from pgbackup.policy.schema import _load_schema
from pgbackup.policy.validation import _describe, _problems
from pgbackup.policy.yamlfile import _parse_yaml

#: Where the policy is looked for when no ``--config`` is given, in order. Entries are
#: resolved when :func:`find_config` runs (see :func:`config_search_path`).
CONFIG_SEARCH_PATH: tuple[str, ...] = (
    "$PGBACKUP_CONFIG",
    "./backup.yaml",
    "/etc/pgbackup/backup.yaml",
)


# --------------------------------------------------------------------------- finding


def config_search_path() -> list[Path]:
    """:data:`CONFIG_SEARCH_PATH` resolved now (an unset $PGBACKUP_CONFIG is skipped)."""
    out: list[Path] = []
    for entry in CONFIG_SEARCH_PATH:
        if entry.startswith("$"):
            value = os.environ.get(entry[1:])
            if value:
                out.append(Path(value).expanduser())
        else:
            out.append(Path(entry))
    return out


def find_config(explicit: str | Path | None = None) -> Path:
    """The policy file to use, as an absolute path.

    ``explicit`` (``--config``) wins; then ``$PGBACKUP_CONFIG``; then ``./backup.yaml``
    and ``/etc/pgbackup/backup.yaml``. A file named explicitly (by flag or variable) must
    exist: pgbackup never falls back to another policy than the one asked for.
    """
    if explicit is not None and str(explicit) != "":
        p = Path(explicit).expanduser()
        if p.is_file():
            return p.resolve()
        what = "is a directory" if p.is_dir() else "does not exist"
        raise ConfigError(
            f"config file {p} (from --config) {what}",
            hint="check the --config path",
        )
    env = os.environ.get("PGBACKUP_CONFIG")
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p.resolve()
        raise ConfigError(
            f"config file {p} (from $PGBACKUP_CONFIG) does not exist",
            hint="fix or unset PGBACKUP_CONFIG",
        )
    tried: list[str] = ["$PGBACKUP_CONFIG (not set)"]
    for candidate in config_search_path():
        if candidate.is_file():
            return candidate.resolve()
        tried.append(str(candidate.absolute() if not candidate.is_absolute() else candidate))
    raise ConfigError(
        "no policy file found; looked in:\n" + "\n".join(f"    {t}" for t in tried),
        hint="pass --config PATH, set PGBACKUP_CONFIG, or create ./backup.yaml",
    )


# --------------------------------------------------------------------------- loading


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read policy file {path}: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from None


def _analyse(
    path: Path,
    data: bytes,
    *,
    validate: bool,
    env: Mapping[str, str] | None = None,
    optional: tuple[str, ...] = (),
) -> tuple[Any, dict[str, Any] | None, list[tuple[str, str]]]:
    """(parsed document, interpolated document, problems) of the file's bytes."""
    raw, problems = _parse_yaml(data, path)
    doc, more = _analyse_tree(raw, validate=validate, env=env, optional=optional)
    return raw, doc, problems + more


def _analyse_tree(
    raw: Any,
    *,
    validate: bool,
    env: Mapping[str, str] | None = None,
    optional: tuple[str, ...] = (),
) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """(interpolated document, problems) of a parsed document. None when unusable.

    Top-level sections named in ``optional`` are dropped, instead of failing, when their
    environment variables cannot be resolved: wal-push runs in the server's environment,
    which need not carry, say, the webhook URL of an alert.
    """
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    if raw is None:
        return None, [("(file)", "the file is empty; start from the shipped backup.yaml")]
    if not isinstance(raw, dict):
        return None, [
            ("(file)", f"expected a mapping of keys at the top level, got {_describe(raw)}")
        ]
    interp = _Interpolator(env, _load_schema())
    doc = interp.node(raw, "", _load_schema())
    if optional and interp.problems:
        broken = {p.split(".", 1)[0].split("[", 1)[0] for p, _m in interp.problems}
        if broken <= set(optional):
            raw = {k: v for k, v in raw.items() if k not in broken}
            interp = _Interpolator(env, _load_schema())
            doc = interp.node(raw, "", _load_schema())
    if validate:
        problems += _problems(raw, doc, interp)
    else:
        problems += interp.problems
    return doc, problems


def _fail(path: Path, problems: list[tuple[str, str]]) -> ConfigError:
    n = len(problems)
    return ConfigError(
        f"{path}: {n} problem{'s' if n != 1 else ''}",
        problems=problems,
        hint="fix the keys listed above (paths are YAML paths), then run: invoke validate",
    )


def _policy(path: Path, doc: dict[str, Any] | None, problems: list[tuple[str, str]]) -> Policy:
    """The policy of an analysed document; every problem is raised at once."""
    if problems or doc is None:
        raise _fail(path, problems)
    try:
        return _build(path, doc)
    except ConfigError:
        raise
    except Exception as exc:  # only reachable with validate=False on a bad file
        raise ConfigError(
            f"{path}: the policy is invalid ({type(exc).__name__}: {exc})",
            hint="run: invoke validate",
        ) from None


def _from_tree(path: Path, raw: Any, *, validate: bool, optional: tuple[str, ...]) -> Policy:
    doc, problems = _analyse_tree(raw, validate=validate, optional=optional)
    return _policy(path, doc, problems)


def load_policy(path: str | Path | None = None, *, validate: bool = True) -> Policy:
    """Find (see :func:`find_config`), load, interpolate and (by default) validate."""
    p = find_config(path)
    data = _read(p)
    raw, doc, problems = _analyse(p, data, validate=validate)
    policy = _policy(p, doc, problems)
    if validate:
        _cache_store(_cache_key(p, data, os.environ), raw)
    return policy


def load_policy_fast(path: str | Path | None = None, *, for_wal: bool = True) -> Policy:
    """:func:`load_policy` for hot paths (wal-push, wal-fetch).

    When this exact content, with the current values of the environment variables it
    references, was validated before, its parsed document comes from a cache (in
    ``$XDG_CACHE_HOME/pgbackup`` or ``~/.cache/pgbackup``) and is only interpolated:
    neither PyYAML, jsonschema nor croniter is imported. Otherwise it is validated fully.
    """
    p = find_config(path)
    data = _read(p)
    key = _cache_key(p, data, os.environ)
    # Not needed to push or fetch WAL; every other command needs them whole.
    optional = ("alerts", "uploads", "drill") if for_wal else ()
    raw = _cache_hit(key)
    if raw is not None:
        return _from_tree(p, raw, validate=False, optional=optional)
    raw, doc, problems = _analyse(p, data, validate=True, optional=optional)
    policy = _policy(p, doc, problems)
    _cache_store(key, raw)
    return policy


def validate_file(path: str | Path) -> list[tuple[str, str]]:
    """Every problem in the policy at ``path`` as (YAML path, message); [] when valid.

    A file that cannot be found or read raises :class:`ConfigError`.
    """
    p = find_config(path)
    data = _read(p)
    try:
        raw, doc, problems = _analyse(p, data, validate=True)
    except ConfigError as exc:  # YAML syntax, encoding
        return exc.problems or [("(file)", exc.message)]
    if not problems and doc is not None:
        try:
            _build(p, doc)
        except Exception as exc:  # pragma: no cover - schema and builder disagree
            return [("(file)", f"internal: cannot build the policy ({exc})")]
        _cache_store(_cache_key(p, data, os.environ), raw)
    return problems
