"""wal-push's fast path (engine/wal_fastpush) stores what the general path stores, is taken
in the common case, leaves everything else to the general path having published nothing,
and lets its own bugs surface. Its rules are shared modules (policyrules, formats.walpage,
formats.codecbase, durable): tests/test_policyrules.py and tests/test_walpage.py."""

from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pgbackup import durable
from pgbackup.engine import wal, wal_fastpush
from pgbackup.formats import codecbase
from pgbackup.formats.codecs import CodecSpec, decode_bytes, encode_bytes
from pgbackup.interface.wal_commands import WAL_FLAGS, _split_flags, wal_argv, wal_main
from pgbackup.policy import load_policy_fast, validate_file

SEG = 16 * 1024 * 1024
NAME = "000000010000000000000003"


def segment(sysid: int, seed: int = 1) -> bytes:
    """A 16 MiB segment: a long page header naming ``sysid``, then compressible noise."""
    head = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, 0, 0, sysid, SEG, 8192)
    rnd = random.Random(seed)
    body = bytes(rnd.randrange(16) for _ in range(65536)) * (SEG // 65536)
    return head + body[len(head) :]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PGBACKUP_CONFIG", raising=False)
    policy = tmp_path / "backup.yaml"
    policy.write_text(
        "version: 1\n"
        "repository: {path: repo}\n"  # relative: to the policy file's directory
        "compression: {method: zstd, level: 3}\n"
        "targets:\n"
        "  main:\n"
        "    connection: {host: 127.0.0.1, port: 5432, user: postgres, dbname: postgres}\n"
        "retention: {days: 7}\n"
    )
    assert validate_file(policy) == []  # validated once: the cache holds it
    (tmp_path / "pg_wal").mkdir()
    seg = tmp_path / "pg_wal" / NAME
    seg.write_bytes(segment(7000000000000000001))
    first = tmp_path / "pg_wal" / "000000010000000000000002"
    first.write_bytes(segment(7000000000000000001, seed=2))
    return {"policy": policy, "seg": seg, "first": first, "repo": tmp_path / "repo"}


def bind(s: dict[str, Path]) -> None:
    """The first push goes the general way (it binds archive.json and creates wal/)."""
    assert not wal_fastpush.fast_push(str(s["policy"]), "main", str(s["first"]))
    wal.push(load_policy_fast(s["policy"]), s["first"], "main")


def test_it_reads_the_entry_the_loader_cached(setup: dict[str, Path]) -> None:
    doc = wal_fastpush._cached_document(os.path.realpath(setup["policy"]))
    assert isinstance(doc, dict) and doc["repository"] == {"path": "repo"}


def test_its_schema_is_the_loaders() -> None:
    from pgbackup.policy.schema import SCHEMA_PATH

    assert wal_fastpush._schema_path() == str(SCHEMA_PATH)


def test_it_stores_what_the_general_path_stores(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGBACKUP_WAL_THREADS", "0")
    bind(setup)
    assert wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    stored = (setup["repo"] / "main" / "wal" / f"{NAME}.zst").read_bytes()
    data = setup["seg"].read_bytes()
    assert stored == encode_bytes(CodecSpec("zstd", 3), data, threads=0)
    assert decode_bytes(CodecSpec("zstd", 3), stored) == data
    assert oct(os.stat(setup["repo"] / "main" / "wal" / f"{NAME}.zst").st_mode & 0o777) == "0o640"
    leftovers = [n for n in os.listdir(setup["repo"] / "main" / "wal") if n.startswith(".")]
    assert leftovers == []


def test_the_only_target_is_taken_when_none_is_named(setup: dict[str, Path]) -> None:
    bind(setup)
    assert wal_fastpush.fast_push(str(setup["policy"]), None, str(setup["seg"]))


def test_an_archived_name_goes_the_general_way(setup: dict[str, Path]) -> None:
    bind(setup)
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["first"]))
    assert wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    # A retry of identical content: the general path says so (exit 0) ...
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(setup["seg"])]) == 0
    # ... and different content under that name is refused, the archived copy untouched.
    before = (setup["repo"] / "main" / "wal" / f"{NAME}.zst").read_bytes()
    setup["seg"].write_bytes(segment(7000000000000000001, seed=9))
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(setup["seg"])]) == 3
    assert (setup["repo"] / "main" / "wal" / f"{NAME}.zst").read_bytes() == before


def test_another_clusters_wal_goes_the_general_way_and_is_refused(
    setup: dict[str, Path],
) -> None:
    bind(setup)
    setup["seg"].write_bytes(segment(7999999999999999999))
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(setup["seg"])]) == 3
    assert not (setup["repo"] / "main" / "wal" / f"{NAME}.zst").exists()


@pytest.mark.parametrize(
    "case", ["unbound", "no cache", "encrypted", "unknown target", "not wal", "interpolated"]
)
def test_uncommon_cases_publish_nothing(
    setup: dict[str, Path], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg, target = setup["seg"], "main"
    if case != "unbound":
        bind(setup)
    if case == "no cache":
        monkeypatch.setenv("XDG_CACHE_HOME", str(setup["repo"].parent / "empty-cache"))
    if case == "encrypted":
        pyrage = pytest.importorskip("pyrage")
        key = pyrage.x25519.Identity.generate()
        (setup["policy"].parent / "r.txt").write_text(f"{key.to_public()}\n")
        text = setup["policy"].read_text() + "encryption: {recipients_file: r.txt}\n"
        setup["policy"].write_text(text)
        assert validate_file(setup["policy"]) == []  # cached: only the encryption differs
    if case == "unknown target":
        target = "other"
    if case == "not wal":
        seg = seg.with_name("notes.txt")
        seg.write_bytes(b"x")
    if case == "interpolated":
        monkeypatch.setenv("REPO", str(setup["repo"]))
        setup["policy"].write_text(
            setup["policy"].read_text().replace("{path: repo}", "{path: '${REPO}'}")
        )
        assert validate_file(setup["policy"]) == []
    assert not wal_fastpush.fast_push(str(setup["policy"]), target, str(seg))
    wal_dir = setup["repo"] / "main" / "wal"
    assert not (wal_dir / f"{NAME}.zst").exists()
    assert not wal_dir.exists() or not [n for n in os.listdir(wal_dir) if n.startswith(".")]


def test_a_fast_push_imports_no_pathlib_typing_json_re_nor_the_general_path(
    setup: dict[str, Path],
) -> None:
    bind(setup)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = (
        "import sys, os\n"
        "from pgbackup.interface.console import main\n"
        f"sys.argv = ['pgbackup', '--config', {str(setup['policy'])!r}, 'wal-push', {str(setup['seg'])!r}]\n"
        "import atexit\n"
        "try:\n"
        "    main([*sys.argv[1:]])\n"
        "except SystemExit as e:\n"
        "    bad = sorted(m for m in ('pathlib', 'typing', 'json', 're', 'contextlib', 'zstandard',"
        " 'pgbackup.policy', 'pgbackup.storage', 'pgbackup.formats.codecs', 'pgbackup.engine.wal')"
        " if m in sys.modules)\n"
        "    print(e.code, ','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=setup["seg"].parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["0"], out  # exit 0, none of them imported
    assert (setup["repo"] / "main" / "wal" / f"{NAME}.zst").exists()


def test_a_retry_of_an_archived_segment_makes_the_stored_copy_durable(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push that died between linking the file and fsyncing its directory is retried by
    PostgreSQL; the retry finds identical content and must fsync before saying "archived"."""
    from pgbackup.storage.posix import PosixStorage

    bind(setup)
    synced: list[str] = []
    real = PosixStorage.make_durable

    def spy(self: PosixStorage, key: str) -> None:
        synced.append(key)
        real(self, key)

    monkeypatch.setattr(PosixStorage, "make_durable", spy)
    wal.push(load_policy_fast(setup["policy"]), setup["first"], "main")  # the retry
    assert synced == ["main/wal/000000010000000000000002.zst"]


def test_the_common_case_takes_the_fast_path(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If it silently stopped being taken, every push would still succeed, slower: this
    fails instead."""
    bind(setup)

    def general(*args: object, **kwargs: object) -> str:
        raise AssertionError("the general path ran for the common case")

    monkeypatch.setattr(wal, "push", general)
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(setup["seg"])]) == 0
    assert (setup["repo"] / "main" / "wal" / f"{NAME}.zst").exists()


def test_a_bug_in_the_fast_path_fails_the_push_loudly(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bind(setup)
    capsys.readouterr()

    def broken(data: bytes, level: int, threads: int) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(codecbase, "zstd_whole", broken)
    code = wal_main(["--config", str(setup["policy"]), "wal-push", str(setup["seg"])])
    err = capsys.readouterr().err
    assert code == 70
    log = setup["repo"] / "backup.log"
    assert err.strip().splitlines() == [
        f"pgbackup wal-push: internal error: RuntimeError: boom (a bug in pgbackup; "
        f"the traceback is in {log})"
    ]
    import logging

    for handler in logging.getLogger("pgbackup").handlers[:]:  # as set up for the report
        logging.getLogger("pgbackup").removeHandler(handler)
        handler.close()
    text = log.read_text()
    assert "wal-push: internal error" in text and "Traceback" in text and "in broken" in text
    wal_dir = setup["repo"] / "main" / "wal"
    assert not (wal_dir / f"{NAME}.zst").exists()
    assert not [n for n in os.listdir(wal_dir) if n.startswith(".")]


def test_a_filesystem_error_before_the_link_goes_the_general_way(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (say) is the general path's to report, with its message and hint."""
    bind(setup)

    def full(final: str, data: bytes, owner: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "write_temp", full)
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    assert not (setup["repo"] / "main" / "wal" / f"{NAME}.zst").exists()


def test_a_directory_that_cannot_be_synced_fails_the_push(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bind(setup)
    real = durable.fsync_path

    def failing(path: str | os.PathLike[str]) -> None:
        if os.path.basename(path) == "wal":
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(durable, "fsync_path", failing)
    with pytest.raises(wal_fastpush.NotDurable):
        wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    capsys.readouterr()
    setup["seg"].with_name("000000010000000000000004").write_bytes(segment(7000000000000000001))
    code = wal_main(
        [
            "--config",
            str(setup["policy"]),
            "wal-push",
            str(setup["seg"].with_name("000000010000000000000004")),
        ]
    )
    assert code == 3
    assert "cannot make 000000010000000000000004 durable" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["wal-push", "wal-fetch"])
def test_the_invoke_task_takes_every_flag_of_its_command(command: str) -> None:
    from pgbackup.interface import engine_tasks

    task = engine_tasks.wal_push if command == "wal-push" else engine_tasks.wal_fetch
    params = {a.names[0] for a in task.get_arguments() if not a.positional}
    flags = {f[2:] for f, (commands, _value) in WAL_FLAGS.items() if command in commands}
    assert params == flags


def test_the_flags_table_reads_what_wal_argv_writes() -> None:
    argv = wal_argv("wal-push", ["pg_wal/X"], config="/p.yaml", target="main", **{"async": True})
    assert argv == ["wal-push", "pg_wal/X", "--config", "/p.yaml", "--target", "main", "--async"]
    assert _split_flags(argv) == (
        {"--config": "/p.yaml", "--target": "main", "--async": True},
        ["wal-push", "pg_wal/X"],
    )
    assert _split_flags(["-c", "a", "--target=b", "wal-fetch", "--until", "S", "N", "P"]) == (
        {"--config": "a", "--target": "b", "--until": "S"},
        ["wal-fetch", "N", "P"],
    )
    with pytest.raises(ValueError):
        wal_argv("wal-push", ["x"], until="S")


def test_after_an_upgrade_the_newest_generation_is_the_common_case(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new cluster (pg_upgrade, a new initdb) declared by `pgbackup upgrade`: its first
    push goes the general way (it binds <target>/gen/2/archive.json); then the fast path
    stores into generation 2 what the general path would, and another cluster is still
    the general path's to refuse."""
    from pgbackup.engine import generations

    monkeypatch.setenv("PGBACKUP_WAL_THREADS", "0")
    bind(setup)
    repo = setup["repo"]
    policy = load_policy_fast(setup["policy"])
    records = generations.plan_upgrade(
        [], "7000000000000000001", 15, "7000000000000000002", 16, "main", "now"
    )
    from pgbackup.storage import open_storage

    generations.write_records(open_storage(policy.repository), "main", records)
    new_first = setup["first"].with_name("000000010000000000000005")
    new_first.write_bytes(segment(7000000000000000002, seed=5))
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(new_first))
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(new_first)]) == 0
    assert (repo / "main" / "gen" / "2" / "wal" / f"{new_first.name}.zst").is_file()
    new_seg = setup["first"].with_name("000000010000000000000006")
    new_seg.write_bytes(segment(7000000000000000002, seed=6))
    assert wal_fastpush.fast_push(str(setup["policy"]), "main", str(new_seg))
    stored = (repo / "main" / "gen" / "2" / "wal" / f"{new_seg.name}.zst").read_bytes()
    assert stored == encode_bytes(CodecSpec("zstd", 3), new_seg.read_bytes(), threads=0)
    assert not (repo / "main" / "wal" / f"{new_seg.name}.zst").exists()
    # The old cluster's WAL still goes to generation 1; a third cluster is refused.
    assert wal_fastpush.fast_push(str(setup["policy"]), "main", str(setup["seg"]))
    assert (repo / "main" / "wal" / f"{NAME}.zst").is_file()
    other = setup["first"].with_name("000000010000000000000007")
    other.write_bytes(segment(7000000000000000003, seed=7))
    assert not wal_fastpush.fast_push(str(setup["policy"]), "main", str(other))
    assert wal_main(["--config", str(setup["policy"]), "wal-push", str(other)]) == 3
    assert not any(p.name.startswith(other.name) for p in (repo / "main").rglob("*"))
