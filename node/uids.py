"""UID hygiene: sanitising received UIDs before they become paths, deriving output UIDs.

Output UIDs derive deterministically from their inputs (source series UID, analysis
revision, software version), so a resend after a crash replaces rather than duplicates.
"""

from __future__ import annotations

import hashlib
import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    """A UID that is not a well-formed DICOM UID (and so must never become a path)."""


def sanitize_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` as a UID string that is safe as a file or directory name.

    Accepts only digits and dots in DICOM UID syntax, at most 64 characters (PS3.5 9.1).
    Trailing NUL/space padding is stripped. Anything else raises InvalidUID naming ``what``.
    """
    text = str(value if value is not None else "").strip().rstrip("\x00").strip()
    if not text:
        raise InvalidUID(f"{what} is missing or empty")
    if len(text) > 64 or not _UID_RE.match(text):
        shown = text[:80].encode("ascii", "backslashreplace").decode("ascii")
        raise InvalidUID(f"{what} {shown!r} is not a valid DICOM UID")
    return text


def derive_uid(*parts: object) -> str:
    """A deterministic 2.25 UID from the given parts (same parts, same UID)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
