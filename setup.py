"""Package discovery for setuptools (the rest of the metadata is in pyproject.toml).

The policy schema stays at the top level (``schema/backup.schema.json``, its single
source) and travels inside the built package as ``pgbackup/schema/``: ``schema/`` is
mapped in as the data-only package ``pgbackup.schema``, so nothing is copied in the tree.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["pgbackup", "pgbackup.*"]), "pgbackup.schema"],
    package_dir={"pgbackup.schema": "schema"},
)
