"""age keys: reading recipients and identity files and parsing them with pyrage.

Loading keys is separate from using them: ``load_recipients`` and ``load_identities``
check a policy's key files (wal-push loads recipients only when encryption is on), and
the encoding and decoding layers share the pyrage parsing and the error messages that
never echo a secret. pyrage itself is imported on first use (:func:`_age`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pgbackup.errors import EncryptionError


def _strip_lines(path: Path, kind: str) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncryptionError(
            f"age {kind} file {path} does not exist",
            hint=f"create it (age-keygen) or fix the {kind} file path in backup.yaml",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EncryptionError(
            f"cannot read age {kind} file {path}: {exc.__class__.__name__}",
            hint="check the file's permissions and that it is a text file",
        ) from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines


def _age() -> Any:
    import pyrage

    return pyrage


def _parse_recipients(recipients: list[str]) -> list[Any]:
    pyrage = _age()
    parsed = []
    for text in recipients:
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text.strip()))
        except Exception:
            raise EncryptionError(
                f"invalid age recipient {text.strip()!r}",
                hint="recipients are X25519 public keys starting with 'age1' (see age-keygen -y)",
            ) from None
    return parsed


def _parse_identities(identities: list[str]) -> list[Any]:
    pyrage = _age()
    parsed = []
    for index, text in enumerate(identities, start=1):
        try:
            parsed.append(pyrage.x25519.Identity.from_str(text.strip()))
        except Exception:
            # Never echo the text: it is a secret key.
            raise EncryptionError(
                f"identity #{index} is not a valid age X25519 identity",
                hint="identities are lines starting with 'AGE-SECRET-KEY-1' (see age-keygen)",
            ) from None
    return parsed


def load_recipients(path: Path) -> list[str]:
    """Read an age recipients file: one ``age1...`` public key per line, ``#`` comments."""
    path = Path(path)
    recipients = []
    for number, line in _strip_lines(path, "recipients"):
        try:
            _parse_recipients([line])
        except EncryptionError:
            raise EncryptionError(
                f"{path}:{number}: not an age X25519 recipient: {line!r}",
                hint="each line must be a public key starting with 'age1' (age-keygen -y KEYFILE)",
            ) from None
        recipients.append(line)
    if not recipients:
        raise EncryptionError(
            f"age recipients file {path} contains no recipients",
            hint="add at least one public key line starting with 'age1'",
        )
    return recipients


def load_identities(path: Path) -> list[str]:
    """Read an age identity file; refuse it if group or others can access it."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise EncryptionError(
            f"age identity file {path} does not exist",
            hint="point encryption.identity_file in backup.yaml at the private key (age-keygen -o FILE)",
        ) from None
    except OSError as exc:
        raise EncryptionError(
            f"cannot access age identity file {path}: {exc.strerror}",
            hint="check the file's permissions",
        ) from None
    if os.name == "posix" and mode & 0o077:
        raise EncryptionError(
            f"age identity file {path} is accessible by group or others (mode {mode:04o})",
            hint=f"chmod 600 {path}",
        )
    identities = []
    for number, line in _strip_lines(path, "identity"):
        try:
            _parse_identities([line])
        except EncryptionError:
            raise EncryptionError(
                f"{path}:{number}: not an age X25519 identity",
                hint="each line must be a private key starting with 'AGE-SECRET-KEY-1' (age-keygen)",
            ) from None
        identities.append(line)
    if not identities:
        raise EncryptionError(
            f"age identity file {path} contains no identities",
            hint="it must hold a private key line starting with 'AGE-SECRET-KEY-1'",
        )
    return identities


def _missing_identity() -> EncryptionError:
    return EncryptionError(
        "backup is encrypted; set encryption.identity_file to the age identity (private key) file",
        hint="the identity must match one of the recipients the data was encrypted to",
    )


def _decrypt_error(exc: BaseException, what: str) -> EncryptionError:
    text = str(exc)
    if "No matching keys" in text:
        return EncryptionError(
            f"the age identity cannot decrypt {what}: no matching key",
            hint="use the identity file whose public key was a recipient when the data was written",
        )
    if "Header is invalid" in text or "Incomplete header" in text or "fill whole buffer" in text:
        return EncryptionError(
            f"{what} is not a valid age-encrypted stream (empty, truncated or corrupt header)",
            hint="check that the object is complete; run 'invoke verify'",
        )
    return EncryptionError(
        f"{what} failed age decryption: the ciphertext is truncated or corrupt",
        hint="the stored object was damaged or cut short; restore from another backup or copy",
    )
