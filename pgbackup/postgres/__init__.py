"""Everything that talks to PostgreSQL: its programs (``binaries``), connections and server
facts (``connection``), server processes (``cluster``: initdb/pg_ctl; ``docker``: the same in
a container), and the local sandbox cluster the default policy uses (``sandbox``).

May import ``policy`` and the shared floor; never ``storage`` or anything above.
"""
