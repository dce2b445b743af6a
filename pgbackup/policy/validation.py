"""Every problem in a policy, each with its YAML path and a plain message, at once.

The JSON Schema runs first (jsonschema's errors are rewritten as plain sentences), then
the semantic checks the schema cannot express (durations, cron expressions, compression
levels, sandbox versus host, unique names, drill expectations); interpolation and secret
problems are merged in and the list is sorted in document order. jsonschema is imported
only here, inside ``_schema_problems``.
"""

from __future__ import annotations

from typing import Any

from pgbackup.policy.interpolation import _Interpolator
from pgbackup.policy.parsers import _cron_problem, parse_duration, parse_expect
from pgbackup.policy.schema import _join, _load_schema, _walk
from pgbackup.policy.secrets import _secret_problems

_LEVEL_RANGES = {"zstd": (1, 19), "gzip": (1, 9), "lz4": (0, 16)}
_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _plain(error: Any, doc: Any) -> tuple[str, str]:
    """(YAML path, plain message) for one jsonschema ValidationError."""
    path = ""
    for part in error.absolute_path:
        path = _join(path, part)
    validator = error.validator
    schema_path = list(error.relative_schema_path)
    value = error.instance
    if "propertyNames" in schema_path:
        where = _join(path, value) if isinstance(value, str) else path
        if validator == "enum":
            allowed = ", ".join(error.validator_value)
            kind = _kind_at(doc, error.absolute_path)
            return where, f"key {value!r} is not used with kind {kind} (allowed: {allowed})"
        if path == "targets":
            return where, (
                f"invalid target name {value!r}: start with a lowercase letter, then up to 62 "
                "lowercase letters, digits, _ or -"
            )
        return where, f"invalid key {value!r}"
    if validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        extras = [k for k in value if k not in error.schema.get("properties", {})]
        key = extras[0] if extras else "?"
        # one problem per unknown key is produced by _schema_problems
        return _join(path, key), f"unknown key {key!r} (allowed: {allowed})"
    if validator == "required":
        missing = (
            error.message.split("'")[1] if "'" in error.message else str(error.validator_value)
        )
        msg = f"missing required key {missing!r}"
        if "then" in schema_path and isinstance(value, dict):
            msg += f" (required when kind is {value.get('kind', 'posix')})"
        return _join(path, missing), msg
    if validator == "type":
        want = error.validator_value
        wants = [want] if isinstance(want, str) else list(want)
        names = " or ".join(_TYPE_NAMES.get(w, w) for w in wants)
        return path, f"expected {names}, got {_describe(value)}"
    if validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return path, f"must be one of {allowed} (got {_describe(value)})"
    if validator == "const":
        return path, f"must be {error.validator_value!r} (got {_describe(value)})"
    if validator == "minimum":
        return path, f"must be at least {error.validator_value} (got {value})"
    if validator == "maximum":
        return path, f"must be at most {error.validator_value} (got {value})"
    if validator == "minLength":
        return path, "must not be empty"
    if validator == "minItems":
        return path, f"must have at least {error.validator_value} item(s)"
    if validator == "minProperties":
        if path == "targets":
            return path, "declare at least one target"
        return path, f"must have at least {error.validator_value} key(s)"
    if validator == "uniqueItems":
        return path, "must not contain duplicates"
    if validator == "pattern":
        desc = error.schema.get("description", "")
        if "duration" in desc:
            return path, (
                f"invalid duration {_describe(value)}: use an integer and a unit s, m, h, d or w, "
                "e.g. 30s, 5m, 1h30m"
            )
        return path, f"invalid value {_describe(value)}" + (f": {desc}" if desc else "")
    return path, error.message


def _kind_at(doc: Any, parts: Any) -> str:
    node = doc
    for part in parts:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return "posix"
    kind = node.get("kind", "posix") if isinstance(node, dict) else "posix"
    return str(kind)


def _schema_problems(doc: Any) -> list[tuple[str, str]]:
    from jsonschema import Draft202012Validator  # lazy: wal-push must not import it

    schema = _load_schema()
    validator = Draft202012Validator(schema)
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for error in validator.iter_errors(doc):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            props = error.schema.get("properties", {})
            allowed = ", ".join(props)
            base = ""
            for part in error.absolute_path:
                base = _join(base, part)
            for key in error.instance:
                if key not in props:
                    p = _join(base, key)
                    if p not in seen:
                        seen.add(p)
                        problems.append((p, f"unknown key {key!r} (allowed: {allowed})"))
            continue
        path, msg = _plain(error, doc)
        if path in seen:
            continue
        seen.add(path)
        problems.append((path, msg))
    problems.sort(key=lambda item: item[0])
    return problems


def _semantic_problems(doc: Any, skip: set[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def add(path: str, msg: str) -> None:
        if path not in skip:
            problems.append((path, msg))

    if not isinstance(doc, dict):
        return problems
    sla = doc.get("sla")
    if isinstance(sla, dict):
        for key in ("rto", "rpo"):
            value = sla.get(key)
            if isinstance(value, str):
                try:
                    parse_duration(value)
                except ValueError as exc:
                    add(f"sla.{key}", str(exc))
    schedules = doc.get("schedules")
    if isinstance(schedules, dict):
        for key, expr in schedules.items():
            problem = _cron_problem(expr)
            if problem:
                add(f"schedules.{key}", problem)
        if "incremental" in schedules and "backup" not in schedules:
            add(
                "schedules.incremental",
                "incremental backups build on a full backup: schedules.backup must say when "
                "full backups are taken",
            )
    compression = doc.get("compression")
    if isinstance(compression, dict):
        method = compression.get("method", "zstd")
        level = compression.get("level", 3)
        rng = _LEVEL_RANGES.get(method) if isinstance(method, str) else None
        if rng and isinstance(level, int) and not isinstance(level, bool):
            lo, hi = rng
            if not lo <= level <= hi:
                add("compression.level", f"level {level} is out of range for {method} ({lo}-{hi})")
        if compression.get("workers") and method != "zstd":
            add(
                "compression.workers",
                f"workers apply to zstd only (PostgreSQL compresses {method} on one thread); "
                "remove the key or set method: zstd",
            )
    targets = doc.get("targets")
    if isinstance(targets, dict):
        for name, target in targets.items():
            if not isinstance(target, dict):
                continue
            conn = target.get("connection")
            if isinstance(target.get("sandbox"), dict) and isinstance(conn, dict):
                for key in ("host", "port"):
                    if key in conn:
                        add(
                            f"targets.{name}.connection.{key}",
                            f"cannot be set together with sandbox: a sandbox is a local cluster "
                            f"pgbackup starts itself (set sandbox.port, or remove sandbox to "
                            f"back up the server at connection.{key})",
                        )
    uploads = doc.get("uploads")
    if isinstance(uploads, list):
        first: dict[str, int] = {}
        for i, upload in enumerate(uploads):
            if isinstance(upload, dict) and isinstance(upload.get("name"), str):
                name = upload["name"]
                if name in first:
                    add(
                        f"uploads[{i}].name",
                        f"duplicate upload name {name!r} (already used by uploads[{first[name]}])",
                    )
                else:
                    first[name] = i
    alerts = doc.get("alerts")
    if isinstance(alerts, dict) and isinstance(alerts.get("webhooks"), list):
        first = {}
        for i, hook in enumerate(alerts["webhooks"]):
            if isinstance(hook, dict) and isinstance(hook.get("name"), str):
                name = hook["name"]
                if name in first:
                    add(f"alerts.webhooks[{i}].name", f"duplicate webhook name {name!r}")
                else:
                    first[name] = i
    drill = doc.get("drill")
    if isinstance(drill, dict) and isinstance(drill.get("checks"), list):
        for i, check in enumerate(drill["checks"]):
            if isinstance(check, dict) and "expect" in check:
                expect = check["expect"]
                if isinstance(expect, str):
                    try:
                        parse_expect(expect)
                    except ValueError as exc:
                        add(f"drill.checks[{i}].expect", str(exc))
    return problems


def _problems(raw: Any, doc: Any, interp: _Interpolator) -> list[tuple[str, str]]:
    problems = list(interp.problems)
    problems += _secret_problems(raw, doc)
    schema_problems = _schema_problems(doc)
    for i, (path, msg) in enumerate(schema_problems):
        if path in interp.emptied and msg.startswith("missing required key"):
            schema_problems[i] = (
                path,
                f"required, but {interp.emptied[path]} expanded to an empty string",
            )
    reported = {p for p, _ in problems}
    problems += [(p, m) for p, m in schema_problems if p not in reported]
    problems += _semantic_problems(doc, {p for p, _ in problems})
    # unique, in the order of the document (a missing key right after its parent)
    out: list[tuple[str, str]] = []
    for item in problems:
        if item not in out:
            out.append(item)
    order = {path: i for i, (path, _k, _v) in enumerate(_walk(raw))}
    return sorted(out, key=lambda item: _document_position(order, item[0]))


def _document_position(order: dict[str, int], path: str) -> tuple[int, int, str]:
    probe, exact = path, 0
    while probe:
        if probe in order:
            return order[probe], exact, path
        cut = max(probe.rfind("."), probe.rfind("["))
        probe, exact = (probe[:cut] if cut > 0 else ""), 1
    return -1, exact, path
