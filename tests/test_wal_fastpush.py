"""wal-push's fast path (interface/wal_fastpush) stores what the general path stores, and
leaves everything else to it, having published nothing."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pgbackup.engine import wal
from pgbackup.formats.codecs import CodecSpec, decode_bytes, encode_bytes
from pgbackup.interface import wal_fastpush
from pgbackup.interface.wal_commands import wal_main
from pgbackup.policy import load_policy_fast, validate_file
from pgbackup.policy.cache import _cache_key
from pgbackup.policy.interpolation import _referenced_vars

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


def test_the_cache_key_is_the_policy_caches(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    data = b"repository: {path: ${REPO:-x}}\nb: ${B}${A} $${NOT} ${ 9} ${_x9}"
    policy.write_bytes(data)
    env = {"REPO": "/r", "A": "1"}
    assert wal_fastpush._cache_key(str(policy.resolve()), data, env) == _cache_key(
        policy.resolve(), data, env
    )


def test_referenced_vars_match_the_regular_expression() -> None:
    rnd = random.Random(5)
    alphabet = b"${}_aZ9 -:"
    for _ in range(3000):
        data = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(30)))
        assert wal_fastpush.referenced_vars(data) == _referenced_vars(data), data


def test_the_page_magics_are_the_engines() -> None:
    assert sorted(wal_fastpush._MAGICS) == sorted(wal.WAL_PAGE_MAGIC.values())


def test_it_stores_what_the_general_path_stores(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal_fastpush.os, "environ", {**os.environ, "PGBACKUP_WAL_THREADS": "0"})
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


def test_a_fast_push_imports_no_pathlib_typing_json_or_re(setup: dict[str, Path]) -> None:
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
        "    bad = sorted(m for m in ('pathlib', 'typing', 'json', 're', 'contextlib', 'zstandard')"
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
