"""Real storage services on free loopback ports, for tests: start, yield, stop.

Each helper is a plain context manager yielding ``(spec, env)``: the repository spec
(without ``prefix``/``bucket`` surprises: the bucket or container exists) and the
environment variables a client needs (credentials for the emulator; set them with
``monkeypatch.setenv`` or ``mock.patch.dict(os.environ, env)``).

* ``moto_s3()``      — moto in server mode (``moto.server.ThreadedMotoServer``), in-process.
* ``gcs_emulator()`` — gcp-storage-emulator (``gcp_storage_emulator.server.create_server``),
  in-process, in memory.
* ``azurite()``      — Azurite's blob service as a subprocess
  (``azurite-blob --blobHost 127.0.0.1 --blobPort N --location DIR --skipApiVersionCheck
  --loose``), found at ``var/node/node_modules/.bin/azurite-blob`` or on PATH; when it is
  missing, ``AzuriteMissing`` (a ``pytest.skip`` reason is ``AZURITE_MISSING``).

Run ``.ci/install-services.sh`` once to install Azurite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AZURITE_MISSING = "azurite not installed: run .ci/install-services.sh"

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

Spec = dict[str, Any]
Env = dict[str, str]


class AzuriteMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with status {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def unique_name(stem: str) -> str:
    """A bucket/container name valid everywhere (lowercase, 3-63 chars)."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


# --- S3: moto ----------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(bucket: str | None = None, region: str = "us-east-1") -> Iterator[tuple[Spec, Env]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_SESSION_TOKEN": "",
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        bucket = bucket or unique_name("pgbackup")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=bucket)
        spec = {
            "kind": "s3",
            "bucket": bucket,
            "prefix": "platform/",
            "region": region,
            "endpoint_url": endpoint,
        }
        yield spec, env
    finally:
        server.stop()


# --- GCS: gcp-storage-emulator -----------------------------------------------------------


@contextlib.contextmanager
def gcs_emulator(bucket: str | None = None) -> Iterator[tuple[Spec, Env]]:
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    port = free_port()
    bucket = bucket or unique_name("pgbackup")
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        spec = {
            "kind": "gcs",
            "bucket": bucket,
            "prefix": "platform/",
            "project": "test-project",
            "endpoint_url": endpoint,
        }
        yield spec, {"STORAGE_EMULATOR_HOST": endpoint}
    finally:
        server.stop()


# --- Azure Blob: Azurite -----------------------------------------------------------------


def azurite_binary() -> str | None:
    local = REPO / "var" / "node" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("azurite-blob")


@contextlib.contextmanager
def azurite(container: str | None = None) -> Iterator[tuple[Spec, Env]]:
    binary = azurite_binary()
    if binary is None:
        raise AzuriteMissing(AZURITE_MISSING)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="pgbackup-azurite-")
    cmd = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        workdir,
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]
    log = open(os.path.join(workdir, "azurite.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for_port(port, timeout=60, proc=proc)
        except RuntimeError as exc:
            log.flush()
            output = Path(workdir, "azurite.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"azurite did not start: {exc}\n{output}") from None
        account_url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={account_url};"
        )
        container = container or unique_name("pgbackup")
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(conn).create_container(container)
        spec = {
            "kind": "azure",
            "container": container,
            "prefix": "platform/",
            "account_url": account_url,
        }
        yield spec, {"AZURE_STORAGE_CONNECTION_STRING": conn}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
