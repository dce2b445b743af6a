"""Invoke entry point: `invoke backup`, `invoke restore`, ... (the same tasks as `pgbackup`)."""

from pgbackup.tasks import ns

__all__ = ["ns"]
