"""The policy layer: ``backup.yaml`` in, validated and immutable :class:`Policy` records out.

Everything about the policy file lives here: finding it, parsing its YAML, expanding
``${VAR}``, refusing secrets, validating it against the schema, building the records,
caching a validated policy for wal-push; plus the rules that read a policy (retention,
backup chains). This layer may import only ``pgbackup.errors``, ``pgbackup.ui`` and
``pgbackup.formats``. Importing it stays light (no PyYAML, jsonschema nor dataclasses):
wal-push imports it once per WAL segment.
"""

from pgbackup.policy.loading import (
    CONFIG_SEARCH_PATH,
    config_search_path,
    find_config,
    load_policy,
    load_policy_fast,
    validate_file,
)
from pgbackup.policy.parsers import parse_duration, parse_expect
from pgbackup.policy.records import (
    Compression,
    DrillCheck,
    Encryption,
    Policy,
    Retention,
    Sandbox,
    Sla,
    Target,
)
from pgbackup.policy.schema import SCHEMA_PATH

__all__ = [
    "CONFIG_SEARCH_PATH",
    "SCHEMA_PATH",
    "Compression",
    "DrillCheck",
    "Encryption",
    "Policy",
    "Retention",
    "Sandbox",
    "Sla",
    "Target",
    "config_search_path",
    "find_config",
    "load_policy",
    "load_policy_fast",
    "parse_duration",
    "parse_expect",
    "validate_file",
]
