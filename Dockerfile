# pgbackup in a container: pgbackup, PostgreSQL 15's client and server programs, zstd/lz4.
#
# Built by `python containers/images.py` (which also makes the base image: Debian bookworm
# from debootstrap, no registry needed), or by hand from a context holding wheels/ (the
# pgbackup wheel and its dependencies' wheels, `pip wheel`):
#
#   docker build --network none --build-arg BASE=pgbackup-base:bookworm -t pgbackup:0.1.0 CONTEXT
#
# The entry point is pgbackup:   docker run --network host -v /etc/pgbackup:/etc/pgbackup:ro \
#                                  pgbackup:0.1.0 --config /etc/pgbackup/backup.yaml backup
# The streaming receiver:        docker run -d --network host --stop-timeout 60 \
#                                  -v /etc/pgbackup:/etc/pgbackup:ro -v pgbackup-spool:/var/lib/postgresql/spool \
#                                  -v /var/backups/postgresql:/var/backups/postgresql \
#                                  pgbackup:0.1.0 --config /etc/pgbackup/backup.yaml wal-receive --target NAME
# (pg_receivewal of PostgreSQL 15 is in the image; docker stop = SIGTERM: flush, exit 0).
# The same image serves a PostgreSQL server whose archive_command is the pgbackup inside it
# (--entrypoint postgres). PG_UID/PG_GID give the postgres user the uid/gid that owns a
# repository or data directory shared with the host (default 999, as the official image).
ARG BASE=pgbackup-base:bookworm
FROM ${BASE}

ARG PG_MAJOR=15
ARG PG_UID=999
ARG PG_GID=999
ARG EXTRAS=s3,gcs,azure

RUN groupmod -o -g "${PG_GID}" postgres \
 && usermod -o -u "${PG_UID}" -g "${PG_GID}" postgres \
 && mkdir -p /var/lib/postgresql/spool \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql /var/log/postgresql

# wal-receive's spool (pg_receivewal's --directory, pgbackup/engine/receiver.py): mount a
# volume here so that a restarted container resumes from the newest file it received
# instead of the slot's restart_lsn.
ENV PGBACKUP_SPOOL=/var/lib/postgresql/spool

COPY wheels /tmp/wheels
RUN python3 -m venv /opt/pgbackup \
 && /opt/pgbackup/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels "pgbackup[${EXTRAS}]" \
 && ln -s /opt/pgbackup/bin/pgbackup /usr/local/bin/pgbackup \
 && rm -rf /tmp/wheels \
 && pgbackup --version

# The server's major: drill --docker refuses a backup of another (pgbackup/postgres/docker.py).
LABEL org.pgbackup.postgres-uid="${PG_UID}" org.pgbackup.postgres-gid="${PG_GID}" \
      org.pgbackup.postgres-major="${PG_MAJOR}"
USER postgres
WORKDIR /var/lib/postgresql
ENTRYPOINT ["pgbackup"]
CMD ["--help"]
