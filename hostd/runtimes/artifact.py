"""Where a runtime's model file comes from: a local path, checked against an optional SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path


class ArtifactError(ValueError):
    """The model file cannot be used; the message says why and what to do."""


def local_file(uri: str, sha256: str | None = None) -> Path:
    """The file ``uri`` names (a path, or ``file://`` URL), after checking it exists and, if ``sha256`` is
    given, that its contents hash to it."""
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise ArtifactError(f"model file {uri} does not exist: check the path (relative paths are from the "
                            "directory hostd runs in)")
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256.lower():
            raise ArtifactError(f"model file {uri} has SHA-256 {digest}, not the configured {sha256}: it is not "
                                "the file the config expects (replaced or corrupted); fix the file or the sha256")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
