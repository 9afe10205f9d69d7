"""TLS for the transports that take it (HTTP, gRPC, WebSocket): one settings block, one server context.

Each of those transports has a ``tls:`` section of this shape; the files are PEM, relative to the
config file's folder. With ``client_ca`` clients may present a certificate signed by it (mutual TLS);
with ``require_client_cert`` they must.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, model_validator

from hostd.errors import ConfigError

log = structlog.get_logger("hostd.tls")


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert: str  # the server's certificate (chain), PEM
    key: str  # its private key, PEM: readable by hostd's user only (a warning at start otherwise)
    key_password_file: str | None = None  # if the key is encrypted: a file holding its password
    client_ca: str | None = None  # verify client certificates against these CA certificates
    require_client_cert: bool = False  # mutual TLS: refuse a client without a valid certificate

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> TlsSettings:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert needs client_ca, the CA that signs the client certificates")
        return self


def server_context(settings: TlsSettings, folder: Path, alpn: list[str]) -> ssl.SSLContext:
    """A server-side SSLContext (TLS 1.2 or later) offering ``alpn`` (e.g. ["h2", "http/1.1"])."""
    cert, key = folder / settings.cert, folder / settings.key
    warn_if_readable_by_others(key)
    password = None
    if settings.key_password_file is not None:
        password = _read(folder / settings.key_password_file).strip()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password)
        if settings.client_ca is not None:
            context.load_verify_locations(folder / settings.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load the certificate, key or CA ({cert}, {key}): {exc}") from None
    context.set_alpn_protocols(alpn)
    return context


def warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # load_cert_chain says what is wrong with it
    # Group-readable is how Kubernetes mounts a secret for a non-root user (fsGroup); others must not.
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        log.warning("a private key file is readable by other users; chmod 600 it", path=str(path),
                    mode=oct(stat.S_IMODE(mode)))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {path}: {exc.strerror}") from None
