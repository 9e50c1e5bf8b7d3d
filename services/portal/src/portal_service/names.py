"""File names from outside (uploads) made safe, and paths that cannot leave their directory.

Policy (:func:`safe_file_name`):

- **Refused** (``InvalidFileName``, 400 ``invalid-file-name``): empty names; NUL or other control
  characters; absolute names (``/etc/passwd``, ``C:\\x``, ``\\\\server\\share``); any ``..``
  component; names that are only dots; Windows device names (``CON``, ``PRN``, ``AUX``, ``NUL``,
  ``COM1``-``COM9``, ``LPT1``-``LPT9``, also with an extension); names longer than 255 bytes.
- **Cleaned**: a relative path of a browser that sends one (``folder/file.pdf``,
  ``folder\\file.pdf``) keeps only its last component; Unicode is normalised to NFC; characters
  that are unsafe on common file systems (``<>:"|?*``) become ``_``; surrounding spaces and
  trailing dots (Windows drops them) are removed; a leading dot becomes ``_`` (no hidden files).

:func:`contained` joins a directory and a name and checks, after resolving symlinks, that the
result is still inside the directory: the last line of defence, used for every path the service
builds from data.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from mesh_common.errors import DomainError

MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE = re.compile(r'[<>:"|?*]')
_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


class InvalidFileName(DomainError):
    status, code, title = 400, "invalid-file-name", "The file name is not allowed"


def safe_file_name(raw: str) -> str:
    """The name to store ``raw`` under, or :class:`InvalidFileName` (see the module docstring)."""
    name = unicodedata.normalize("NFC", raw or "")
    if not name.strip():
        raise InvalidFileName("the file has no name")
    if _CONTROL.search(name):
        raise InvalidFileName("the file name contains control characters (e.g. NUL)")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise InvalidFileName(f"absolute file names are not allowed: {raw!r}")
    parts = re.split(r"[/\\]", name)
    if any(p.strip() == ".." for p in parts):
        raise InvalidFileName(f"'..' is not allowed in a file name: {raw!r}")
    name = parts[-1].strip().rstrip(". ")
    if not name or set(name) == {"."}:
        raise InvalidFileName(f"not a file name: {raw!r}")
    stem = name.split(".", 1)[0].strip().upper()
    if stem in _RESERVED:
        raise InvalidFileName(f"{stem} is a reserved device name")
    name = _UNSAFE.sub("_", name)
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidFileName(f"the file name is longer than {MAX_NAME_BYTES} bytes")
    return name


def contained(directory: Path, name: str) -> Path:
    """``directory / name``, refused unless it resolves to a direct child of ``directory``."""
    base = directory.resolve()
    target = (base / name).resolve()
    if target.parent != base or target.name != name:
        raise InvalidFileName(f"the file name leaves its folder: {name!r}")
    return target


def numbered(name: str, n: int) -> str:
    """``report.pdf`` -> ``report (2).pdf`` (for the ``n``-th file of the same name)."""
    if n <= 1:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def key_dir(directory: Path, key: str) -> Path:
    """A directory for a job-system key (client or project number), contained in ``directory``.
    The keys are validated by the contracts; this refuses anything that slipped through."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}", key) or ".." in key:
        raise InvalidFileName(f"not usable as a directory name: {key!r}")
    return contained(directory, key)
