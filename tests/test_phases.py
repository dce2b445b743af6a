"""engine/phases: seconds and bytes per phase, nested calls counted once, from threads."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from pgbackup.engine.phases import Phases, TimedReader, rate, replayed_bytes
from pgbackup.formats import untar


def test_add_accumulates_seconds_and_bytes_per_phase_in_first_run_order() -> None:
    p = Phases()
    p.add("write", 0.5, 100)
    p.add("sync", 0.25)
    p.add("write", 0.25, 50)
    assert p.as_dict() == {
        "write": {"seconds": 0.75, "bytes": 150},
        "sync": {"seconds": 0.25, "bytes": 0},
    }
    assert list(p.as_dict()) == ["write", "sync"]
    assert p.seconds_of("write") == 0.75 and p.bytes_of("write") == 150
    assert p.seconds_of("none") == 0.0 and p.bytes_of("none") == 0


def test_timed_counts_the_block_and_bytes_set_inside_it_even_when_it_raises() -> None:
    p = Phases()
    with p.timed("transfer") as t:
        time.sleep(0.02)
        t.bytes = 7
    with pytest.raises(ValueError), p.timed("transfer", 3):
        raise ValueError
    d = p.as_dict()["transfer"]
    assert d["bytes"] == 10
    assert 0.02 <= d["seconds"] < 1


def test_a_nested_call_counts_to_its_own_phase_not_to_the_outer_one() -> None:
    p = Phases()
    with p.timed("decode", 100):
        time.sleep(0.03)
        with p.timed("transfer", 40):
            time.sleep(0.06)
    d = p.as_dict()
    assert 0.06 <= d["transfer"]["seconds"] < 0.5
    assert 0.03 <= d["decode"]["seconds"] < 0.06  # without the nested 0.06 s
    assert (d["decode"]["bytes"], d["transfer"]["bytes"]) == (100, 40)


def test_threads_add_up_and_keep_their_own_nesting() -> None:
    p = Phases()

    def work() -> None:
        for _ in range(200):
            with p.timed("write", 1), p.timed("sync", 2):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d = p.as_dict()
    assert d["write"]["bytes"] == 800 and d["sync"]["bytes"] == 1600
    assert d["write"]["seconds"] >= 0 and d["sync"]["seconds"] >= 0


def test_timed_reader_counts_reads_and_nests_inside_a_decoder_read() -> None:
    p = Phases()
    reader = TimedReader(io.BytesIO(b"x" * 1000), p, "transfer")
    with p.timed("decode") as t:
        data = reader.read(600)
        t.bytes = len(data)
    buf = bytearray(1000)
    assert reader.readinto(buf) == 400
    assert reader.read() == b""
    d = p.as_dict()
    assert d["transfer"]["bytes"] == 1000 and d["decode"]["bytes"] == 600


def test_rate_and_replayed_bytes() -> None:
    assert rate({"seconds": 2.0, "bytes": 100}) == 50.0
    assert rate({"seconds": 0, "bytes": 100}) is None
    assert rate({"seconds": 1, "bytes": 0}) is None
    assert rate(None) is None
    assert replayed_bytes("0/2000028", "0/3000000") == 0x3000000 - 0x2000028
    assert replayed_bytes("0/3000000", "0/2000000") == 0
    assert replayed_bytes(None, "0/1") == 0 and replayed_bytes("0/1", None) == 0


def test_untar_counts_write_and_sync_and_the_caller_decode_when_asked(tmp_path: Path) -> None:
    """untar times its writers; the caller's reads of the decoded stream count to decode
    (engine/objects.timed_decode, as a restore extracts)."""
    from pgbackup.engine.objects import timed_decode

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, size in (("small", 1000), ("large", untar.CHUNK * 2 + 4096)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"a" * size))
    payload = 1000 + untar.CHUNK * 2 + 4096
    p = Phases()
    token = untar.PHASES.set(p)
    try:
        buffer.seek(0)
        assert untar.extract(timed_decode(buffer), tmp_path) == payload
    finally:
        untar.PHASES.reset(token)
    d = p.as_dict()
    assert d["write"]["bytes"] == payload
    assert d["sync"]["bytes"] == payload  # every file fsynced (and the directories)
    assert d["decode"]["bytes"] >= payload  # headers and padding too
    assert all(d[k]["seconds"] > 0 for k in ("decode", "write", "sync"))
    # without the context variable nothing is timed
    buffer.seek(0)
    untar.extract(timed_decode(buffer), tmp_path / "again")
    assert p.as_dict() == d
