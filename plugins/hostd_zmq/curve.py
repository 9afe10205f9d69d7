"""CURVE for the ZeroMQ sockets: encryption with the server's key pair, and client authentication
against a folder of allowed client public keys, with pyzmq's own ZAP authenticator (``zmq.auth``).

Key files are the ones ``zmq.auth.create_certificates(folder, name)`` writes: ``name.key_secret``
(public and secret key: the server's, readable by hostd's user only) and ``name.key`` (public key
only: one per allowed client). A client's file name is its name: with ``auth:`` keys, the key of
that name gives it its scopes, models and rate limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import zmq
import zmq.asyncio
import zmq.auth
from pydantic import BaseModel, ConfigDict
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from hostd.errors import ConfigError
from hostd.tls import warn_if_readable_by_others


class CurveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret_key_file: str  # the server's key pair (a .key_secret file); relative to the config's folder
    clients: str  # a folder of the allowed clients' public keys (.key files); others cannot connect


class _NamedClients(AsyncioAuthenticator):
    """Tells each message's User-Id as the name of the allowed client's key file."""

    def __init__(self, context: zmq.asyncio.Context, names: dict[bytes, str]) -> None:
        super().__init__(context)
        self.names = names

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "")  # key files hold Z85 text


@contextmanager
def curve_server(sock: zmq.asyncio.Socket, settings: CurveSettings, folder: Path) -> Iterator[None]:
    """Make ``sock`` (not yet bound) a CURVE server that admits only the allowed clients."""
    secret_file, clients = folder / settings.secret_key_file, folder / settings.clients
    warn_if_readable_by_others(secret_file)
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
        names = {zmq.auth.load_certificate(path)[0]: path.stem for path in sorted(clients.glob("*.key"))}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"zmq curve: cannot read the key files ({secret_file}, {clients}): {exc}") from None
    if secret is None:
        raise ConfigError(f"zmq curve: {secret_file} holds no secret key (give the .key_secret file)")
    authenticator = _NamedClients(cast(zmq.asyncio.Context, sock.context), names)
    authenticator.start()
    try:
        authenticator.configure_curve(domain="*", location=str(clients))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        yield
    finally:
        authenticator.stop()
