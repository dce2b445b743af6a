"""Byte formats, pure and server-free: compression and encryption layers (``codecs``), the
tar stream unpacked to disk (``untar``), and LSN / WAL file-name arithmetic (``lsn``).

May import only ``pgbackup.errors`` and ``pgbackup.ui``. Everything above reads and writes
stored objects through these.
"""
