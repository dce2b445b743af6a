"""The documents a newcomer reads first stay true: docs/architecture.md names every module
that exists and no module that does not, and the README stays short, with links that
resolve (issue #27)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pgbackup"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: Words in the diagram's items that are not modules: the codecs inside formats/codecs/.
NOT_MODULES = {"zstd", "lz4", "gzip", "age", "backup"}


def diagram() -> str:
    """The layer diagram: the first fenced block of docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    return text.split("```", 2)[1]


def modules() -> set[str]:
    """The modules of pgbackup/ and of each of its layer folders, and the subpackages
    in those (``backup``, ``codecs``): what the diagram draws."""
    layers = [PACKAGE, *(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists())]
    names: set[str] = set()
    for folder in layers:
        names |= {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        names |= {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    return names


def test_the_diagram_names_every_module() -> None:
    words = set(re.findall(r"[A-Za-z_0-9]+", diagram()))
    missing = sorted(m for m in modules() if m not in words)
    assert not missing, f"docs/architecture.md's diagram does not name: {missing}"


def test_the_diagram_names_no_module_that_does_not_exist() -> None:
    """Each item of a layer box (the words between '·') begins with a module's name."""
    body = "".join(ch if ch not in "│┌┐└┘─" else " " for ch in diagram())
    body = re.sub(r"^\s*\d\s+\S+/", " ", body, flags=re.M)  # the layer labels
    items = [item.strip() for item in body.split("·")]
    named = {m.group(1) for item in items if (m := re.match(r"([a-z_]+)(?:/|\.py)?\b", item))}
    unknown = sorted(named - modules() - NOT_MODULES)
    assert not unknown, f"docs/architecture.md's diagram names modules that do not exist: {unknown}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= 150
    assert text.startswith("# pgbackup\n\n```bash\nbash .ci/install && .venv/bin/invoke demo")
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not link.startswith(("http://", "https://")):
                assert (page.parent / link).exists(), (page.name, link)
