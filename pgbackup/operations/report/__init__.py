"""The HTML SLA report: Jinja2 templates, matplotlib charts inlined as SVG.

One self-contained file (no script, no font, no stylesheet fetched from anywhere), so it
can be mailed, archived next to an audit, or opened on a machine with no network.
``pgbackup.operations.sla`` builds the evidence; this package only draws it.
"""

from __future__ import annotations

from pgbackup.operations.report.html import render_html

__all__ = ["render_html"]
