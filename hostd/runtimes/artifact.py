"""Where a runtime's model file comes from: a local path, or object storage (``s3://``, ``gs://`` ...
through fsspec), checked against an optional SHA-256.

A remote file (or directory: an MLflow model) is copied once into a local cache named after its URI,
under ``$HOSTD_ARTIFACT_CACHE`` (default ``~/.cache/hostd/artifacts``); a process worker that loads
the same model reuses that copy. The copy is made under a temporary name and renamed when complete,
so a download cut short is never taken for the artifact. Credentials and endpoints come from the
storage's own environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...), or from
``storage_options`` in the entry, passed to fsspec as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ArtifactError(ValueError):
    """The model file cannot be used; the message says why and what to do."""


def fetch(uri: str, sha256: str | None = None, storage_options: dict[str, Any] | None = None) -> Path:
    """A local path holding ``uri``'s contents, after checking, if ``sha256`` is given, that a file's
    contents hash to it."""
    scheme = urlsplit(uri).scheme
    path = local_copy(uri, storage_options or {}) if scheme not in ("", "file") else \
        Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise ArtifactError(f"model file {uri} does not exist: check the path (relative paths are from the "
                            "directory hostd runs in)")
    if sha256 is not None:
        if path.is_dir():
            raise ArtifactError(f"{uri} is a directory: sha256 checks a single file; remove it")
        digest = file_sha256(path)
        if digest != sha256.lower():
            raise ArtifactError(f"model file {uri} has SHA-256 {digest}, not the configured {sha256}: it is not "
                                "the file the config expects (replaced or corrupted); fix the file or the sha256")
    return path


def local_copy(uri: str, storage_options: dict[str, Any]) -> Path:
    try:
        import fsspec
    except ImportError:
        raise ArtifactError(f"{uri}: reading object storage needs fsspec and the storage's driver: "
                            "pip install 'hostd[s3]' (or gcsfs, adlfs ...)") from None
    cache = Path(os.environ.get("HOSTD_ARTIFACT_CACHE", Path.home() / ".cache" / "hostd" / "artifacts"))
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:24] / Path(urlsplit(uri).path).name
    if target.exists():
        return target
    try:
        fs, remote = fsspec.core.url_to_fs(uri, **storage_options)
        if not fs.exists(remote):
            return target  # fetch() says it does not exist
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-")) / target.name
        fs.get(remote, str(partial), recursive=fs.isdir(remote))
    except ImportError as exc:
        raise ArtifactError(f"{uri}: no fsspec driver for it ({exc}); for s3:// pip install 'hostd[s3]'") from None
    except OSError as exc:
        raise ArtifactError(f"{uri} cannot be read: {type(exc).__name__}: {exc}") from None
    try:
        partial.rename(target)
    except OSError:  # another process (a worker loading the same model) finished first
        if not target.exists():
            raise
    shutil.rmtree(partial.parent, ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
