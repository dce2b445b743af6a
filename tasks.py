"""Invoke entry point: `invoke backup`, `invoke restore`, ... (the same tasks as `pgbackup`)."""

from pgbackup.interface.collection import ns

__all__ = ["ns"]
