"""A client as admission sees it: one connection (HTTP, gRPC, WebSocket) or one ZeroMQ peer.

A transport makes one ``Client`` per connection and passes it with every prediction, so the data plane
can hold each client to its share of a model (``max_pending_per_client``): a client that floods a
model, or sends thousands of requests and leaves, fills its own share, never ``max_pending`` alone.
When a client goes, its transport cancels the client's outstanding predictions; a cancelled request
still queued leaves the queue without reaching the model (``hostd.microbatch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hostd.errors import Overloaded
from hostd.refusals import RefusalRun

if TYPE_CHECKING:
    from hostd.auth import Principal
    from hostd.registry import ServedModel


class Client:
    __slots__ = ("address", "label", "pending", "principal", "refusals")

    def __init__(self, label: str, principal: Principal | None = None, address: str | None = None) -> None:
        self.label = label  # who it is, for logs: "127.0.0.1:53422", a ZeroMQ identity
        self.address = address or label  # a rate limit's key when there are no API keys (an IP address)
        self.pending: dict[str, int] = {}  # model name -> this client's requests pending there
        # Who it authenticated as, where the transport authenticates a connection once (WebSocket,
        # ZeroMQ CURVE); each message is then held to that key's scopes, models and rate limit.
        # None: the transport checks per request (HTTP, gRPC) or trusts its broker (Kafka, arq).
        self.principal = principal
        self.refusals = RefusalRun()  # its current run of refusals, to hold back a client that keeps asking

    def __repr__(self) -> str:
        return f"Client({self.label!r})"


def overloaded(served: ServedModel, client: Client | None) -> Overloaded | None:
    """Why ``client`` may not add a request to the model now: the model's queue is full, or this
    client already holds its share of it."""
    if served.pending >= served.settings.max_pending:
        return Overloaded(f"model '{served.name}' has {served.pending} requests pending "
                          f"(max_pending: {served.settings.max_pending}); retry later")
    if client is not None:
        share = served.settings.max_pending_per_client or served.settings.max_pending
        if client.pending.get(served.name, 0) >= share:
            return Overloaded(f"this client already has {share} requests pending for model '{served.name}' "
                              f"(max_pending_per_client: {share}); wait for their answers before sending more")
    return None
