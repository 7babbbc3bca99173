"""Content identities: the one sha256 of a file, and the one filesystem-safe slug of a name."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (weights and GGUFs run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def slug(text: str, *, keep: str = "-.", limit: int | None = None) -> str:
    """`text` with every character that is not alphanumeric or in `keep` turned into "-", cut to `limit`
    characters, without leading or trailing dashes (may be empty)."""
    return "".join(c if c.isalnum() or c in keep else "-" for c in text)[:limit].strip("-")
