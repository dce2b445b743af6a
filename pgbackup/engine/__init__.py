"""The engine: what a backup tool does, one module per job.

Taking a backup (``backup``, ``streamcompress``), restoring one (``restore``,
``restore_command``, incremental chains and delta restores), archiving and fetching WAL
(``wal``, ``walasync``; ``receiver`` streams it, ``shipper`` copies it off-site), checking
what is stored (``verify``, ``inventory``), uploads and retention (``uploads``, ``cleanup``),
and the repository layout itself (``repository``, ``locks``).

May import ``formats``, ``policy``, ``storage``, ``postgres`` and the shared floor
(``errors``, ``ui``); never ``operations`` or ``interface`` (tests/test_layers.py).
"""
