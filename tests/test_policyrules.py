"""The light homes of rules both wal-push paths read: policyrules (the validated-policy
cache, the ${NAME} grammar, the defaults) and durable (the create-only write)."""

from __future__ import annotations

import datetime
import json
import os
import random
import re
from pathlib import Path

import pytest

from pgbackup import durable, policyrules
from pgbackup.policy import load_policy, validate_file
from pgbackup.policy.cache import _cache_hit, _cache_key, _cache_store
from pgbackup.policy.schema import SCHEMA_PATH, _schema_bytes

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFERENCED = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def test_referenced_vars_are_the_regular_expressions() -> None:
    rnd = random.Random(5)
    alphabet = b"${}_aZ9 -:"
    for _ in range(3000):
        data = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(30)))
        want = sorted({m.group(1).decode() for m in REFERENCED.finditer(data)})
        assert policyrules.referenced_vars(data) == want, data


def test_a_name_ends_where_the_regular_expression_says() -> None:
    rnd = random.Random(6)
    for _ in range(3000):
        text = "".join(rnd.choice("aZ_9-${}") for _ in range(rnd.randrange(12)))
        for start in range(len(text) + 1):
            m = NAME.match(text, start)
            want = m.end() if m else start
            assert policyrules.name_end(text, start) == want, (text, start)
            assert policyrules.name_end(text.encode(), start) == want, (text, start)


def test_the_defaults_are_the_schemas_and_the_builders(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_bytes())
    props = schema["properties"]
    assert (
        props["repository"]["properties"]["kind"]["default"] == policyrules.DEFAULT_REPOSITORY_KIND
    )
    compression = props["compression"]["properties"]
    assert compression["method"]["default"] == policyrules.DEFAULT_COMPRESSION_METHOD
    assert compression["level"]["default"] == policyrules.DEFAULT_COMPRESSION_LEVEL
    path = tmp_path / "backup.yaml"
    path.write_text(
        "version: 1\nrepository: {path: repo}\ntargets:\n  main:\n"
        "    connection: {host: 127.0.0.1, port: 5432, user: postgres, dbname: postgres}\n"
        "retention: {days: 7}\n"
    )
    policy = load_policy(path)
    assert policy.repository["kind"] == policyrules.DEFAULT_REPOSITORY_KIND
    assert policy.compression.method == policyrules.DEFAULT_COMPRESSION_METHOD
    assert policy.compression.level == policyrules.DEFAULT_COMPRESSION_LEVEL


def test_the_policy_cache_keys_with_the_one_function(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    data = b"repository: {path: ${REPO:-x}}\nb: ${B}${A} $${NOT} ${ 9} ${_x9}"
    policy.write_bytes(data)
    env = {"REPO": "/r", "A": "1"}
    key = _cache_key(policy.resolve(), data, env)
    assert key == policyrules.cache_key(str(policy.resolve()), data, SCHEMA_PATH.read_bytes(), env)
    assert _schema_bytes() == SCHEMA_PATH.read_bytes()
    # Each input is hashed: a referenced variable's value, one set or unset, the bytes.
    assert key != _cache_key(policy.resolve(), data, {**env, "B": ""})
    assert key != _cache_key(policy.resolve(), data, {**env, "A": "2"})
    assert key == _cache_key(policy.resolve(), data, {**env, "UNREFERENCED": "1"})
    assert key != _cache_key(policy.resolve(), data + b" ", env)


def test_an_entry_round_trips_and_only_plain_data_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    doc = {"a": [1, 2.5, "x", None, True], "b": {"c": "${D}"}}
    _cache_store("k1", doc)
    assert _cache_hit("k1") == doc == policyrules.read_entry("k1")
    assert oct(os.stat(Path(policyrules.cache_dir()) / "k1").st_mode & 0o777) == "0o600"
    _cache_store("k2", {"when": datetime.date(2026, 1, 1)})  # a YAML date: not cached
    assert _cache_hit("k2") is None
    (Path(policyrules.cache_dir()) / "k3").write_bytes(b"\x00not marshal")
    assert _cache_hit("k3") is None
    (Path(policyrules.cache_dir()) / "k4").write_bytes(
        __import__("marshal").dumps({"document": (1,)})
    )
    assert _cache_hit("k4") is None  # a tuple is no JSON value: not an entry we wrote


def test_a_validated_policy_is_found_under_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "backup.yaml"
    path.write_text(
        "version: 1\nrepository: {path: repo}\ntargets:\n  main:\n"
        "    connection: {host: 127.0.0.1, port: 5432, user: postgres, dbname: postgres}\n"
        "retention: {days: 7}\n"
    )
    assert validate_file(path) == []
    key = policyrules.cache_key(
        os.path.realpath(path), path.read_bytes(), SCHEMA_PATH.read_bytes(), os.environ
    )
    entry = policyrules.read_entry(key)
    assert isinstance(entry, dict) and entry["targets"]["main"]["connection"]["port"] == 5432


def test_a_create_only_write_publishes_once(tmp_path: Path) -> None:
    final = str(tmp_path / "f")
    tmp = durable.write_temp(final, b"one", None)
    assert oct(os.stat(tmp).st_mode & 0o777) == "0o640" and tmp.endswith(durable.TMP_SUFFIX)
    durable.place(tmp, final, if_absent=True)
    durable.fsync_path(tmp_path)
    tmp = durable.write_temp(final, b"two", None)
    with pytest.raises(FileExistsError):
        durable.place(tmp, final, if_absent=True)
    assert Path(final).read_bytes() == b"one"
    assert os.listdir(tmp_path) == ["f"]  # no temporary file left, either time
    tmp = durable.write_temp(final, b"three", None)
    durable.place(tmp, final, if_absent=False)
    assert Path(final).read_bytes() == b"three" and os.listdir(tmp_path) == ["f"]
