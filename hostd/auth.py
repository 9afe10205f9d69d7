"""Who may do what: API keys with scopes and a model allow-list, and a rate limit per key (or per client
address when there are no keys). One check every transport calls before it does any work; each
transport only extracts the credential the way its ecosystem sends it (a Bearer header, gRPC metadata,
the WebSocket handshake, a ZeroMQ CURVE identity).

Keys are stored as the SHA-256 of the key, never the key; a presented key is hashed and compared with
every stored hash in constant time (hmac.compare_digest), and is never logged. Two entries with one hash
are a config error (which entry would a key be?).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hostd.errors import ConfigError, ConfigErrors, Forbidden, RateLimited, Unauthenticated
from hostd.settings import AuthSettings, HostSettings, Loc, RateLimitSettings

#: Token buckets kept at most (one per key or client address); the least recently used goes first.
MAX_BUCKETS = 100_000


class Scope(str, Enum):
    INFER = "infer"  # predict
    READ = "read"  # list models, metadata, the repository index, /metrics and the docs
    ADMIN = "admin"  # load, unload, reload


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: a key's name (or "anonymous"), what it may do, which models."""

    name: str
    scopes: frozenset[Scope]
    models: frozenset[str] | None = None  # None: every model

    def sees(self, model: str) -> bool:
        """Whether ``model`` is on this principal's allow-list (lists of models show only those)."""
        return self.models is None or model in self.models

    def may(self, scope: Scope, model: str | None = None) -> bool:
        return scope in self.scopes and (model is None or self.models is None or model in self.models)


ANONYMOUS = Principal("anonymous", frozenset(Scope))
#: A connection that brought no credential while keys are required (e.g. ZeroMQ without CURVE).
NOBODY = Principal("", frozenset())


@dataclass(frozen=True, slots=True)
class _Key:
    digest: bytes  # SHA-256 of the key
    principal: Principal


class Guard:
    """The one check: ``check(key, scope, model, peer)`` returns the principal, or raises
    UNAUTHENTICATED (no or unknown key), FORBIDDEN (scope or model not allowed) or RATE_LIMITED."""

    def __init__(self, auth: AuthSettings | None = None, rate_limit: RateLimitSettings | None = None,
                 base: Path | None = None, where: Callable[[Loc], str] | None = None) -> None:
        """``where``: "file:line" of a key path in the config, for its errors (HostSettings.where)."""
        self.settings = auth
        self.required = auth is not None
        self._keys = [_Key(_digest_of(key.sha256, key.sha256_file, base), Principal(
            key.name, frozenset(Scope(scope) for scope in key.scopes),
            frozenset(key.models) if key.models is not None else None)) for key in (auth.keys if auth else [])]
        _refuse_shared_keys(self._keys, where)
        self.limit = rate_limit
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.active = auth is not None or rate_limit is not None  # False: every check passes, skip it

    @classmethod
    def of(cls, settings: HostSettings) -> Guard:
        return cls(settings.auth, settings.rate_limit, settings.folder, settings.where)

    def check(self, key: str | None, scope: Scope, model: str | None = None, peer: str = "") -> Principal:
        principal = self.authenticate(key)
        self.authorize(principal, scope, model)
        self.admit(principal.name if self.required else f"address {peer}")
        return principal

    def named(self, name: str | None) -> Principal:
        """The principal of a connection that authenticated as key ``name`` by other means than the
        key itself (a ZeroMQ CURVE client's certificate name); None: it brought no credential."""
        if not self.required:
            return ANONYMOUS
        if name is None:
            return NOBODY
        for stored in self._keys:
            if stored.principal.name == name:
                return stored.principal
        return Principal(name, frozenset())  # authenticated, but no key grants it anything

    def permit(self, principal: Principal, scope: Scope, model: Any = None, peer: str = "") -> None:
        """One call on a connection authenticated once (``check`` did the key): its scope and model,
        then the rate limit (the key's, or ``peer``'s address's without keys)."""
        if principal is NOBODY:
            raise Unauthenticated("this connection brought no credential (ZeroMQ: connect with a CURVE key pair "
                                  "the server allows)")
        self.authorize(principal, scope, model if isinstance(model, str) else None)
        self.admit(principal.name if self.required else f"address {peer}")

    def authenticate(self, key: str | None) -> Principal:
        if not self.required:
            return ANONYMOUS
        if not key:
            raise Unauthenticated("an API key is required (HTTP: Authorization: Bearer <key>; gRPC: the "
                                  "authorization metadata)")
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for stored in self._keys:  # every one, so the time taken does not say which matched
            if hmac.compare_digest(stored.digest, digest):
                found = stored.principal
        if found is None:
            raise Unauthenticated("the API key is not valid")
        return found

    def authorize(self, principal: Principal, scope: Scope, model: str | None = None) -> None:
        if scope not in principal.scopes:
            raise Forbidden(f"key '{principal.name}' lacks the '{scope.value}' scope")
        if model is not None and not principal.may(scope, model):
            raise Forbidden(f"key '{principal.name}' may not use model '{model}'")

    def open_to(self, what: str) -> bool:
        """Whether ``what`` (health, metrics, docs) is served without a key."""
        if self.settings is None:
            return True
        return bool(getattr(self.settings, f"open_{what}"))

    def admit(self, who: str) -> None:
        """Take a token from ``who``'s bucket (a key's name, or a client address), or refuse."""
        if self.limit is None:
            return
        now = time.monotonic()
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = [float(self.limit.burst), now]
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(who)
            bucket[0] = min(float(self.limit.burst), bucket[0] + (now - bucket[1]) * self.limit.per_s)
            bucket[1] = now
        if bucket[0] < 1:
            retry_after = (1 - bucket[0]) / self.limit.per_s
            raise RateLimited(f"rate limit of {self.limit.per_s:g} requests/s (burst {self.limit.burst}) "
                              f"reached; retry in {retry_after:.2f} s", retry_after_s=retry_after)
        bucket[0] -= 1


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` value (HTTP, the WebSocket handshake, gRPC metadata)."""
    kind, _, key = (authorization or "").partition(" ")
    return key.strip() if kind.lower() == "bearer" else None


def _digest_of(sha256: str | None, sha256_file: str | None, base: Path | None) -> bytes:
    if sha256 is not None:
        return bytes.fromhex(sha256)
    assert sha256_file is not None
    path = Path(sha256_file) if base is None else base / sha256_file
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"auth: cannot read the key hash file {path}: {exc.strerror}") from None
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ConfigError(f"auth: {path} does not hold a SHA-256 hex digest (64 hex digits)")
    return digest


def _refuse_shared_keys(keys: list[_Key], where: Callable[[Loc], str] | None) -> None:
    """Two entries with one key (one SHA-256) are a config error: a request with it would be whichever
    entry authenticate() found last, with that one's scopes and models, and nothing would say so."""
    first: dict[bytes, int] = {}
    problems = []
    for index, key in enumerate(keys):
        earlier = first.setdefault(key.digest, index)
        if earlier == index:
            continue
        problem = f"auth.keys: key '{key.principal.name}' is the same key as '{keys[earlier].principal.name}'"
        if where is not None:
            problem = f"{where(('auth', 'keys', index))}: {problem} (at {where(('auth', 'keys', earlier))})"
        problems.append(ConfigError(f"{problem}: each entry needs a key of its own"))
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)


def new_key() -> tuple[str, str]:
    """A new random API key and the SHA-256 hex digest to configure for it."""
    key = "hostd_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()
