"""The HTML SLA report: Jinja2 templates, matplotlib charts inlined as SVG.

One self-contained file (no script, no font, no stylesheet fetched from anywhere), so it
can be mailed, archived next to an audit, or opened on a machine with no network.
``pgbackup.operations.sla`` builds the evidence; this package only draws it:
``html.render_html`` the page, ``charts`` its SVG.
"""
