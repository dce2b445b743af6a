# A test-runner image: a later Debian suite's PostgreSQL (17 from trixie, 18 from sid), its
# Python, and pgbackup's dependencies with the `test` extra in /opt/pgbackup-test. pgbackup
# itself is the work tree, mounted at /src when the image runs (a .pth file, as
# `pip install -e` makes, and the console script next to the virtualenv's Python, where the
# features look for it).
#
# Built by `python containers/images.py test --suite trixie` (docs/containers.md), from a
# context holding wheels/ (built for the suite's Python by the host's pip), requirements.txt
# and constraints.txt (the versions of the host's .venv).
ARG BASE
FROM ${BASE}

ARG PG_MAJOR

COPY wheels /tmp/wheels
COPY requirements.txt constraints.txt /tmp/
RUN python3 -m venv /opt/pgbackup-test \
 && /opt/pgbackup-test/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels -r /tmp/requirements.txt -c /tmp/constraints.txt \
 && rm -rf /tmp/wheels /tmp/requirements.txt /tmp/constraints.txt \
 && echo /src > "$(/opt/pgbackup-test/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/pgbackup-src.pth" \
 && printf '#!/opt/pgbackup-test/bin/python3\nimport sys\nfrom pgbackup.interface.console import main\nsys.exit(main())\n' \
        > /opt/pgbackup-test/bin/pgbackup \
 && chmod 0755 /opt/pgbackup-test/bin/pgbackup \
 && mkdir -p /var/run/postgresql \
 && chown postgres:postgres /var/run/postgresql

ENV PATH=/opt/pgbackup-test/bin:${PATH} PYTHONDONTWRITEBYTECODE=1
LABEL org.pgbackup.postgres-major="${PG_MAJOR}"
WORKDIR /src
