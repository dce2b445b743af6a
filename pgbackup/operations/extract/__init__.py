"""Point-in-time extraction: a database's tables as they were at a recovery target.

"Give me ``users`` as it was at 14:30": the backup is restored into a scratch cluster
(a free loopback port, archiving off, the drill machinery), recovered to the target with
restore's own checks (the window first, then the WAL chain, then the point reached),
the objects are dumped with the server's own ``pg_dump``, and the scratch cluster is
removed, also on failure, Ctrl-C and SIGTERM. The dump goes to ``--output FILE``
(custom or plain format) or into a NEW database on the target's live server
(``--into-db``), created by pgbackup and never one that already exists.

Only what the dump needs is written (pgBackRest's ``--db-include`` idea, one level
finer): the databases and relations the live server names as *not* needed are restored
as sparse files of their size (read past in the stream, no data written), so WAL replay
still finds every file and full-page images rebuild every page it touches. Everything the
live server does not know about is written in full, and after recovery the scratch
cluster itself is asked which files the dump reads: if one of them was left sparse (the
database or table was re-created since the backup) the extraction restores again, whole.
Databases left sparse are refused by the scratch server's own pg_hba.conf.

The package is cut in three, in the order an extraction runs: ``request`` (the flags
read, the request checked, what the live server says the dump does not need),
``scratch`` (the scratch cluster: restored, recovered, asked, removed) and ``command``
(pg_dump, the load into a new database, and ``run_extract`` that drives it all).
"""
