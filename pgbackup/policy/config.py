"""The policy file (``backup.yaml``): find it, load it, interpolate it, validate it.

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

``load_policy_fast`` is the entry point for ``wal-push``/``wal-fetch``: when a cache
says this exact content (and the environment variables it references) was validated
before, it also holds the parsed document, so steps 1, 2 and 4 are skipped and neither
PyYAML, jsonschema nor croniter is imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pgbackup.errors import ConfigError

__all__ = [
    "CONFIG_SEARCH_PATH",
    "Compression",
    "DrillCheck",
    "Encryption",
    "Policy",
    "Retention",
    "Sandbox",
    "Sla",
    "Target",
    "config_search_path",
    "find_config",
    "load_policy",
    "load_policy_fast",
    "parse_duration",
    "parse_expect",
    "validate_file",
]

#: Where the policy is looked for when no ``--config`` is given, in order. Entries are
#: resolved when :func:`find_config` runs (see :func:`config_search_path`).
CONFIG_SEARCH_PATH: tuple[str, ...] = (
    "$PGBACKUP_CONFIG",
    "./backup.yaml",
    "/etc/pgbackup/backup.yaml",
)


def _schema_path() -> Path:
    """The policy schema: inside an installed package (``pgbackup/schema/``, mapped there
    from the top-level ``schema/`` by setup.py), else in the source tree (editable installs)."""
    here = Path(__file__).resolve().parents[1]  # pgbackup/
    packaged = here / "schema" / "backup.schema.json"
    return packaged if packaged.is_file() else here.parent / "schema" / "backup.schema.json"


SCHEMA_PATH = _schema_path()

_SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "api_key", "access_key", "secret_access_key"}
)
_SECRET_HINT = (
    "never write passwords in the policy file: use the PGPASSWORD environment variable, "
    "a passfile (connection.passfile) or ~/.pgpass; for SMTP name the variable holding "
    "the password with password_env; cloud credentials come from the SDK's own chain"
)


class _Pattern:
    """A regular expression compiled on first use.

    wal-push imports this module once per segment; compiling every pattern at import
    time cost it milliseconds for checks it never runs on a validated, cached policy.
    """

    __slots__ = ("_args", "_rx")

    def __init__(self, pattern: str | bytes, flags: int = 0) -> None:
        self._args = (pattern, flags)
        self._rx: re.Pattern[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if self._rx is None:
            self._rx = re.compile(*self._args)
        return getattr(self._rx, name)


_URI_WITH_PASSWORD = _Pattern(r"postgres(?:ql)?://[^/@\s:?#]*:[^@\s/?#]*@", re.IGNORECASE)
_PASSWORD_PARAM = _Pattern(r"(?:^|[\s?&;])password\s*=", re.IGNORECASE)
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_key", "connection_string")
_ACCOUNT_KEY = _Pattern(r"(?:AccountKey|SharedAccessSignature)\s*=", re.IGNORECASE)
_LOCAL_HTTP = _Pattern(r"^http://(?:localhost|127\.[0-9.]+|\[::1\])(?::[0-9]+)?(?:/|$)", re.I)

_DURATION_PART = _Pattern(r"([0-9]+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EXPECT = _Pattern(r"^\s*(==|!=|>=|<=|>|<|=)\s*(.*?)\s*$")
_NUMBER = _Pattern(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_INT = _Pattern(r"^\s*[+-]?[0-9]+\s*$")
_VAR_NAME = _Pattern(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCED = _Pattern(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
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


# --------------------------------------------------------------------------- objects
# Immutable records. NamedTuple, not dataclasses: wal-push builds them once per segment,
# and importing dataclasses (with inspect) plus building eight classes cost it ~8 ms.


class Compression(NamedTuple):
    method: str
    level: int
    workers: int = 0  # zstd threads on the server for base backups (0: PostgreSQL's default)


class Encryption(NamedTuple):
    method: str
    recipients_file: Path
    identity_file: Path | None


class Sandbox(NamedTuple):
    path: Path
    port: int  # 0 = choose a free one
    scale: int


class Target(NamedTuple):
    name: str
    connection: dict[str, Any]  # libpq keywords, only those set
    sandbox: Sandbox | None
    pg_bin_dir: Path | None
    max_rate: str | None = None  # pg_basebackup --max-rate: spare a busy server's disks
    wal_receiver: dict[str, Any] | None = None  # wal-receive: slot, synchronous, directory


class Retention(NamedTuple):
    days: int
    weekly: int
    monthly: int
    min_backups: int


class Sla(NamedTuple):
    rto: int | None  # seconds
    rpo: int | None  # seconds


class DrillCheck(NamedTuple):
    name: str
    sql: str
    expect: str
    dbname: str | None


class Policy(NamedTuple):
    path: Path
    repository: dict[str, Any]
    compression: Compression
    encryption: Encryption | None
    targets: dict[str, Target]
    retention: Retention
    schedules: dict[str, str]
    sla: Sla
    uploads: list[dict[str, Any]]
    alerts: dict[str, Any]
    drill_checks: list[DrillCheck]
    drill_port: int
    log_file: Path | None
    log_level: str
    drill_image: str | None = None  # drill --docker's image; None: pgbackup:<version>

    def target(self, name: str | None) -> Target:
        """The target called ``name``; with ``None``, the only target there is."""
        names = ", ".join(self.targets) or "(none)"
        if name is None:
            if len(self.targets) == 1:
                return next(iter(self.targets.values()))
            raise ConfigError(
                f"{self.path} declares several targets ({names}); say which one",
                hint="pass --target NAME",
            )
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"no target {name!r} in {self.path} (targets: {names})",
                hint="pass --target with one of the names above, or declare it under targets:",
            ) from None


# --------------------------------------------------------------------------- small parsers


def parse_duration(text: str) -> int:
    """Seconds in ``text``: integers with units s, m, h, d, w (``30s``, ``5m``, ``1h30m``).

    Raises ValueError for anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string like 5m or 1h30m, not {text!r}")
    s = text.strip()
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(
            f"invalid duration {text!r}: use an integer and a unit s, m, h, d or w, e.g. 30s, 5m, 1h30m"
        )
    return total


def parse_expect(text: str) -> tuple[str, float | str]:
    """Split a drill ``expect`` into (operator, operand).

    ``"> 0"`` -> ``(">", 0.0)``; ``"== 3"`` -> ``("==", 3.0)``; a bare literal such as
    ``"ok"`` or ``"42"`` -> ``("==", "ok")`` / ``("==", "42")`` (compared as text; a bare
    number is also equal to a numeric result of the same value). ValueError when an
    operator is not followed by a number.
    """
    if not isinstance(text, str):
        raise ValueError(f"expect must be a string, not {text!r}")
    m = _EXPECT.match(text)
    if m is None:
        if not text.strip():
            raise ValueError("expect is empty: write e.g. '> 0', '== 3' or a literal value")
        return "==", text.strip()
    op, operand = m.group(1), m.group(2)
    if op == "=":
        op = "=="
    if not _NUMBER.match(operand):
        raise ValueError(
            f"invalid expect {text!r}: an operator (==, !=, >, >=, <, <=) must be followed by a number"
        )
    return op, float(operand)


def _cron_problem(expr: Any) -> str | None:
    if not isinstance(expr, str):
        return None  # the schema reports the type
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() in _CRON_MACROS:
            return None
        return f"unknown cron macro {text!r} (allowed: {', '.join(sorted(_CRON_MACROS))})"
    fields = text.split()
    if len(fields) != 5:
        return (
            f"invalid cron expression {expr!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    from croniter import croniter  # lazy: not needed by wal-push

    try:
        ok = croniter.is_valid(text)
    except Exception:  # pragma: no cover - croniter raising instead of returning False
        ok = False
    return None if ok else f"invalid cron expression {expr!r}"


# --------------------------------------------------------------------------- YAML


def _make_loader() -> type:
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc,valid-type]
        """Safe loader: YAML 1.2 booleans, string keys, duplicate keys recorded."""

    resolvers = {
        ch: [(tag, rx) for tag, rx in entries if tag != "tag:yaml.org,2002:bool"]
        for ch, entries in base.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[str, Any]:
        loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key = "" if key is None else str(key) if not isinstance(key, str) else key
            if key in result:
                line = key_node.start_mark.line + 1
                loader.pgbackup_duplicates.append((key, line))
            result[key] = loader.construct_object(value_node, deep=True)
        return result

    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return Loader


_loader_class: Any = None


def _loader(text: str) -> Any:
    """A loader for ``text`` (the class is built on first use: wal-push on a cached
    policy never imports PyYAML)."""
    global _loader_class
    if _loader_class is None:
        _loader_class = _make_loader()
    return _loader_class(text)


MAX_NODES = 100_000  # after expanding aliases: a policy has a few hundred
MAX_DEPTH = 64


def _shape_problem(root: Any) -> str | None:
    """Refuse YAML that would explode (alias bombs) or recurse too deep, before building it.

    Sizes are counted on the node graph with aliases expanded (memoised, so a bomb is
    measured without being built).
    """
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.MappingNode):
            return [c for pair in node.value for c in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_NODES:
                return f"more than {MAX_NODES} values once its aliases are expanded"
            continue
        if key in sizes:
            continue
        if key in in_progress:
            return "a recursive alias (an anchor that contains itself)"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        in_progress.add(key)
        stack.append((node, depth, True))
        for child in children(node):
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))
    return None


def _parse_yaml(data: bytes, path: Path) -> tuple[Any, list[tuple[str, str]]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc})") from None
    import yaml

    loader = _loader(text)
    loader.pgbackup_duplicates = []
    try:
        node = loader.get_single_node()
        shape = _shape_problem(node) if node is not None else None
        if shape:
            raise ConfigError(
                f"{path} is not a policy: {shape}",
                problems=[("(file)", shape)],
                hint="a backup.yaml is a small mapping; remove the deep nesting or the alias expansion",
            )
        doc = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise ConfigError(
            f"{path} is not a policy: nested too deeply to read",
            problems=[("(file)", "nested too deeply to read")],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        hint = "fix the YAML syntax"
        if context and "flow" in context:
            hint = 'inside {...} or [...] a ${VAR} value must be quoted: key: "${VAR}" (or use block style)'
        raise ConfigError(f"{path} is not valid YAML", problems=[(where, msg)], hint=hint) from None
    finally:
        loader.dispose()
    problems = [
        (key, f"duplicate key {key!r} (line {line}); each key may appear once")
        for key, line in loader.pgbackup_duplicates
    ]
    return doc, problems


# --------------------------------------------------------------------------- paths


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield (path, key, value) for every mapping entry and list item, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            p = _join(path, key)
            yield p, key, value
            yield from _walk(value, p)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            p = _join(path, i)
            yield p, i, value
            yield from _walk(value, p)


# --------------------------------------------------------------------------- schema helpers


_schema_bytes_cache: bytes | None = None
_schema_cache: dict[str, Any] | None = None


def _schema_error(exc: Exception) -> ConfigError:
    return ConfigError(
        f"cannot read the policy schema {SCHEMA_PATH}: {exc}",
        hint="reinstall pgbackup: the schema ships with it",
    )


def _schema_bytes() -> bytes:
    """The schema file, read once per process (the cache key hashes it, then it is parsed)."""
    global _schema_bytes_cache
    if _schema_bytes_cache is None:
        try:
            _schema_bytes_cache = SCHEMA_PATH.read_bytes()
        except OSError as exc:
            raise _schema_error(exc) from None
    return _schema_bytes_cache


def _load_schema() -> dict[str, Any]:
    global _schema_cache
    if _schema_cache is None:
        try:
            _schema_cache = json.loads(_schema_bytes().decode("utf-8"))
        except ValueError as exc:
            raise _schema_error(exc) from None
    return _schema_cache


def _deref(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node if isinstance(node, dict) else {}


def _child_schema(schema: dict[str, Any], node: dict[str, Any], key: str | int) -> dict[str, Any]:
    if isinstance(key, int):
        items = node.get("items")
        return _deref(schema, items) if isinstance(items, dict) else {}
    props = node.get("properties", {})
    if key in props:
        return _deref(schema, props[key])
    extra = node.get("additionalProperties")
    return _deref(schema, extra) if isinstance(extra, dict) else {}


def _types(node: dict[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    return set(t) if isinstance(t, list) else set()


# --------------------------------------------------------------------------- interpolation


class _Interpolator:
    def __init__(self, env: Mapping[str, str], schema: dict[str, Any]):
        self.env = env
        self.schema = schema
        self.problems: list[tuple[str, str]] = []
        self.emptied: dict[str, str] = {}  # path -> raw text that expanded to ""

    # -- string expansion -------------------------------------------------------
    def expand(self, text: str, path: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "$" and text.startswith("$$", i):
                out.append("$")
                i += 2
            elif c == "$" and text.startswith("${", i):
                value, i = self._reference(text, i, path)
                out.append(value)
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _reference(self, text: str, start: int, path: str) -> tuple[str, int]:
        """Expand the ``${...}`` at ``start``; return (value, index after it)."""
        m = _VAR_NAME.match(text, start + 2)
        end = self._closing_brace(text, start + 2)
        if end is None:
            self.problems.append(
                (path, f"unterminated '${{' in {text!r}; write $$ for a literal $")
            )
            return "", len(text)
        if m is None:
            self.problems.append(
                (
                    path,
                    f"invalid reference {text[start : end + 1]!r}: expected ${{NAME}} or ${{NAME:-default}}",
                )
            )
            return "", end + 1
        name, after = m.group(0), m.end()
        if after == end:
            default = None
        elif text.startswith(":-", after):
            default = text[after + 2 : end]
        else:
            self.problems.append(
                (
                    path,
                    f"invalid reference {text[start : end + 1]!r}: expected ${{NAME}} or ${{NAME:-default}}",
                )
            )
            return "", end + 1
        value = self.env.get(name)
        if default is not None:
            if not value:
                value = self.expand(default, path)
        elif value is None:
            self.problems.append(
                (
                    path,
                    f"environment variable {name} is not set (referenced as ${{{name}}}); "
                    f"set it, or give a default: ${{{name}:-value}}",
                )
            )
            value = ""
        return value, end + 1

    @staticmethod
    def _closing_brace(text: str, i: int) -> int | None:
        depth = 0
        n = len(text)
        while i < n:
            if text.startswith("$$", i):
                i += 2
                continue
            if text.startswith("${", i):
                depth += 1
                i += 2
                continue
            if text[i] == "}":
                if depth == 0:
                    return i
                depth -= 1
            i += 1
        return None

    def _whole_reference(self, text: str) -> bool:
        if not text.startswith("${"):
            return False
        end = self._closing_brace(text, 2)
        return end == len(text) - 1

    # -- tree walk ---------------------------------------------------------------
    _REMOVE = object()

    def node(self, value: Any, path: str, schema_node: dict[str, Any]) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, child in value.items():
                sub = _child_schema(self.schema, schema_node, key)
                new = self.node(child, _join(path, key), sub)
                if new is not self._REMOVE:
                    out[key] = new
            return out
        if isinstance(value, list):
            items: list[Any] = []
            for i, child in enumerate(value):
                sub = _child_schema(self.schema, schema_node, i)
                new = self.node(child, _join(path, i), sub)
                if new is not self._REMOVE:
                    items.append(new)
            return items
        if isinstance(value, str) and "$" in value:
            expanded = self.expand(value, path)
            if "${" in value and expanded == "":
                self.emptied[path] = value
                return self._REMOVE
            if self._whole_reference(value):
                types = _types(schema_node)
                if "integer" in types and _INT.match(expanded):
                    return int(expanded)
                if "boolean" in types and expanded.strip().lower() in ("true", "false"):
                    return expanded.strip().lower() == "true"
            return expanded
        if isinstance(value, float) and value.is_integer() and "integer" in _types(schema_node):
            return int(value)
        return value


def _referenced_vars(data: bytes) -> list[str]:
    return sorted({m.group(1).decode() for m in _REFERENCED.finditer(data)})


# --------------------------------------------------------------------------- secrets


def _secret_problems(raw: Any, doc: Any) -> list[tuple[str, str]]:
    """Passwords in the file (raw) or in values it expands to (doc). Never echo them."""
    problems: list[tuple[str, str]] = []
    for path, key, value in _walk(raw):
        if isinstance(key, str) and _is_secret_key(key):
            problems.append(
                (path, f"a secret ({key!r}) must not be written in the policy file; {_SECRET_HINT}")
            )
            continue
        if isinstance(value, str):
            if _has_password(path, value):
                problems.append(
                    (
                        path,
                        f"this value contains a password (a connection URI with a password, password= or AccountKey=); {_SECRET_HINT}",
                    )
                )
            elif _is_webhook_url(path) and _is_literal_remote_url(value):
                problems.append(
                    (
                        path,
                        "a webhook URL is a secret and must not be written in the policy file: "
                        "put it in an environment variable and write url: ${SLACK_WEBHOOK_URL} (any name)",
                    )
                )
    seen = {p for p, _ in problems}
    for path, _key, value in _walk(doc):
        if path in seen or not isinstance(value, str):
            continue
        if _has_password(path, value):
            problems.append(
                (
                    path,
                    "this value expands to a connection string with a password; "
                    "give host, port, user and dbname separately and the password through "
                    "PGPASSWORD, a passfile or ~/.pgpass",
                )
            )
    return problems


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def _has_password(path: str, value: str) -> bool:
    if _URI_WITH_PASSWORD.search(value) or _ACCOUNT_KEY.search(value):
        return True
    # "password = ..." is a libpq keyword, but also plain SQL in a drill check
    is_sql = bool(re.fullmatch(r"drill\.checks\[[0-9]+\]\.sql", path))
    return not is_sql and bool(_PASSWORD_PARAM.search(value))


def _is_literal_remote_url(value: str) -> bool:
    if "${" in value:
        return False
    lower = value.lower()
    return lower.startswith("https://") or (
        lower.startswith("http://") and not _LOCAL_HTTP.match(value)
    )


def _is_webhook_url(path: str) -> bool:
    return bool(re.fullmatch(r"alerts\.webhooks\[[0-9]+\]\.url", path))


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- building


def _abs(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _storage(base: Path, spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    out.setdefault("kind", "posix")
    if out["kind"] == "posix" and "path" in out:
        out["path"] = _abs(base, out["path"])
    return out


def _wal_receiver(base: Path, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A target's ``wal_receiver`` block with its defaults (None: no receiver)."""
    if spec is None:
        return None
    out = {"slot": str(spec["slot"]), "synchronous": bool(spec.get("synchronous", False))}
    if spec.get("directory"):
        out["directory"] = str(_abs(base, spec["directory"]))
    return out


def _build(path: Path, doc: dict[str, Any]) -> Policy:
    base = path.parent
    comp = doc.get("compression") or {}
    enc = doc.get("encryption")
    encryption = None
    if enc is not None:
        identity = enc.get("identity_file")
        encryption = Encryption(
            method=enc.get("method", "age"),
            recipients_file=_abs(base, enc["recipients_file"]),
            identity_file=_abs(base, identity) if identity else None,
        )
    targets: dict[str, Target] = {}
    for name, spec in (doc.get("targets") or {}).items():
        spec = spec or {}
        conn = dict(spec.get("connection") or {})
        if "passfile" in conn:
            conn["passfile"] = str(_abs(base, conn["passfile"]))
        sb = spec.get("sandbox")
        sandbox = (
            Sandbox(
                path=_abs(base, sb["path"]),
                port=int(sb.get("port", 0)),
                scale=int(sb.get("scale", 1)),
            )
            if sb is not None
            else None
        )
        bindir = spec.get("pg_bin_dir")
        targets[name] = Target(
            name=name,
            connection=conn,
            sandbox=sandbox,
            pg_bin_dir=_abs(base, bindir) if bindir else None,
            max_rate=str(spec["max_rate"]) if spec.get("max_rate") else None,
            wal_receiver=_wal_receiver(base, spec.get("wal_receiver")),
        )
    ret = doc.get("retention") or {}
    sla = doc.get("sla") or {}
    uploads = []
    for up in doc.get("uploads") or []:
        item = _storage(base, up)
        item.setdefault("retention_days", 30)
        uploads.append(item)
    alerts = dict(doc.get("alerts") or {})
    if "smtp" in alerts:
        smtp = dict(alerts["smtp"])
        smtp.setdefault("port", 25)
        smtp.setdefault("starttls", False)
        if isinstance(smtp.get("to"), str):
            smtp["to"] = [smtp["to"]]
        alerts["smtp"] = smtp
    if "webhooks" in alerts:
        alerts["webhooks"] = [{"format": "json", **hook} for hook in alerts["webhooks"]]
    drill = doc.get("drill") or {}
    checks = [
        DrillCheck(
            name=str(c["name"]),
            sql=str(c["sql"]),
            expect=_expect_text(c["expect"]),
            dbname=c.get("dbname"),
        )
        for c in drill.get("checks") or []
    ]
    log = doc.get("log") or {}
    return Policy(
        path=path,
        repository=_storage(base, doc.get("repository") or {}),
        compression=Compression(
            method=comp.get("method", "zstd"),
            level=int(comp.get("level", 3)),
            workers=int(comp.get("workers", 0)),
        ),
        encryption=encryption,
        targets=targets,
        retention=Retention(
            days=int(ret.get("days", 7)),
            weekly=int(ret.get("weekly", 0)),
            monthly=int(ret.get("monthly", 0)),
            min_backups=int(ret.get("min_backups", 1)),
        ),
        schedules=dict(doc.get("schedules") or {}),
        sla=Sla(
            rto=parse_duration(sla["rto"]) if "rto" in sla else None,
            rpo=parse_duration(sla["rpo"]) if "rpo" in sla else None,
        ),
        uploads=uploads,
        alerts=alerts,
        drill_checks=checks,
        drill_port=int(drill.get("port", 0)),
        drill_image=drill.get("image"),
        log_file=_abs(base, log["file"]) if log.get("file") else None,
        log_level=log.get("level", "info"),
    )


def _expect_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- cache


def _cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "pgbackup" / "validated"


def _digest() -> Any:
    """A BLAKE2b hasher. CPython's built-in one, when present: importing hashlib loads
    OpenSSL, 2 ms that wal-push would pay for every segment just to look up this cache."""
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import blake2b
    return blake2b(digest_size=32)


def _cache_key(path: Path, data: bytes, env: Mapping[str, str]) -> str:
    from pgbackup import __version__

    h = _digest()
    h.update(b"pgbackup-policy-v2\0" + __version__.encode() + b"\0")
    h.update(_schema_bytes())
    h.update(b"\0" + str(path).encode() + b"\0")
    h.update(len(data).to_bytes(8, "little") + data)
    for name in _referenced_vars(data):
        value = env.get(name)
        h.update(name.encode() + b"\0")
        h.update(b"\x01unset" if value is None else b"=" + value.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _cache_hit(key: str) -> Any:
    """The parsed (not yet interpolated) document validated under ``key``, or None.

    Holding the parsed tree, not just "validated", is what lets wal-push skip PyYAML.
    It holds no secret: literal secrets are refused, and ``${VAR}`` references are
    stored unexpanded.
    """
    try:
        entry = json.loads((_cache_dir() / key).read_bytes())
        return entry["document"] if isinstance(entry, dict) else None
    except (OSError, ValueError, KeyError):
        return None


def _cache_store(key: str, raw: Any) -> None:
    try:
        payload = json.dumps({"document": raw}).encode()
    except (TypeError, ValueError):
        return  # not JSON (a YAML date, say): this policy is simply validated every time
    try:
        d = _cache_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, d / key)
    except OSError:
        pass


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
