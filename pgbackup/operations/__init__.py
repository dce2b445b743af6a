"""Operations on top of the engine: is the promise kept, and can people see it?

``monitor`` (``check``), ``alerts``, ``slots`` and ``offsite_checks`` (health),
``sla`` and ``report/`` (the SLA report), ``recoverability`` (the timeline), ``metrics``
(the Prometheus exporter), ``drill`` (restore drills), ``extract`` (a table or database at
a point in time), ``schedule`` (the crontab), ``plan``, and the ``demo``.

May import the engine and everything below it; never ``interface``.
"""
