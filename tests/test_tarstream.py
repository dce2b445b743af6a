"""The streaming tar scanner finds members whatever the chunk boundaries."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from pgbackup.tarstream import TarScanner, parse_backup_label


def make_tar(fmt: int, long_name: str) -> bytes:
    buf = io.BytesIO()
    members = [
        ("a", b"x" * 1000),
        ("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
        (long_name, os.urandom(5000)),
        ("empty", b""),
        ("backup_manifest", b'{"x":1}'),
    ]
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,long_name",
    [
        (tarfile.GNU_FORMAT, "d/" + "y" * 120),
        (tarfile.USTAR_FORMAT, "d/" + "z" * 90 + "/" + "y" * 90),
    ],
)
@pytest.mark.parametrize("step", [1, 7, 511, 512, 513, 1 << 20])
def test_scanner_captures_members_across_chunk_boundaries(
    fmt: int, long_name: str, step: int
) -> None:
    raw = make_tar(fmt, long_name)
    scanner = TarScanner({"backup_label", "backup_manifest", long_name})
    for i in range(0, len(raw), step):
        scanner.feed(raw[i : i + step])
    assert scanner.captured["backup_manifest"] == b'{"x":1}'
    assert scanner.captured["backup_label"].startswith(b"START WAL")
    assert len(scanner.captured[long_name]) == 5000
    assert scanner.members == 5
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert scanner.payload_bytes == sum(m.size for m in tf.getmembers())


def test_parse_backup_label() -> None:
    label = parse_backup_label(
        "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n"
    )
    assert label["START TIMELINE"] == "1"
    assert label["START WAL LOCATION"].startswith("0/2000028")
