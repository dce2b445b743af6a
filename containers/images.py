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

The PostgreSQL majors this machine's Debian does not carry are proven in a test-runner image
of a later suite (``SUITES``: trixie has 17, sid 18):

- ``pgbackup-base:<hash>`` (also ``pgbackup-base:<suite>``) of that suite, as above;
- ``pgbackup-test:<suite>-<hash>``: ``containers/test.Dockerfile`` on it, a virtualenv
  with pgbackup's dependencies and its ``test`` extra (wheels for the suite's Python,
  fetched by this machine's pip at the versions of ``.venv``) and pgbackup itself from the
  work tree, which ``test`` mounts at /src (a ``.pth``, as ``pip install -e`` makes).

``python containers/images.py test --suite trixie [-- PYTEST-ARGS]`` builds it and runs
the features on that suite's major inside it (``--network host``; default: the
``@core_versions`` scenarios and the incremental, drill and extract features, Docker-marked
ones excluded), recording outcomes in ``var/version-results.json`` as every run does.
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
#: Each Debian suite an image is built from, and the PostgreSQL major it carries.
SUITES = {"bookworm": 15, "trixie": 17, "sid": 18}
COMMON_PACKAGES = ("python3", "python3-venv", "zstd", "lz4", "ca-certificates", "tzdata")
#: What the test-runner images add: the programs the features call besides PostgreSQL's.
TEST_PACKAGES = ("age", "procps")
BASE_PACKAGES = (f"postgresql-{PG_MAJOR}", *COMMON_PACKAGES)
#: Bump when the way the base image is made changes (it is part of the base's hash).
BASE_RECIPE = 1
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PATH = f"/usr/lib/postgresql/{PG_MAJOR}/bin:{SYSTEM_PATH}"
#: Where ``test`` mounts the work tree in a test-runner image.
MOUNT = "/src"
TEST_VENV = "/opt/pgbackup-test"
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
    """The Debian mirror apt already uses for ``bookworm`` main ($PGBACKUP_DEBIAN_MIRROR wins);
    it carries the later suites too."""
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


def base_packages(suite: str = SUITE) -> tuple[str, ...]:
    """What debootstrap installs for ``suite``: its PostgreSQL, Python, the compressors
    (and, for a test-runner suite, ``TEST_PACKAGES``)."""
    if suite == SUITE:
        return BASE_PACKAGES
    return (f"postgresql-{SUITES[suite]}", *COMMON_PACKAGES, *TEST_PACKAGES)


def suite_path(suite: str = SUITE) -> str:
    return f"/usr/lib/postgresql/{SUITES[suite]}/bin:{SYSTEM_PATH}"


def base_tag(mirror: str, suite: str = SUITE) -> str:
    recipe = [BASE_RECIPE, suite, mirror, sorted(base_packages(suite)), suite_path(suite)]
    digest = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()
    return f"pgbackup-base:{digest[:12]}"


def build_base(suite: str = SUITE) -> str:
    """The base image's tag, built (about a minute) only when no image has that tag."""
    if suite not in SUITES:
        raise ImageError(f"no such suite {suite!r}: one of {', '.join(SUITES)}")
    mirror = debian_mirror()
    tag = base_tag(mirror, suite)
    major = SUITES[suite]
    packages = base_packages(suite)
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (.ci/install installs it)")
    t0 = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=WORK))
    try:
        log(f"debootstrap {suite} from {mirror} ({', '.join(packages)})")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                suite,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
        )
        # The package's default cluster and apt's downloads are not part of the image.
        for leftover in (
            f"var/lib/postgresql/{major}/main",
            f"etc/postgresql/{major}/main",
            "var/cache/apt/archives",
            "var/lib/apt/lists",
        ):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["docker", "import", "--change", f"ENV PATH={suite_path(suite)}"]
            + ["--change", "ENV LANG=C.UTF-8", "-", tag],
            what="docker import",
            stdin=tar.stdout,
        )
        if tar.wait() != 0:
            raise ImageError("tar of the root filesystem failed")
        run(["docker", "tag", tag, f"pgbackup-base:{suite}"], what="docker tag")
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


def _forget_older(keep: str, prefix: str = "pgbackup:src-") -> None:
    """Untag earlier builds of ``keep``'s kind (``prefix``), so that the engine's disk holds
    one image of each."""
    repository = prefix.split(":")[0]
    listed = run(
        ["docker", "image", "ls", repository, "--format", "{{.Repository}}:{{.Tag}}"],
        what="docker image ls",
    ).stdout.split()
    old = [t for t in listed if t.startswith(prefix) and t != keep]
    if old:
        subprocess.run(["docker", "image", "rm", *old], capture_output=True)


# --------------------------------------------------------------------------- test runners


def test_requirements() -> list[str]:
    """pgbackup's dependencies and its ``test`` extra, as pyproject.toml says."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def host_constraints() -> list[str]:
    """The versions installed in the host's .venv (else this Python's), so that the
    container runs the libraries the host's tests run."""
    venv_python = REPO / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    frozen = run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        what="pip freeze",
    ).stdout.splitlines()
    return sorted(ln for ln in frozen if "==" in ln and " @ " not in ln)


def in_image(image: str, code: str) -> str:
    """What ``python3 -c code`` prints inside ``image``."""
    proc = run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c"]
        + [code],
        what=f"python3 in {image}",
    )
    return proc.stdout.strip()


def wheel_platforms(glibc: str) -> list[str]:
    """pip's --platform tags a manylinux wheel may carry on a glibc of that version."""
    major, minor = (int(x) for x in glibc.split(".")[:2])
    return ["manylinux2014_x86_64", "linux_x86_64"] + [
        f"manylinux_{major}_{m}_x86_64" for m in range(17, minor + 1)
    ]


def build_test(suite: str) -> str:
    """The test-runner image of ``suite`` (its PostgreSQL, pgbackup's test dependencies),
    built only when its base, requirements, pinned versions or Dockerfile changed."""
    if suite == SUITE or suite not in SUITES:
        raise ImageError(f"a test-runner image is for {', '.join(set(SUITES) - {SUITE})}")
    base = build_base(suite)
    requirements, constraints = test_requirements(), host_constraints()
    dockerfile = (REPO / "containers" / "test.Dockerfile").read_text()
    key = json.dumps([base, requirements, constraints, dockerfile])
    tag = f"pgbackup-test:{suite}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not image_exists(tag):
        t0 = time.monotonic()
        facts = in_image(
            base,
            "import sys, platform; print(sys.version_info[0], sys.version_info[1]);"
            "print(platform.libc_ver()[1])",
        ).split()
        python, glibc = f"{facts[0]}.{facts[1]}", facts[2]
        WORK.mkdir(parents=True, exist_ok=True)
        context = Path(tempfile.mkdtemp(prefix="context-", dir=WORK))
        try:
            (context / "requirements.txt").write_text("\n".join(requirements) + "\n")
            (context / "constraints.txt").write_text("\n".join(constraints) + "\n")
            log(f"wheels for Python {python} (glibc {glibc}) of {suite}")
            run(
                [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
                + ["--python-version", python, "--only-binary=:all:"]
                + [f"--platform={p}" for p in wheel_platforms(glibc)]
                + ["-d", str(context / "wheels"), "-r", str(context / "requirements.txt")]
                + ["-c", str(context / "constraints.txt")],
                what="downloading the test dependencies' wheels",
            )
            shutil.copy(REPO / "containers" / "test.Dockerfile", context / "Dockerfile")
            run(
                ["docker", "build", "--network", "none", "-q", "-t", tag]
                + ["--build-arg", f"BASE={base}", "--build-arg", f"PG_MAJOR={SUITES[suite]}"]
                + [str(context)],
                what="docker build",
            )
        finally:
            shutil.rmtree(context, ignore_errors=True)
        log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    run(["docker", "tag", tag, f"pgbackup-test:{suite}"], what="docker tag")
    _forget_older(tag, prefix=f"pgbackup-test:{suite}-")
    return tag


#: What ``test`` runs on a suite's major by default: every @core_versions scenario, then the
#: rest of the incremental, drill and extract features; never the Docker-marked runs (no
#: engine inside the container).
VERSION_RUNS = (
    ("features/", "-m", "core_versions and not docker"),
    (
        "features/test_incremental.py",
        "features/test_drill.py",
        "features/test_extract.py",
        "-m",
        "not core_versions and not docker",
    ),
)


#: What a test-runner container appends to its major's Debian bin directory (run_tests).
MOVED = "-moved"

#: Suites whose major the table proves from another build: their outcomes go to a file of
#: their own, to compare (sid's 18 with the PyPI 18 of docs/version-support.json).
OWN_RESULTS = {"sid": "var/version-results-sid.json"}


def run_tests(suite: str, pytest_args: Sequence[str] = ()) -> int:
    """Run pytest inside ``suite``'s test-runner image on its PostgreSQL major, the work tree
    mounted at /src, on the host's network (every server listens on 127.0.0.1). Outcomes land
    in the work tree's var/version-results.json. The exit status is pytest's (the worst of
    the default runs)."""
    tag = build_test(suite)
    major = SUITES[suite]
    runs = [list(pytest_args)] if pytest_args else [list(r) for r in VERSION_RUNS]
    worst = 0
    for args in runs:
        argv = ["docker", "run", "--rm", "--init", "--network", "host", "--shm-size", "1g"]
        argv += ["-v", f"{REPO}:{MOUNT}", "-e", f"PGBACKUP_TEST_PG_VERSION={major}"]
        # The suite's own build of its major, moved out of the order pgbackup always
        # searches (binaries.candidate_dirs: /usr/lib/postgresql/<major>/bin), so that
        # pg_bin_dir.feature can hide it behind a policy's pg_bin_dir as on the PyPI builds.
        # Same depth: the server finds its lib and share directories relative to itself.
        debian_bin = f"/usr/lib/postgresql/{major}/bin"
        argv += ["-e", f"PGBACKUP_TEST_PG{major}_BIN={debian_bin}{MOVED}"]
        if suite in OWN_RESULTS:
            argv += ["-e", f"PGBACKUP_VERSION_RESULTS={MOUNT}/{OWN_RESULTS[suite]}"]
        if os.environ.get("CI"):  # a major missing in its image fails, as on the host
            argv += ["-e", f"CI={os.environ['CI']}"]
        argv += [tag, "sh", "-c", 'mv "$0" "$0$1" && shift && exec "$@"', debian_bin, MOVED]
        argv += ["python3", "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        argv += ["--pg-version", str(major), *args]
        log(f"PostgreSQL {major} in {tag}: pytest {' '.join(args)}")
        t0 = time.monotonic()
        code = subprocess.run(argv).returncode
        log(f"exit {code} after {time.monotonic() - t0:.0f}s")
        worst = worst or code
    return worst


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["test"]:
        parser = argparse.ArgumentParser(
            prog="images.py test",
            description="run the features on a later suite's PostgreSQL, in a container",
        )
        parser.add_argument("--suite", default="trixie", choices=sorted(set(SUITES) - {SUITE}))
        parser.add_argument("pytest_args", nargs="*", help="after --: instead of the default runs")
        test_args = parser.parse_args(argv[1:])
    else:
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
        if argv[:1] == ["test"]:
            return run_tests(test_args.suite, test_args.pytest_args)
        print(build_pgbackup(args.uid, args.gid, args.extras))
    except ImageError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
