"""A client as admission sees it: one connection (HTTP, gRPC, WebSocket) or one ZeroMQ peer.

A transport makes one ``Client`` per connection and passes it with every prediction, so the data plane
can hold each client to its share of a model (``max_pending_per_client``): a client that floods a
model, or sends thousands of requests and leaves, fills its own share, never ``max_pending`` alone.
When a client goes, its transport cancels the client's outstanding predictions; a cancelled request
still queued leaves the queue without reaching the model (``hostd.microbatch``).
"""

from __future__ import annotations


class Client:
    __slots__ = ("label", "pending")

    def __init__(self, label: str) -> None:
        self.label = label  # who it is, for logs: "127.0.0.1:53422", a ZeroMQ identity
        self.pending: dict[str, int] = {}  # model name -> this client's requests pending there

    def __repr__(self) -> str:
        return f"Client({self.label!r})"
