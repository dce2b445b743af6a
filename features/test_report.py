"""Steps for report.feature: the HTML report looked at by Debian's Chromium, headless.

The page is loaded twice by the real browser: once with a probe script appended (a copy of
the page; the report itself has no script) whose result Chromium's ``--dump-dom`` prints
(what is laid out where, in which colour), and once as it is, for a screenshot whose
pixels are checked where the probe found the gap.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Harness, switch_and_wait_archived
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("report.feature")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
    "--hide-scrollbars",
]
WINDOW = (1200, 2400)

PROBE = """
<pre id="probe"></pre>
<script>
(() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const fig = document.querySelector('figure.timeline');
  const svg = fig && fig.querySelector('svg');
  // What is drawn: a <use> of a path in <defs> (collections, markers) or a plain path.
  const fill = (e) => { const p = e.querySelector('use, :not(defs) > path');
    return p ? getComputedStyle(p).fill : null; };
  const all = (prefix) => [...document.querySelectorAll(`[id^="${prefix}"]`)]
    .map((e) => ({id: e.id, fill: fill(e), ...box(e)}));
  document.getElementById('probe').textContent = JSON.stringify({
    timeline: svg ? box(svg) : null,
    caption: fig ? fig.querySelector('figcaption').innerText : null,
    backups: all('platform-backup-'),
    gaps: all('platform-gap-'),
    spans: all('platform-recoverable-'),
    drills: all('platform-drill-'),
    objective: all('platform-rto-objective'),
  });
})();
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def browse(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless, with a fresh profile and no background traffic."""
    with tempfile.TemporaryDirectory(prefix="pgbackup-chromium-") as profile:
        return subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                *args,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


# --- given / when -----------------------------------------------------------------------


@given(parsers.re(r"(?P<count>\d+) WAL segments? (was|were) written and archived"))
def segments_archived(h: Harness, ctx: dict[str, Any], count: str) -> None:
    cluster = h.sandbox()
    for _ in range(int(count)):
        batch = len(ctx.setdefault("segments", []))
        h.sql(
            cluster,
            f"INSERT INTO tenants SELECT 700000 + {batch} * 100 + g, 'wal-' || g "
            "FROM generate_series(1, 20) g",
        )
        ctx.setdefault("segments", []).append(switch_and_wait_archived(cluster))
        time.sleep(1)  # a second between segments: a hole that lasts, in the picture


@given("the policy uploads every backup to a second directory")
def uploads(h: Harness) -> None:
    h.policy["uploads"] = [{"name": "offsite", "path": str(h.root / "offsite")}]
    h.write_policy()


@when("the second archived segment after the first backup is deleted")
def delete_segment(h: Harness, ctx: dict[str, Any]) -> None:
    first = h.backups()[0]
    # Segments 1..3 were closed after the first backup and before the second.
    victim = ctx["segments"][1]
    assert victim > f"{first['timeline']:08X}" + "0" * 16
    path = h.repo / "platform" / "wal" / f"{victim}.zst"
    assert path.exists(), sorted(p.name for p in path.parent.iterdir())
    path.unlink()
    ctx["victim"] = victim


@when("I write the SLA report as HTML and open it in headless Chromium")
def write_html(h: Harness, ctx: dict[str, Any]) -> None:
    out = h.root / "report.html"
    h.run("sla-report", "--format", "html", "--output", str(out))
    ctx["html"] = out
    probe = h.root / "probe.html"
    probe.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    proc = browse(probe, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1), (proc.stdout[-2000:], proc.stderr[-2000:])
    ctx["page"] = json.loads(
        found.group(1)
        .replace("&quot;", '"')
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
    )


# --- then -------------------------------------------------------------------------------


@then("the page is one file that fetches nothing")
def self_contained(ctx: dict[str, Any]) -> None:
    text = ctx["html"].read_text()
    assert "<script" not in text
    # Only the SVG namespaces name a URL; nothing is loaded from anywhere.
    urls = set(re.findall(r"https?://[^\"' )]+", text))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert not re.search(r"<(link|img|iframe)\b", text)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d{3,}", text)  # no microseconds on the page


@then("headless Chromium shows the timeline with one mark per backup")
def marks(h: Harness, ctx: dict[str, Any]) -> None:
    page = ctx["page"]
    tl = page["timeline"]
    assert tl and tl["w"] > 600 and tl["h"] > 150, tl
    backups = [b["backup_id"] for b in h.backups()]
    assert len(backups) == 2
    primary = [m for m in page["backups"] if m["id"].startswith("platform-backup-primary-")]
    assert sorted(m["id"] for m in primary) == [f"platform-backup-primary-{b}" for b in backups]
    for m in page["backups"]:
        assert m["w"] > 3 and m["h"] > 3, m  # drawn, visible
        assert tl["x"] <= m["x"] and m["x"] + m["w"] <= tl["x"] + tl["w"], (m, tl)
        assert tl["y"] <= m["y"] and m["y"] + m["h"] <= tl["y"] + tl["h"], (m, tl)
    assert ctx["victim"] in page["caption"], page["caption"]
    assert "missing" in page["caption"]


def centre(e: dict[str, Any]) -> float:
    return float(e["x"] + e["w"] / 2)


@then("it shows one red gap, between the two backups' marks")
def red_gap(ctx: dict[str, Any]) -> None:
    page = ctx["page"]
    assert len(page["gaps"]) == 1, page["gaps"]
    gap = page["gaps"][0]
    assert gap["fill"] == "rgb(214, 39, 40)", gap
    assert gap["w"] >= 4 and gap["h"] > 5, gap
    assert gap["id"] == "platform-gap-primary-0"
    first, second = sorted(
        (m for m in page["backups"] if "-primary-" in m["id"]), key=lambda m: m["id"]
    )
    assert centre(first) <= centre(gap) <= centre(second), (first, gap, second)
    # Recoverable bands on both sides of the hole: after each backup.
    spans = [s for s in page["spans"] if "-primary-" in s["id"]]
    assert len(spans) == 2, page["spans"]
    assert all(s["fill"] == "rgb(46, 139, 87)" for s in page["spans"])
    ctx["gap"] = gap


@then("the upload destination has its own lane with both backups and no gap")
def upload_lane(h: Harness, ctx: dict[str, Any]) -> None:
    page = ctx["page"]
    backups = [b["backup_id"] for b in h.backups()]
    marks = [m for m in page["backups"] if m["id"].startswith("platform-backup-offsite-")]
    assert sorted(m["id"] for m in marks) == [f"platform-backup-offsite-{b}" for b in backups]
    primary = [m for m in page["backups"] if "-primary-" in m["id"]]
    assert all(m["y"] > primary[0]["y"] + 10 for m in marks)  # a lane below the repository's
    # The copy was made before the segment was deleted from the repository: no hole there.
    assert not [g for g in page["gaps"] if "-offsite-" in g["id"]]
    assert [s for s in page["spans"] if "-offsite-" in s["id"]]
    assert "Upload offsite: restorable from" in page["caption"], page["caption"]


@then("it shows the drill under the RTO objective")
def drill_point(ctx: dict[str, Any]) -> None:
    page = ctx["page"]
    assert len(page["drills"]) == 1 and len(page["objective"]) == 1, page
    drill, objective = page["drills"][0], page["objective"][0]
    # A drill of seconds against a 1 h objective: lower on the (log) axis, both visible.
    assert drill["w"] > 3 and drill["h"] > 3
    assert centre_y(drill) > centre_y(objective) + 20, (drill, objective)


def centre_y(e: dict[str, Any]) -> float:
    return float(e["y"] + e["h"] / 2)


@then("the screenshot is red where the gap is")
def screenshot(h: Harness, ctx: dict[str, Any]) -> None:
    from PIL import Image

    png = h.root / "report.png"
    browse(ctx["html"], f"--screenshot={png}")
    assert png.exists(), "Chromium wrote no screenshot"
    image = Image.open(png).convert("RGB")
    assert image.size == WINDOW
    gap = ctx["gap"]
    x, y = int(centre(gap)), int(centre_y(gap))
    r, g, b = image.getpixel((x, y))  # type: ignore[misc]
    assert r > 180 and g < 90 and b < 90, ((x, y), (r, g, b))
    mark = ctx["page"]["backups"][0]
    r, g, b = image.getpixel((int(centre(mark)), int(centre_y(mark))))  # type: ignore[misc]
    assert r < 80 and g < 80 and b < 80, (r, g, b)  # the dark triangle of a backup


@then("list prints the window with both backups and the gap between them")
def list_text(h: Harness, ctx: dict[str, Any]) -> None:
    text = h.run("list").stdout
    row = next(line for line in text.splitlines() if line.startswith("repository "))
    assert row.count("▲") == 2, text
    assert row.index("▲") < row.index("╳") < row.rindex("▲"), text
    assert f"missing {ctx['victim']}" in text
    assert h.json("list")["platform"]["backups"][0]["status"] == "complete"  # --json unchanged
