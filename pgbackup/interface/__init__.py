"""How people and PostgreSQL reach pgbackup: the ``pgbackup`` console script (``console``),
the WAL fast path PostgreSQL calls (``wal_commands``), and the Invoke tasks
(``engine_tasks``, ``ops_tasks``, ``receiver_tasks``, gathered by ``collection``).

Tasks are thin: flags in, one engine or operations call, render out. No task module
imports another; shared plumbing is ``taskkit``.
"""
