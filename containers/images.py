"""Build pgbackup's container images locally, from Debian packages: no registry is needed.

Two images, each tagged with a hash of what it is made from, so that a second run finds
the tag and builds nothing:

- ``pgbackup-base:<hash>`` (also ``pgbackup-base:bookworm``): a Debian bookworm root
  filesystem made by ``debootstrap --variant=minbase`` with PostgreSQL 15, Python 3 and
  the compressors, from the Debian mirror this machine's apt already uses, brought into
  the engine with ``docker import``.
- ``pgbackup:src-<hash>`` (also ``pgbackup:<version>``, the image ``drill --docker`` uses
  by default): the top-level ``Dockerfile`` on that base, with pgbackup's wheel and its
  dependencies' wheels (built here, with this machine's pip) installed in /opt/pgbackup.
  It serves both as pgbackup in a container and as a PostgreSQL server whose
  archive_command is the pgbackup inside it.

Usage: ``python containers/images.py [--uid N --gid N] [--extras s3,gcs,azure]``; prints
the image's tag. Needs root (debootstrap) and a Docker engine (``.ci/docker-engine``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "var" / "images"
SUITE = "bookworm"
PG_MAJOR = 15
BASE_PACKAGES = (
    f"postgresql-{PG_MAJOR}",
    "python3",
    "python3-venv",
    "zstd",
    "lz4",
    "ca-certificates",
    "tzdata",
)
#: Bump when the way the base image is made changes (it is part of the base's hash).
BASE_RECIPE = 1
PATH = f"/usr/lib/postgresql/{PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What the pgbackup image is made from, besides the base and the build arguments.
SOURCES = ("pgbackup", "schema", "pyproject.toml", "setup.py", "Dockerfile")


class ImageError(Exception):
    """An image could not be built; the message says which step and why."""


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], *, what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc  # type: ignore[no-any-return]


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def engine_answers() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed (.ci/install installs docker.io)"
    proc = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        return (
            "no Docker engine answers: "
            + (proc.stderr.strip().splitlines() or ["?"])[-1]
            + " (start one with: bash .ci/docker-engine)"
        )
    return None


# --------------------------------------------------------------------------- base image


def debian_mirror(sources: Iterable[Path] | None = None) -> str:
    """The Debian mirror apt already uses for ``bookworm`` main ($PGBACKUP_DEBIAN_MIRROR wins)."""
    if os.environ.get("PGBACKUP_DEBIAN_MIRROR"):
        return os.environ["PGBACKUP_DEBIAN_MIRROR"]
    if sources is None:
        sources = [
            Path("/etc/apt/sources.list"),
            *sorted(Path("/etc/apt/sources.list.d").glob("*")),
        ]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                    if not k.startswith("#") and v
                )
                if (
                    SUITE in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split()
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if (
                    len(words) >= 4
                    and words[0] == "deb"
                    and words[2] == SUITE
                    and "main" in words[3:]
                ):
                    return words[1]
    raise ImageError(
        f"no Debian mirror for {SUITE} main in /etc/apt/sources*: set PGBACKUP_DEBIAN_MIRROR"
    )


def base_tag(mirror: str) -> str:
    digest = hashlib.sha256(
        json.dumps([BASE_RECIPE, SUITE, mirror, sorted(BASE_PACKAGES), PATH]).encode()
    ).hexdigest()
    return f"pgbackup-base:{digest[:12]}"


def build_base() -> str:
    """The base image's tag, built (about a minute) only when no image has that tag."""
    mirror = debian_mirror()
    tag = base_tag(mirror)
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (.ci/install installs it)")
    t0 = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=WORK))
    try:
        log(f"debootstrap {SUITE} from {mirror} ({', '.join(BASE_PACKAGES)})")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
        )
        # The package's default cluster and apt's downloads are not part of the image.
        for leftover in (
            f"var/lib/postgresql/{PG_MAJOR}/main",
            f"etc/postgresql/{PG_MAJOR}/main",
            "var/cache/apt/archives",
            "var/lib/apt/lists",
        ):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["docker", "import", "--change", f"ENV PATH={PATH}", "--change", "ENV LANG=C.UTF-8"]
            + ["-", tag],
            what="docker import",
            stdin=tar.stdout,
        )
        if tar.wait() != 0:
            raise ImageError("tar of the root filesystem failed")
        run(["docker", "tag", tag, f"pgbackup-base:{SUITE}"], what="docker tag")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    return tag


# --------------------------------------------------------------------------- pgbackup image


def version() -> str:
    text = (REPO / "pgbackup" / "__init__.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    return found.group(1) if found else "0"


def source_digest() -> str:
    """A hash of every file the pgbackup image is made from (the work tree as it is)."""
    h = hashlib.sha256()
    for name in SOURCES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_pgbackup(uid: int = 999, gid: int = 999, extras: str = "s3,gcs,azure") -> str:
    """The pgbackup image's tag, built only when its sources or arguments changed."""
    base = build_base()
    key = json.dumps([base, source_digest(), uid, gid, extras])
    tag = f"pgbackup:src-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not image_exists(tag):
        t0 = time.monotonic()
        WORK.mkdir(parents=True, exist_ok=True)
        context = Path(tempfile.mkdtemp(prefix="context-", dir=WORK))
        try:
            wheels = context / "wheels"
            pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
            run([*pip, "--no-deps", "-w", str(wheels), str(REPO)], what="building pgbackup's wheel")
            (wheel,) = wheels.glob("pgbackup-*.whl")
            run([*pip, "-w", str(wheels), f"{wheel}[{extras}]"], what="building dependency wheels")
            shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
            run(
                ["docker", "build", "--network", "none", "-q", "-t", tag]
                + ["--build-arg", f"BASE={base}", "--build-arg", f"PG_UID={uid}"]
                + ["--build-arg", f"PG_GID={gid}", "--build-arg", f"EXTRAS={extras}"]
                + ["--build-arg", f"PG_MAJOR={PG_MAJOR}"]
                + [str(context)],
                what="docker build",
            )
        finally:
            shutil.rmtree(context, ignore_errors=True)
        log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    run(["docker", "tag", tag, f"pgbackup:{version()}"], what="docker tag")
    _forget_older(tag)
    return tag


def _forget_older(keep: str) -> None:
    """Untag earlier source builds, so that the engine's disk holds one pgbackup image."""
    listed = run(
        ["docker", "image", "ls", "pgbackup", "--format", "{{.Repository}}:{{.Tag}}"],
        what="docker image ls",
    ).stdout.split()
    old = [t for t in listed if t.startswith("pgbackup:src-") and t != keep]
    if old:
        subprocess.run(["docker", "image", "rm", *old], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uid", type=int, default=999, help="uid of postgres in the image")
    parser.add_argument("--gid", type=int, default=999, help="gid of postgres in the image")
    parser.add_argument("--extras", default="s3,gcs,azure", help="pgbackup extras to install")
    args = parser.parse_args(argv)
    why = engine_answers()
    if why:
        print(f"images: {why}", file=sys.stderr)
        return 1
    try:
        print(build_pgbackup(args.uid, args.gid, args.extras))
    except ImageError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
