"""Compression/encryption layers: round trips, interop with the standard CLIs, failures."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from pgbackup.errors import EncryptionError, PgBackupError, VerifyError
from pgbackup.formats.codecs import (
    CHUNK_SIZE,
    CodecError,
    CodecSpec,
    CorruptDataError,
    Encoder,
    decode_bytes,
    encode_bytes,
    load_identities,
    load_recipients,
    open_decoder,
    parse_suffix,
    suffix,
)
from pgbackup.formats.codecs.encode import zero_frame

pyrage = pytest.importorskip("pyrage")

METHODS = ["zstd", "lz4", "gzip", "none"]
LEVELS = {"zstd": [-3, 1, 3, 12], "lz4": [0, 3, 12], "gzip": [1, 6, 9], "none": [0]}
ALL_SPECS = [
    CodecSpec(method, level, encrypted)
    for method in METHODS
    for level in LEVELS[method]
    for encrypted in (False, True)
]


def _pgbench_like(size: int, seed: int = 7) -> bytes:
    """Compressible, page-structured rows like pgbench_accounts (ids, balances, filler)."""
    rnd = random.Random(seed)
    out = bytearray()
    aid = 1
    while len(out) < size:
        page = bytearray(b"\0" * 24)
        while len(page) < 8192 - 121:
            page += aid.to_bytes(4, "little") + (aid // 100000 + 1).to_bytes(4, "little")
            page += rnd.randrange(-5000, 5000).to_bytes(4, "little", signed=True) + b" " * 84
            page += b"\x0b\x00\x04\x00" + rnd.randbytes(4)
            aid += 1
        out += page.ljust(8192, b"\0")
    return bytes(out[:size])


RANDOM = os.urandom(3 * CHUNK_SIZE + 12345)
TEXTY = _pgbench_like(5 * CHUNK_SIZE + 777)
SMALL = b"hello, WAL\n" * 3


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    identity = pyrage.x25519.Identity.generate()
    return str(identity.to_public()), str(identity)


def _encode_stream(
    spec: CodecSpec, data: bytes, recipients: list[str], piece: int, **kw: int
) -> bytes:
    parts: list[bytes] = []
    encoder = Encoder(spec, parts.append, recipients=recipients, **kw)
    for start in range(0, len(data), piece):
        encoder.write(data[start : start + piece])
    encoder.close()
    blob = b"".join(parts)
    assert encoder.raw_bytes == len(data)
    assert encoder.encoded_bytes == len(blob)
    assert all(len(p) > 0 for p in parts)
    return blob


def _decode_stream(
    spec: CodecSpec, blob: bytes, identities: list[str], piece: int = 65536
) -> bytes:
    out = bytearray()
    with open_decoder(io.BytesIO(blob), spec, identities=identities) as stream:
        while chunk := stream.read(piece):
            out += chunk
    return bytes(out)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
@pytest.mark.parametrize(
    "data", [b"", SMALL, RANDOM, TEXTY], ids=["empty", "small", "random", "pgbench"]
)
def test_round_trip(spec: CodecSpec, data: bytes, keypair: tuple[str, str]) -> None:
    recipient, identity = keypair
    blob = _encode_stream(spec, data, [recipient], piece=300_000)
    assert _decode_stream(spec, blob, [identity]) == data
    assert decode_bytes(spec, blob, identities=[identity]) == data
    small = encode_bytes(spec, data, recipients=[recipient])
    assert decode_bytes(spec, small, identities=[identity]) == data
    if spec.encrypted:
        assert blob.startswith(b"age-encryption.org/v1\n")
        assert data[:64] not in blob or not data
    if spec.compression != "none" and data is TEXTY:
        assert len(blob) < len(data) // 2


@pytest.mark.parametrize(
    "spec",
    [CodecSpec(m, LEVELS[m][1 % len(LEVELS[m])], e) for m in METHODS for e in (False, True)],
    ids=str,
)
def test_one_buffer_written_again_and_again(spec: CodecSpec, keypair: tuple[str, str]) -> None:
    """A caller may reuse its buffer once write() returns (engine/backup.upload_staged
    reads pg_wal.tar into one): every codec consumes the bytes before returning."""
    recipient, identity = keypair
    parts: list[bytes] = []
    encoder = Encoder(spec, parts.append, recipients=[recipient])
    buffer = bytearray(100_000)
    view = memoryview(buffer)
    for start in range(0, len(TEXTY), len(buffer)):
        piece = TEXTY[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        encoder.write(view[: len(piece)])
        buffer[:] = b"\xff" * len(buffer)  # what the next read would overwrite
    encoder.close()
    assert _decode_stream(spec, b"".join(parts), [identity]) == TEXTY


@pytest.mark.parametrize("threads", [0, 2], ids=["one-thread", "zstd-workers"])
def test_write_file_reads_every_byte_through_one_buffer(
    threads: int, tmp_path: Path, keypair: tuple[str, str]
) -> None:
    """Encoder.write_file (pg_wal.tar, and the archives a pre-15 server cannot compress,
    with zstd workers): a read size that does not divide the file, every byte through."""
    recipient, identity = keypair
    source = tmp_path / "archive.tar"
    source.write_bytes(TEXTY)
    for spec in (
        CodecSpec("zstd", 3, False),
        CodecSpec("zstd", 3, True),
        CodecSpec("gzip", 6, False),
    ):
        parts: list[bytes] = []
        with Encoder(spec, parts.append, recipients=[recipient], threads=threads) as encoder:
            encoder.write_file(source, read_size=65_537)
        assert encoder.raw_bytes == len(TEXTY)
        assert _decode_stream(spec, b"".join(parts), [identity]) == TEXTY


@pytest.mark.parametrize(
    "layout",
    [
        "zeros",  # nothing but zeros: frames of zeros only
        "data,zeros,zeros",  # pg_wal.tar: a header and some WAL, then the padding
        "zeros,data,zeros,data",  # alternating: a frame ends and another starts
        "data,zeros,partial",  # a last read shorter than the buffer is compressed
        "",  # an empty file is still one valid (empty) frame
    ],
)
@pytest.mark.parametrize("threads", [0, 2], ids=["one-thread", "zstd-workers"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_write_file_stores_runs_of_zeros_as_frames_of_their_own(
    layout: str, threads: int, encrypted: bool, tmp_path: Path, keypair: tuple[str, str]
) -> None:
    """A whole read of zeros becomes a ready-made zstd frame (the end of pg_wal.tar, issue
    #15): the frames decode to exactly the file, with pgbackup's decoder and with the zstd
    program of the emergency procedure, and a run of zeros costs a few bytes."""
    recipient, identity = keypair
    size = 65_536
    pieces = {"zeros": bytes(size), "data": TEXTY[:size], "partial": bytes(size // 3)}
    content = b"".join(pieces[p] for p in layout.split(",") if p)
    source = tmp_path / "pg_wal.tar"
    source.write_bytes(content)
    spec = CodecSpec("zstd", 3, encrypted)
    parts: list[bytes] = []
    with Encoder(spec, parts.append, recipients=[recipient], threads=threads) as encoder:
        encoder.write_file(source, read_size=size)
    stored = b"".join(parts)
    assert encoder.raw_bytes == len(content)
    assert _decode_stream(spec, stored, [identity]) == content
    if not encrypted:
        assert stored.count(zero_frame(size, 3)) == layout.split(",").count("zeros")
        cli = subprocess.run(["zstd", "-dc"], input=stored, capture_output=True, check=True)
        assert cli.stdout == content


def test_zstd_multithreaded_and_many_small_writes(keypair: tuple[str, str]) -> None:
    recipient, identity = keypair
    spec = CodecSpec("zstd", 3, True)
    blob = _encode_stream(spec, TEXTY, [recipient], piece=4096, threads=-1)
    assert _decode_stream(spec, blob, [identity], piece=1000) == TEXTY


def test_concatenated_frames_and_members_decode() -> None:
    for method in ("zstd", "lz4", "gzip"):
        spec = CodecSpec(method, 1)
        blob = (
            encode_bytes(spec, b"first ") + encode_bytes(spec, b"") + encode_bytes(spec, b"second")
        )
        assert decode_bytes(spec, blob) == b"first second"


def test_sink_gets_chunks_of_bounded_size(keypair: tuple[str, str]) -> None:
    sizes: list[int] = []
    encoder = Encoder(
        CodecSpec("none", 0, True), lambda b: sizes.append(len(b)), recipients=[keypair[0]]
    )
    for _ in range(8):
        encoder.write(os.urandom(CHUNK_SIZE // 2))
    encoder.close()
    assert sum(sizes) > 4 * CHUNK_SIZE
    assert max(sizes) < 2 * CHUNK_SIZE
    assert all(s >= CHUNK_SIZE for s in sizes[:-1])  # coalesced: ~one sink call per MiB


def test_suffix_and_parse_suffix() -> None:
    assert suffix(CodecSpec("zstd", 3, False)) == ".zst"
    assert suffix(CodecSpec("zstd", 3, True)) == ".zst.age"
    assert suffix(CodecSpec("lz4", 1, False)) == ".lz4"
    assert suffix(CodecSpec("gzip", 6, True)) == ".gz.age"
    assert suffix(CodecSpec("none", 0, False)) == ""
    assert suffix(CodecSpec("none", 0, True)) == ".age"
    assert parse_suffix("000000010000000000000003.zst.age") == (
        "000000010000000000000003",
        CodecSpec("zstd", 0, True),
    )
    assert parse_suffix("00000002.history") == ("00000002.history", CodecSpec("none", 0, False))
    assert parse_suffix("base.tar.gz") == ("base.tar", CodecSpec("gzip", 0, False))


def test_spec_validation_and_dict() -> None:
    with pytest.raises(CodecError, match="unknown compression method 'bzip2'"):
        CodecSpec("bzip2", 1)
    with pytest.raises(CodecError, match="out of range") as info:
        CodecSpec("gzip", 12)
    assert info.value.hint == "gzip levels go from 0 to 9"
    spec = CodecSpec("lz4", 9, True)
    assert CodecSpec.from_dict(spec.to_dict()) == spec


# ----------------------------------------------------------------------------- CLI interop


def _cli(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"the {tool} command-line tool is not installed (apt-get install {tool})")
    return path


@pytest.mark.parametrize(
    ("method", "argv"),
    [("zstd", ["zstd", "-d", "-c"]), ("lz4", ["lz4", "-d", "-c"]), ("gzip", ["gzip", "-d", "-c"])],
)
def test_standard_cli_decodes_our_output(method: str, argv: list[str]) -> None:
    argv[0] = _cli(argv[0])
    data = TEXTY + RANDOM[:100000]
    for level in LEVELS[method]:
        blob = _encode_stream(CodecSpec(method, level), data, [], piece=1 << 20)
        result = subprocess.run(argv, input=blob, capture_output=True, check=True)
        assert result.stdout == data, (method, level)
    empty = encode_bytes(CodecSpec(method, LEVELS[method][0]), b"")
    assert subprocess.run(argv, input=empty, capture_output=True, check=True).stdout == b""


@pytest.mark.parametrize(("method", "tool"), [("zstd", "zstd"), ("gzip", "gzip"), ("lz4", "lz4")])
def test_we_decode_standard_cli_output(method: str, tool: str) -> None:
    exe = _cli(tool)
    blob = subprocess.run([exe, "-c"], input=TEXTY, capture_output=True, check=True).stdout
    assert decode_bytes(CodecSpec(method, 1), blob) == TEXTY


def test_age_cli_decrypts_our_output_and_we_decrypt_its(tmp_path: Path) -> None:
    age = _cli("age")
    keygen = _cli("age-keygen")
    key = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    recipient = subprocess.run(
        [keygen, "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# backup key\n{recipient}\n")

    spec = CodecSpec("zstd", 3, True)
    blob = _encode_stream(spec, TEXTY, load_recipients(recipients_file), piece=1 << 20)
    decrypted = subprocess.run(
        [age, "-d", "-i", str(key)], input=blob, capture_output=True, check=True
    ).stdout
    zstd = _cli("zstd")
    assert (
        subprocess.run([zstd, "-d", "-c"], input=decrypted, capture_output=True, check=True).stdout
        == TEXTY
    )

    theirs = subprocess.run(
        [age, "-r", recipient],
        input=encode_bytes(CodecSpec("zstd", 3), RANDOM),
        capture_output=True,
        check=True,
    ).stdout
    assert decode_bytes(spec, theirs, identities=load_identities(key)) == RANDOM


# ----------------------------------------------------------------------------- keys


def test_load_recipients(tmp_path: Path, keypair: tuple[str, str]) -> None:
    path = tmp_path / "recipients"
    other = str(pyrage.x25519.Identity.generate().to_public())
    path.write_text(f"# ops\n\n  {keypair[0]}  \n{other}\n")
    assert load_recipients(path) == [keypair[0], other]
    path.write_text(f"{keypair[0]}\nssh-rsa AAAA nope\n")
    with pytest.raises(EncryptionError, match=r"recipients:2: not an age X25519 recipient"):
        load_recipients(path)
    path.write_text("# nothing\n")
    with pytest.raises(EncryptionError, match="contains no recipients"):
        load_recipients(path)
    with pytest.raises(EncryptionError, match="does not exist"):
        load_recipients(tmp_path / "missing")


def test_load_identities_refuses_permissive_file(tmp_path: Path, keypair: tuple[str, str]) -> None:
    path = tmp_path / "key.txt"
    path.write_text(f"# created: today\n# public key: {keypair[0]}\n{keypair[1]}\n")
    path.chmod(0o644)
    with pytest.raises(EncryptionError) as info:
        load_identities(path)
    assert str(path) in info.value.message
    assert info.value.hint == f"chmod 600 {path}"
    assert f"chmod 600 {path}" in str(info.value)
    path.chmod(0o640)
    with pytest.raises(EncryptionError, match="0640"):
        load_identities(path)
    path.chmod(0o600)
    assert load_identities(path) == [keypair[1]]
    path.chmod(0o400)
    assert load_identities(path) == [keypair[1]]


def test_load_identities_bad_content_does_not_leak_secret(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_text("AGE-SECRET-KEY-1NOTAREALKEYBUTSECRETLOOKING\n")
    path.chmod(0o600)
    with pytest.raises(EncryptionError) as info:
        load_identities(path)
    assert "key.txt:1" in str(info.value)
    assert "NOTAREALKEY" not in str(info.value)
    with pytest.raises(EncryptionError, match="does not exist"):
        load_identities(tmp_path / "nope")


# ----------------------------------------------------------------------------- failures


def test_wrong_identity(keypair: tuple[str, str]) -> None:
    spec = CodecSpec("zstd", 3, True)
    blob = encode_bytes(spec, TEXTY, recipients=[keypair[0]])
    wrong = [str(pyrage.x25519.Identity.generate())]
    with pytest.raises(EncryptionError, match="no matching key") as info:
        decode_bytes(spec, blob, identities=wrong)
    assert info.value.hint
    with pytest.raises(EncryptionError, match="no matching key"):
        _decode_stream(spec, blob, wrong)


def test_missing_identity_or_recipients(keypair: tuple[str, str]) -> None:
    spec = CodecSpec("zstd", 3, True)
    blob = encode_bytes(spec, SMALL, recipients=[keypair[0]])
    with pytest.raises(EncryptionError, match=r"backup is encrypted; set encryption.identity_file"):
        open_decoder(io.BytesIO(blob), spec)
    with pytest.raises(EncryptionError, match=r"backup is encrypted; set encryption.identity_file"):
        decode_bytes(spec, blob, identities=[])
    with pytest.raises(EncryptionError, match="no age recipients"):
        Encoder(spec, lambda b: None)
    with pytest.raises(EncryptionError, match="invalid age recipient"):
        Encoder(spec, lambda b: None, recipients=["age1bogus"])
    with pytest.raises(EncryptionError, match="not a valid age X25519 identity") as info:
        decode_bytes(spec, blob, identities=["AGE-SECRET-KEY-1SECRETSTUFF"])
    assert "SECRETSTUFF" not in str(info.value)


def test_encrypted_data_read_as_plain_is_explained(keypair: tuple[str, str]) -> None:
    blob = encode_bytes(CodecSpec("zstd", 3, True), SMALL, recipients=[keypair[0]])
    with pytest.raises(EncryptionError, match="age-encrypted"):
        decode_bytes(CodecSpec("zstd", 3, False), blob)


@pytest.mark.parametrize(
    "spec", [s for s in ALL_SPECS if s.level == LEVELS[s.compression][0]], ids=str
)
def test_truncated_data_is_an_error(spec: CodecSpec, keypair: tuple[str, str]) -> None:
    recipient, identity = keypair
    data = TEXTY[: 2 * CHUNK_SIZE] + RANDOM[:100000]
    blob = encode_bytes(spec, data, recipients=[recipient])
    if spec.compression == "none" and not spec.encrypted:
        pytest.skip("plain uncompressed data has no framing to detect truncation")
    for cut in (len(blob) - 1, len(blob) - 4, len(blob) // 2, 10, 0):
        with pytest.raises(PgBackupError) as info:
            _decode_stream(spec, blob[:cut], [identity])
        expected = EncryptionError if spec.encrypted else CorruptDataError
        assert isinstance(info.value, expected), (cut, info.value)
        assert info.value.hint


@pytest.mark.parametrize(
    "spec", [s for s in ALL_SPECS if s.level == LEVELS[s.compression][-1]], ids=str
)
def test_corrupt_data_is_an_error(spec: CodecSpec, keypair: tuple[str, str]) -> None:
    recipient, identity = keypair
    if spec.compression == "none" and not spec.encrypted:
        pytest.skip("plain uncompressed data carries no checksum")
    blob = bytearray(encode_bytes(spec, RANDOM[:50000] + TEXTY[:200000], recipients=[recipient]))
    for pos in (len(blob) // 2, len(blob) - 2):
        bad = bytearray(blob)
        bad[pos] ^= 0x55
        with pytest.raises(PgBackupError) as info:
            _decode_stream(spec, bytes(bad), [identity])
        assert isinstance(info.value, EncryptionError if spec.encrypted else VerifyError)
        with pytest.raises(PgBackupError):
            decode_bytes(spec, bytes(bad), identities=[identity])


def test_garbage_is_not_compressed_data() -> None:
    for method in ("zstd", "lz4", "gzip"):
        with pytest.raises(CorruptDataError, match="cannot be decompressed"):
            decode_bytes(CodecSpec(method, 1), b"this is not compressed at all" * 10)


def test_source_errors_pass_through(keypair: tuple[str, str]) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise PgBackupError("repository unreachable", hint="check the network")

    with pytest.raises(PgBackupError, match="repository unreachable"):
        open_decoder(
            cast(BinaryIO, Broken()), CodecSpec("zstd", 3, True), identities=[keypair[1]]
        ).read()


def test_abort_emits_nothing_more(keypair: tuple[str, str]) -> None:
    parts: list[bytes] = []
    with (
        pytest.raises(RuntimeError),
        Encoder(CodecSpec("zstd", 1, True), parts.append, recipients=[keypair[0]]) as enc,
    ):
        enc.write(RANDOM)
        raise RuntimeError("pg_basebackup died")
    blob = b"".join(parts)
    with pytest.raises(EncryptionError):
        decode_bytes(CodecSpec("zstd", 1, True), blob, identities=[keypair[1]])
    with pytest.raises(ValueError):
        enc.write(b"more")


def test_closing_decoder_early_does_not_hang(keypair: tuple[str, str]) -> None:
    spec = CodecSpec("none", 0, True)
    blob = encode_bytes(spec, RANDOM * 3, recipients=[keypair[0]])
    source = io.BytesIO(blob)
    stream = open_decoder(source, spec, identities=[keypair[1]])
    assert stream.read(10) == RANDOM[:10]
    stream.close()
    assert not source.closed


def test_failing_sink_aborts_the_encoder(keypair: tuple[str, str]) -> None:
    calls = []

    def sink(data: bytes) -> None:
        calls.append(len(data))
        raise OSError("disk full")

    encoder = Encoder(CodecSpec("none", 0, True), sink, recipients=[keypair[0]])
    with pytest.raises(OSError, match="disk full"):
        for _ in range(10):
            encoder.write(RANDOM)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="closed"):
        encoder.write(b"x")
    encoder.close()  # no-op after abort
    assert len(calls) == 1


def test_a_whole_zstd_frame_is_decoded_in_one_call_and_anything_else_is_left_to_the_stream() -> (
    None
):
    """decode_bytes' one-call path (formats/codecbase.zstd_unwhole) takes only one frame
    that records its size; a cut, a flipped byte, an extra frame or a frame of unknown
    size is None there, and decode_bytes then fails (or decodes) exactly as the stream."""
    from pgbackup.formats.codecbase import zstd_unwhole, zstd_whole

    data = TEXTY[:300000] + RANDOM[:50000]
    blob = zstd_whole(data, 3, 0)
    assert zstd_unwhole(blob) == data
    spec = CodecSpec("zstd", 3, False)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x55
    for bad in (blob[:-1], blob[:-4], blob[: len(blob) // 2], bytes(flipped), blob + blob[:9]):
        assert zstd_unwhole(bad) is None
        with pytest.raises(PgBackupError):
            decode_bytes(spec, bad)
    two_frames = blob + blob  # several frames: the stream reads across them
    assert zstd_unwhole(two_frames) is None
    assert decode_bytes(spec, two_frames) == data + data
    streamed = _encode_stream(spec, data, [], 65536)
    assert zstd_unwhole(streamed) is None  # no size recorded
    assert decode_bytes(spec, streamed) == data
