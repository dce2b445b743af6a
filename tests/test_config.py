"""Unit tests for pgbackup.policy: loading, interpolation, validation, typed objects."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgbackup.errors import ConfigError
from pgbackup.policy import (
    Compression,
    Encryption,
    Retention,
    Sandbox,
    Sla,
    find_config,
    load_policy,
    load_policy_fast,
    loading,
    parse_duration,
    parse_expect,
    validate_file,
)

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """\
version: 1
repository:
  path: ./repo
targets:
  main:
    connection:
      host: db.internal
"""

ENV_VARS = (
    "BACKUP_DIR",
    "PGUSER",
    "PGDATABASE",
    "PGHOST",
    "PGPORT",
    "RETENTION_DAYS",
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "AWS_REGION",
    "SLACK_WEBHOOK_URL",
    "SMTP_HOST",
    "ALERT_EMAIL",
    "HOSTNAME",
    "PGBACKUP_CONFIG",
    "PGB_TEST_VAR",
    "PGB_TEST_PORT",
    "PGB_TEST_EMPTY",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write(tmp_path: Path, text: str, name: str = "backup.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems_of(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    return validate_file(write(tmp_path, text))


def paths_of(tmp_path: Path, text: str) -> list[str]:
    return [p for p, _ in problems_of(tmp_path, text)]


def with_extra(extra: str) -> str:
    return MINIMAL + textwrap.dedent(extra)


# --------------------------------------------------------------------------- basics


def test_minimal_policy_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL))
    assert policy.path == tmp_path / "backup.yaml"
    assert policy.repository == {"kind": "posix", "path": tmp_path / "repo"}
    assert policy.compression == Compression("zstd", 3)
    assert policy.encryption is None
    assert policy.retention == Retention(days=7, weekly=0, monthly=0, min_backups=1)
    assert policy.sla == Sla(None, None)
    assert policy.schedules == {}
    assert policy.uploads == []
    assert policy.alerts == {}
    assert policy.drill_checks == []
    assert policy.drill_port == 0
    assert policy.log_file is None
    assert policy.log_level == "info"
    target = policy.target(None)
    assert target.name == "main"
    assert target.connection == {"host": "db.internal"}
    assert target.sandbox is None
    assert target.pg_bin_dir is None


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    p = write(
        sub,
        """\
        version: 1
        repository: {path: repo}
        encryption: {recipients_file: keys/r.txt, identity_file: /abs/id.txt}
        targets:
          a:
            sandbox: {path: ./sb, port: 5999, scale: 2}
            pg_bin_dir: bin
          b:
            connection: {host: h, passfile: pgpass}
        uploads:
          - {name: copy, path: copies}
        log: {file: logs/pgbackup.log, level: debug}
        """,
    )
    monkeypatch.chdir(tmp_path)  # cwd must not matter
    policy = load_policy(p)
    assert policy.repository["path"] == sub / "repo"
    assert policy.encryption == Encryption("age", sub / "keys/r.txt", Path("/abs/id.txt"))
    assert policy.targets["a"].sandbox == Sandbox(sub / "sb", 5999, 2)
    assert policy.targets["a"].pg_bin_dir == sub / "bin"
    assert policy.targets["b"].connection["passfile"] == str(sub / "pgpass")
    assert policy.uploads == [
        {"name": "copy", "kind": "posix", "path": sub / "copies", "retention_days": 30}
    ]
    assert policy.log_file == sub / "logs/pgbackup.log"
    assert policy.log_level == "debug"
    assert list(policy.targets) == ["a", "b"]


def test_target_selection(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            """\
            version: 1
            repository: {path: r}
            targets:
              one: {connection: {host: a}}
              two: {connection: {host: b}}
            """,
        )
    )
    assert policy.target("two").connection == {"host": "b"}
    with pytest.raises(ConfigError, match="one, two"):
        policy.target(None)
    with pytest.raises(ConfigError, match=r"no target 'three'.*one, two"):
        policy.target("three")


# --------------------------------------------------------------------------- interpolation


def test_interpolation_set_and_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_VAR", "db.example.com")
    p = write(
        tmp_path,
        """\
        version: 1
        repository:
          path: ${BACKUP_DIR:-/srv/backups}
        targets:
          main:
            connection:
              host: ${PGB_TEST_VAR}
              user: u-${PGUSER:-svc}-x
        """,
    )
    policy = load_policy(p)
    assert policy.repository["path"] == Path("/srv/backups")
    assert policy.targets["main"].connection == {"host": "db.example.com", "user": "u-svc-x"}


def test_default_used_when_variable_is_empty(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BACKUP_DIR", "")
    p = write(tmp_path, MINIMAL.replace("./repo", "${BACKUP_DIR:-/srv/b}"))
    assert load_policy(p).repository["path"] == Path("/srv/b")


def test_nested_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_VAR", "/from/inner")
    p = write(tmp_path, MINIMAL.replace("./repo", "${BACKUP_DIR:-${PGB_TEST_VAR}}"))
    assert load_policy(p).repository["path"] == Path("/from/inner")


def test_missing_variable_is_an_error_with_path(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL.replace("db.internal", "${PGB_TEST_VAR}"))
    with pytest.raises(ConfigError) as info:
        load_policy(p)
    problems = info.value.problems
    assert len(problems) == 1
    path, msg = problems[0]
    assert path == "targets.main.connection.host"
    assert "PGB_TEST_VAR" in msg and "not set" in msg
    assert "targets.main.connection.host" in str(info.value)


def test_dollar_dollar_escape(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        with_extra(
            """\
            drill:
              checks:
                - {name: price, sql: "SELECT '$${PGB_TEST_VAR}' || '$$5'", expect: "$$5"}
            """
        ),
    )
    check = load_policy(p).drill_checks[0]
    assert check.sql == "SELECT '${PGB_TEST_VAR}' || '$5'"
    assert check.expect == "$5"


def test_integer_coercion_where_schema_expects_integer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_PORT", "6543")
    monkeypatch.setenv("RETENTION_DAYS", "14")
    monkeypatch.setenv("PGUSER", "1234")
    p = write(
        tmp_path,
        """\
        version: 1
        repository: {path: r}
        targets:
          main:
            connection:
              host: h
              port: ${PGB_TEST_PORT}
              connect_timeout: ${PGB_TIMEOUT:-10}
              user: ${PGUSER}
        retention:
          days: ${RETENTION_DAYS:-7}
        alerts:
          smtp: {host: h, from: a@b, to: c@d, starttls: "${PGB_TLS:-true}"}
        """,
    )
    policy = load_policy(p)
    conn = policy.targets["main"].connection
    assert conn["port"] == 6543 and conn["connect_timeout"] == 10
    assert conn["user"] == "1234"  # a string where the schema wants a string
    assert policy.retention.days == 14
    assert policy.alerts["smtp"]["starttls"] is True
    assert policy.alerts["smtp"]["to"] == ["c@d"]


def test_non_integer_value_for_integer_key_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_PORT", "abc")
    problems = problems_of(tmp_path, MINIMAL + "      port: ${PGB_TEST_PORT}\n")
    assert problems == [("targets.main.connection.port", "expected an integer, got string 'abc'")]


def test_partial_reference_is_not_coerced(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_PORT", "54")
    problems = problems_of(tmp_path, MINIMAL + "      port: ${PGB_TEST_PORT}32\n")
    assert problems == [("targets.main.connection.port", "expected an integer, got string '5432'")]


def test_empty_expansion_unsets_optional_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
        version: 1
        repository:
          kind: s3
          bucket: b
          endpoint_url: ${S3_ENDPOINT_URL:-}
          region: ${PGB_TEST_EMPTY:-}
        targets:
          main: {connection: {host: h}}
        """,
    )
    assert load_policy(p).repository == {"kind": "s3", "bucket": "b"}


def test_empty_expansion_of_required_key_is_explained(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BACKUP_DIR", "")
    problems = problems_of(tmp_path, MINIMAL.replace("./repo", "${BACKUP_DIR}"))
    assert problems == [
        ("repository.path", "required, but ${BACKUP_DIR} expanded to an empty string")
    ]


def test_bad_reference_syntax(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace("db.internal", "'${1abc}'"))
    assert [p for p, _ in problems] == ["targets.main.connection.host"]
    problems = problems_of(tmp_path, MINIMAL.replace("db.internal", "'${OPEN'"))
    assert [p for p, _ in problems] == ["targets.main.connection.host"]
    assert "unterminated" in problems[0][1]


def test_interpolation_is_not_applied_to_keys_or_comments(tmp_path: Path) -> None:
    p = write(tmp_path, "# ${PGB_UNSET_IN_COMMENT}\n" + MINIMAL)
    load_policy(p)


# --------------------------------------------------------------------------- schema errors


def test_unknown_key_names_allowed_keys(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        MINIMAL + "      hots: x\ncompresion: {method: zstd}\n",
    )
    # in document order
    assert problems[0][0] == "targets.main.connection.hots"
    assert "allowed: host, port, user, dbname, passfile, sslmode, connect_timeout" in problems[0][1]
    assert problems[1][0] == "compresion"
    assert problems[1][1].startswith("unknown key 'compresion' (allowed: version, repository,")


def test_key_of_another_storage_kind(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        MINIMAL.replace("path: ./repo", "kind: s3\n  bucket: b\n  container: c"),
    )
    assert problems == [
        (
            "repository.container",
            "key 'container' is not used with kind s3 (allowed: kind, bucket, prefix, region,"
            " endpoint_url, addressing_style, part_size, retries, streams, object_lock,"
            " maintenance_profile)",
        )
    ]


def test_required_keys_per_kind(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace("path: ./repo", "kind: azure"))
    assert problems == [
        (
            "repository.account_url",
            "missing required key 'account_url' (required when kind is azure)",
        ),
        ("repository.container", "missing required key 'container' (required when kind is azure)"),
    ]
    problems = problems_of(tmp_path, MINIMAL.replace("path: ./repo", "kind: posix"))
    assert problems == [
        ("repository.path", "missing required key 'path' (required when kind is posix)")
    ]


def test_type_enum_const_and_range_messages(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        version: 2
        repository: {path: r}
        compression: {method: xz, level: high}
        targets:
          main: {connection: {host: h, port: 70000}}
        retention: {days: -1, min_backups: 0}
        log: {level: verbose}
        """,
    )
    assert problems == [  # in document order
        ("version", "must be 1 (got integer 2)"),
        ("compression.method", "must be one of zstd, lz4, gzip, none (got string 'xz')"),
        ("compression.level", "expected an integer, got string 'high'"),
        ("targets.main.connection.port", "must be at most 65535 (got 70000)"),
        ("retention.days", "must be at least 0 (got -1)"),
        ("retention.min_backups", "must be at least 1 (got 0)"),
        ("log.level", "must be one of debug, info, warning, error (got string 'verbose')"),
    ]


def test_required_top_level_keys(tmp_path: Path) -> None:
    assert paths_of(tmp_path, "compression: {method: zstd}\n") == [
        "repository",
        "targets",
        "version",
    ]


def test_bad_target_name_and_empty_targets(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace("  main:", "  Main DB:"))
    assert problems[0][0] == "targets.Main DB"
    assert "invalid target name 'Main DB'" in problems[0][1]
    problems = problems_of(tmp_path, "version: 1\nrepository: {path: r}\ntargets: {}\n")
    assert problems == [("targets", "declare at least one target")]


def test_yaml_on_key_is_not_a_boolean(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, with_extra("alerts:\n  on: [check, drill]\n")))
    assert policy.alerts == {"on": ["check", "drill"]}


def test_duplicate_keys_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + "version: 1\n")
    assert problems[0][0] == "version"
    assert "duplicate key" in problems[0][1]


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nrepository: {path: ${BACKUP_DIR}}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(p)
    assert info.value.problems[0][0].startswith("line 2")
    assert info.value.hint and "quoted" in info.value.hint
    assert validate_file(p)[0][0].startswith("line 2")


@pytest.mark.parametrize(
    ("text", "where"),
    [("", "(file)"), ("- a\n- b\n", "(file)"), ("\xff\xfe", None)],
)
def test_garbage_files(tmp_path: Path, text: str, where: str | None) -> None:
    p = tmp_path / "backup.yaml"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_policy(p)
    problems = validate_file(p)
    assert problems
    if where:
        assert problems[0][0] == where


def test_wrong_shapes_never_raise_tracebacks(tmp_path: Path) -> None:
    texts = [
        "version: 1\nrepository: []\ntargets: 3\n",
        "version: 1\nrepository: {path: r}\ntargets: {a: null}\nuploads: {}\n",
        "version: 1\nrepository: {path: r}\ntargets: {a: {sandbox: 1}}\ndrill: {checks: [1]}\n",
        "version: 1\nrepository: {path: r}\ntargets: {a: {connection: null}}\nsla: {rto: 5}\n",
        "version: 1\nrepository: {path: r}\ntargets: {a: {}}\nschedules: {backup: 5}\nalerts: {webhooks: [{}]}\n",
        "version: 1\nrepository: {path: r}\ntargets: {a: {}}\nuploads: [{name: [1]}, {name: [1]}]\n",
    ]
    for text in texts:
        p = write(tmp_path, text)
        assert validate_file(p), text
        with pytest.raises(ConfigError):
            load_policy(p)
        with pytest.raises(ConfigError):
            load_policy_fast(p)
        with contextlib.suppress(ConfigError):  # unvalidated: may build, never a traceback
            load_policy(p, validate=False)


# --------------------------------------------------------------------------- semantics


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("5m") == 300
    assert parse_duration("1h") == 3600
    assert parse_duration("1d") == 86400
    assert parse_duration("2w") == 1209600
    assert parse_duration("1h30m") == 5400
    for bad in ["", "5", "m", "5x", "1h 30m", "-5m", "1.5h", "h1"]:
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bad_duration_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_extra("sla: {rto: 1 hour, rpo: 5m}\n"))
    assert len(problems) == 1
    assert problems[0][0] == "sla.rto"
    assert "invalid duration" in problems[0][1] and "1h30m" in problems[0][1]


def test_bad_cron_reported(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        with_extra(
            'schedules: {backup: "0 25 * * *", verify: "* * *", check: "@daily", cleanup: "@often"}\n'
        ),
    )
    assert [p for p, _ in problems] == ["schedules.backup", "schedules.verify", "schedules.cleanup"]
    assert "invalid cron expression '0 25 * * *'" in problems[0][1]
    assert "expected 5 fields" in problems[1][1]
    assert "unknown cron macro" in problems[2][1]


def test_compression_level_range(tmp_path: Path) -> None:
    assert problems_of(tmp_path, with_extra("compression: {method: gzip, level: 12}\n")) == [
        ("compression.level", "level 12 is out of range for gzip (1-9)")
    ]
    assert problems_of(tmp_path, with_extra("compression: {method: lz4, level: 0}\n")) == []
    assert problems_of(tmp_path, with_extra("compression: {method: zstd, level: 19}\n")) == []


def test_compression_workers(tmp_path: Path) -> None:
    path = write(tmp_path, with_extra("compression: {method: zstd, level: 3, workers: 2}\n"))
    assert load_policy(path).compression == Compression("zstd", 3, 2)
    assert problems_of(tmp_path, with_extra("compression: {method: gzip, workers: 2}\n")) == [
        (
            "compression.workers",
            "workers apply to zstd only (PostgreSQL compresses gzip on one thread); "
            "remove the key or set method: zstd",
        )
    ]
    assert problems_of(tmp_path, with_extra("compression: {method: zstd, workers: -1}\n")) == [
        ("compression.workers", "must be at least 0 (got -1)")
    ]
    assert paths_of(tmp_path, with_extra("compression: {level: 20}\n")) == ["compression.level"]
    assert problems_of(tmp_path, with_extra("compression: {method: none, level: 99}\n")) == []


def test_sandbox_and_host_conflict(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        version: 1
        repository: {path: r}
        targets:
          main:
            sandbox: {path: sb}
            connection: {host: h, port: 5432, user: u}
        """,
    )
    assert [p for p, _ in problems] == [
        "targets.main.connection.host",
        "targets.main.connection.port",
    ]
    assert "sandbox" in problems[0][1]


def test_duplicate_upload_names(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        with_extra(
            """\
            uploads:
              - {name: offsite, kind: s3, bucket: a}
              - {name: other, path: /x}
              - {name: offsite, kind: gcs, bucket: b}
            """
        ),
    )
    assert problems == [
        ("uploads[2].name", "duplicate upload name 'offsite' (already used by uploads[0])")
    ]


def test_parse_expect() -> None:
    assert parse_expect("> 0") == (">", 0.0)
    assert parse_expect(">=1") == (">=", 1.0)
    assert parse_expect("== -2.5") == ("==", -2.5)
    assert parse_expect("!= 3") == ("!=", 3.0)
    assert parse_expect("ok") == ("==", "ok")
    assert parse_expect("42") == ("==", "42")
    for bad in ["> abc", ">", "", "<= 1 2"]:
        with pytest.raises(ValueError):
            parse_expect(bad)


def test_bad_drill_expect_reported(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        with_extra(
            """\
            drill:
              port: 0
              checks:
                - {name: a, sql: SELECT 1, expect: 1}
                - {name: b, sql: SELECT 1, expect: "> lots"}
            """
        ),
    )
    assert [p for p, _ in problems] == ["drill.checks[1].expect"]
    policy = load_policy(
        write(tmp_path, with_extra("drill: {checks: [{name: a, sql: s, expect: 1}]}\n"))
    )
    assert policy.drill_checks[0].expect == "1"


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = """\
        version: 1
        repository: {path: r, colour: blue}
        compression: {method: gzip, level: 10}
        targets:
          main:
            connection: {host: h, port: nope, password: hunter2}
        sla: {rto: soon}
        schedules: {backup: "61 * * * *"}
        uploads: [{name: x, path: a}, {name: x, path: b}]
        drill: {checks: [{name: c, sql: s, expect: ">"}]}
        """
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(p)
    paths = {path for path, _ in info.value.problems}
    assert paths == {
        "repository.colour",
        "compression.level",
        "targets.main.connection.port",
        "targets.main.connection.password",
        "sla.rto",
        "schedules.backup",
        "uploads[1].name",
        "drill.checks[0].expect",
    }
    message = str(info.value)
    for path in paths:
        assert f"  - {path}: " in message
    assert "hunter2" not in message


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("key", ["password", "passwd", "pass", "secret", "token", "api_key"])
def test_secret_keys_rejected(tmp_path: Path, key: str) -> None:
    problems = problems_of(tmp_path, MINIMAL + f"      {key}: s3cr3t\n")
    assert problems[0][0] == f"targets.main.connection.{key}"
    assert "PGPASSWORD" in problems[0][1] and "pgpass" in problems[0][1]
    assert "s3cr3t" not in problems[0][1]


def test_secret_keys_rejected_anywhere(tmp_path: Path) -> None:
    paths = paths_of(
        tmp_path,
        with_extra(
            """\
            uploads: [{name: o, kind: s3, bucket: b, secret_access_key: x, access_key: y}]
            alerts: {smtp: {host: h, from: a, to: b, password: z}}
            """
        ),
    )
    assert "uploads[0].secret_access_key" in paths
    assert "uploads[0].access_key" in paths
    assert "alerts.smtp.password" in paths


def test_secret_key_reported_once_and_by_suffix(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + "      password: x\n")
    assert len(problems) == 1  # not also "unknown key"
    paths = paths_of(
        tmp_path,
        with_extra(
            "uploads: [{name: o, kind: azure, container: c, account_url: u, account_key: k,"
            " connection_string: 'AccountKey=abc'}]\n"
        ),
    )
    assert paths == ["uploads[0].account_key", "uploads[0].connection_string"]


def test_password_column_in_drill_sql_is_fine(tmp_path: Path) -> None:
    text = with_extra(
        "drill: {checks: [{name: a, sql: \"SELECT count(*) FROM users WHERE password = ''\", expect: 0}]}\n"
    )
    assert problems_of(tmp_path, text) == []


def test_integral_float_for_integer_key(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL + "      port: 5432.0\n"))
    port = policy.target(None).connection["port"]
    assert port == 5432 and isinstance(port, int)


def test_password_env_is_allowed(tmp_path: Path) -> None:
    text = with_extra("alerts: {smtp: {host: h, from: a, to: [b], password_env: SMTP_PASSWORD}}\n")
    assert problems_of(tmp_path, text) == []


@pytest.mark.parametrize(
    "host",
    [
        "postgresql://svc:hunter2@db/platform",
        "postgres://svc:hunter2@db",
        "host=db password=hunter2",
    ],
)
def test_passwords_in_values_rejected(tmp_path: Path, host: str) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace("db.internal", f"'{host}'"))
    assert problems[0][0] == "targets.main.connection.host"
    assert "password" in problems[0][1]
    assert "hunter2" not in problems[0][1]


def test_password_arriving_through_variable_rejected(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_VAR", "postgresql://svc:hunter2@db")
    problems = problems_of(tmp_path, MINIMAL.replace("db.internal", "${PGB_TEST_VAR}"))
    assert [p for p, _ in problems] == ["targets.main.connection.host"]
    assert "hunter2" not in problems[0][1]


def test_uri_without_password_is_fine(tmp_path: Path) -> None:
    text = with_extra(
        "drill: {checks: [{name: a, sql: 'SELECT 1 -- postgresql://u@h/db', expect: 1}]}\n"
    )
    assert problems_of(tmp_path, text) == []


def test_literal_webhook_url_rejected(tmp_path: Path, monkeypatch) -> None:
    text = with_extra(
        "alerts:\n  webhooks:\n    - {name: s, url: 'https://hooks.slack.com/services/T/B/X', format: slack}\n"
    )
    problems = problems_of(tmp_path, text)
    assert [p for p, _ in problems] == ["alerts.webhooks[0].url"]
    assert "${" in problems[0][1]
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/X")
    ok = write(
        tmp_path, text.replace("'https://hooks.slack.com/services/T/B/X'", '"${SLACK_WEBHOOK_URL}"')
    )
    policy = load_policy(ok)
    assert policy.alerts["webhooks"] == [
        {"name": "s", "url": "https://hooks.slack.com/services/T/B/X", "format": "slack"}
    ]


def test_local_http_webhook_allowed(tmp_path: Path) -> None:
    text = with_extra("alerts: {webhooks: [{name: t, url: 'http://127.0.0.1:8080/hook'}]}\n")
    assert load_policy(write(tmp_path, text)).alerts["webhooks"][0]["format"] == "json"


# --------------------------------------------------------------------------- finding


def test_find_config_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    explicit = write(tmp_path, MINIMAL, "explicit.yaml")
    env_file = write(tmp_path, MINIMAL, "env.yaml")
    local = write(tmp_path, MINIMAL, "backup.yaml")
    monkeypatch.setenv("PGBACKUP_CONFIG", str(env_file))
    assert find_config(str(explicit)) == explicit
    assert find_config() == env_file
    monkeypatch.delenv("PGBACKUP_CONFIG")
    assert find_config() == local
    assert find_config(None).is_absolute()


def test_find_config_falls_back_to_etc(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    etc = write(tmp_path, MINIMAL, "etc.yaml")
    monkeypatch.setattr(
        loading, "CONFIG_SEARCH_PATH", ("$PGBACKUP_CONFIG", "./backup.yaml", str(etc))
    )
    assert find_config() == etc


def test_find_config_error_lists_places(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        find_config()
    msg = str(info.value)
    assert "$PGBACKUP_CONFIG" in msg
    assert str(tmp_path / "backup.yaml") in msg
    assert "/etc/pgbackup/backup.yaml" in msg
    assert "--config" in (info.value.hint or "")


def test_find_config_explicit_or_env_missing_never_falls_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="--config"):
        find_config(str(tmp_path / "nope.yaml"))
    monkeypatch.setenv("PGBACKUP_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="PGBACKUP_CONFIG"):
        find_config()
    with pytest.raises(ConfigError):
        load_policy()


# --------------------------------------------------------------------------- fast path


FAST_SCRIPT = """
import sys
from pgbackup.policy import load_policy_fast
p = load_policy_fast(sys.argv[1])
assert p.targets
mods = [m for m in ("jsonschema", "croniter", "yaml") if m in sys.modules]
print(",".join(mods) or "none")
"""


def run_fast(path: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", FAST_SCRIPT, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=str(REPO),
    )
    return out.stdout.strip()


def test_load_policy_fast_skips_jsonschema_when_cached(tmp_path: Path) -> None:
    p = write(tmp_path, (REPO / "backup.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(REPO)
    env["RETENTION_DAYS"] = "12345"
    assert "jsonschema" in run_fast(p, env)  # first call validates
    assert run_fast(p, env) == "none"  # second call trusts the cache, and needs no YAML
    # the cache holds the parsed document as written: references unexpanded, so no
    # value from the environment (a token, say) ever lands in it
    entries = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
    assert len(entries) == 1
    assert entries[0].stat().st_mode & 0o777 == 0o600
    text = entries[0].read_bytes()  # marshal data (pgbackup.policyrules): strings as UTF-8
    assert b"${RETENTION_DAYS" in text and b"12345" not in text
    # a referenced variable changing invalidates it
    env["RETENTION_DAYS"] = "3"
    assert "jsonschema" in run_fast(p, env)
    assert run_fast(p, env) == "none"
    # so does the content
    p.write_text(p.read_text() + "\n# edited\n")
    assert "jsonschema" in run_fast(p, env)


def test_load_policy_fast_revalidates_a_bad_file(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL)
    load_policy_fast(p)
    p.write_text(MINIMAL + "      port: many\n")
    with pytest.raises(ConfigError, match="connection.port"):
        load_policy_fast(p)


def test_load_policy_fast_unwritable_cache(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    p = write(tmp_path, MINIMAL)
    assert load_policy_fast(p).target("main").connection == {"host": "db.internal"}
    assert load_policy_fast(p).target("main").connection == {"host": "db.internal"}


def test_cached_policy_still_checks_missing_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGB_TEST_VAR", "h1")
    p = write(tmp_path, MINIMAL.replace("db.internal", "${PGB_TEST_VAR}"))
    assert load_policy_fast(p).target(None).connection["host"] == "h1"
    monkeypatch.delenv("PGB_TEST_VAR")
    with pytest.raises(ConfigError, match="PGB_TEST_VAR"):
        load_policy_fast(p)


# --------------------------------------------------------------------------- shipped files


def test_shipped_backup_yaml_validates(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert validate_file(REPO / "backup.yaml") == []
    policy = load_policy()
    assert policy.path == REPO / "backup.yaml"
    assert policy.repository == {"kind": "posix", "path": REPO / "var" / "backups"}
    target = policy.target(None)
    assert target.name == "platform"
    assert target.sandbox == Sandbox(REPO / "var" / "sandbox", 0, 1)
    assert target.connection == {"user": "platform_service", "dbname": "platform"}
    assert policy.retention == Retention(7, 4, 12, 1)
    assert policy.sla == Sla(3600, 300)
    assert set(policy.schedules) == {"backup", "verify", "cleanup", "check", "drill"}
    assert [c.expect for c in policy.drill_checks] == ["> 0", ">= 1"]


def test_shipped_production_example_validates(monkeypatch) -> None:
    path = REPO / "examples" / "backup.production.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert {p for p, _ in info.value.problems} == {"uploads[0].bucket", "alerts.webhooks[0].url"}
    for name, value in {
        "PGHOST": "db1.internal",
        "PGPORT": "5433",
        "PGUSER": "backup",
        "PGDATABASE": "platform",
        "BACKUP_DIR": "/srv/pg-backups",
        "RETENTION_DAYS": "10",
        "S3_BUCKET": "my-platform-backups",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
    }.items():
        monkeypatch.setenv(name, value)
    assert validate_file(path) == []
    policy = load_policy(path)
    assert policy.target("platform").connection["host"] == "db1.internal"
    assert policy.target("platform").connection["port"] == 5433
    assert policy.repository["path"] == Path("/srv/pg-backups")
    assert policy.retention.days == 10
    assert policy.uploads[0]["bucket"] == "my-platform-backups"
    assert "endpoint_url" not in policy.uploads[0]
    assert policy.log_file == Path("/srv/pg-backups/backup.log")


def test_schema_is_valid_and_strict() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "schema" / "backup.schema.json").read_text())
    Draft202012Validator.check_schema(schema)

    def walk(node, where="#"):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
                for name, prop in node["properties"].items():
                    assert "description" in prop, f"{where}/{name}"
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(schema)


def test_cloud_storage_tuning_keys(tmp_path: Path) -> None:
    text = """\
        version: 1
        repository: {kind: s3, bucket: b, part_size: 8MiB, retries: 3, addressing_style: path}
        targets: {a: {connection: {host: h}}}
        uploads:
          - {name: o, kind: azure, container: c, account_url: u, part_size: 12 parsecs}
          - {name: g, kind: gcs, bucket: b, addressing_style: path}
        """
    assert paths_of(tmp_path, text) == ["uploads[0].part_size", "uploads[1].addressing_style"]


def test_wal_path_tolerates_unresolvable_alert_settings(tmp_path: Path, monkeypatch) -> None:
    """archive_command runs in the server's environment, which may lack an alert's webhook URL:
    wal-push must still load the policy (without that section); other commands must not."""
    monkeypatch.delenv("PGB_TEST_HOOK", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = tmp_path / "backup.yaml"
    f.write_text(
        "version: 1\nrepository: {path: ./repo}\n"
        "targets:\n  a:\n    connection: {host: h, port: 5432, user: u, dbname: d}\n"
        "alerts:\n  webhooks: [{name: w, url: '${PGB_TEST_HOOK}', format: json}]\n"
    )
    policy = load_policy_fast(f)
    assert policy.alerts == {} or not policy.alerts.get("webhooks")
    assert list(policy.targets) == ["a"]
    with pytest.raises(ConfigError, match="PGB_TEST_HOOK"):
        load_policy(f)


def test_cloud_streams_setting(tmp_path: Path) -> None:
    """``streams`` (issue #26): an integer 1..64 on cloud repositories and upload
    destinations, carried as is to the storage, which defaults it to 4."""
    from pgbackup.storage.cloud import DEFAULT_STREAMS, CloudStorage

    text = """\
        version: 1
        repository: {kind: s3, bucket: b, part_size: 5MiB, streams: 8}
        targets: {a: {connection: {host: h}}}
        uploads:
          - {name: o, kind: azure, container: c, account_url: u, streams: 1}
          - {name: g, kind: gcs, bucket: b, streams: 64}
        """
    assert paths_of(tmp_path, text) == []
    policy = load_policy(write(tmp_path, text))
    assert policy.repository["streams"] == 8
    assert CloudStorage.common_options(policy.repository)["streams"] == 8
    assert "streams" not in CloudStorage.common_options({"kind": "s3", "bucket": "b"})
    assert DEFAULT_STREAMS == 4

    bad = """\
        version: 1
        repository: {kind: gcs, bucket: b, streams: 0}
        targets: {a: {connection: {host: h}}}
        uploads:
          - {name: o, kind: s3, bucket: b, streams: 65}
          - {name: p, kind: azure, container: c, account_url: u, streams: many}
          - {name: q, kind: posix, path: ./q, streams: 2}
        """
    assert paths_of(tmp_path, bad) == [
        "repository.streams",
        "uploads[0].streams",
        "uploads[1].streams",
        "uploads[2].streams",
    ]


# --- a target's wal_fetch: the read-ahead of recovery (engine/walprefetch) ---------------


def test_wal_fetch_read_ahead_is_on_by_default(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL))
    settings = policy.target("main").wal_fetch
    assert settings.streams == 4
    assert settings.read_ahead == 8  # from every storage kind: measured on posix and S3


def test_wal_fetch_settings_are_read(tmp_path: Path) -> None:
    text = MINIMAL + "    wal_fetch: {read_ahead: 16, streams: 2}\n"
    settings = load_policy(write(tmp_path, text)).target("main").wal_fetch
    assert (settings.read_ahead, settings.streams) == (16, 2)
    assert settings.read_ahead == 16
    off = MINIMAL + "    wal_fetch: {read_ahead: 0}\n"
    assert load_policy(write(tmp_path, off)).target("main").wal_fetch.read_ahead == 0


@pytest.mark.parametrize(
    "block",
    ["{read_ahead: -1}", "{streams: 0}", "{read_ahead: 65}", "{prefetch: 8}", "{streams: two}"],
)
def test_wal_fetch_settings_out_of_range_are_refused(tmp_path: Path, block: str) -> None:
    problems = problems_of(tmp_path, MINIMAL + f"    wal_fetch: {block}\n")
    assert any(path.startswith("targets.main.wal_fetch") for path, _ in problems), problems
