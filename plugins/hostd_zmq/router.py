"""A ROUTER socket served on the event loop: read, answer concurrently (bounded), drain on stop.

What was read in one burst is answered as one group per peer (hostd.readahead): a pipelined DEALER's
requests reach the data plane together.

Each peer (routing identity) is one ``Client`` to admission, so one DEALER holds at most its share
of a model. A peer that has gone is learned when a reply to it cannot be routed (ROUTER_MANDATORY's
EHOSTUNREACH; libzmq's ROUTER_NOTIFY is a draft API, not in pyzmq's wheels); its outstanding
requests are then cancelled, so what it left queued never reaches the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import structlog
import zmq
import zmq.asyncio

from hostd.auth import Principal
from hostd.clients import Client
from hostd.ratelimitedlog import RateLimitedLog
from hostd.readahead import ReadAhead
from hostd.tasks import BoundedTasks
from hostd.transports import Shutdown

log = structlog.get_logger("hostd.zmq")

Send = Callable[[list[bytes]], Awaitable[None]]
#: Answers one peer's messages (each its received frames, routing identity first, in the order read):
#: sends each reply (and anything else, such as heartbeats) with the given Send, as soon as it is ready.
#: Gets the peer as admission sees it.
Respond = Callable[[list[list[bytes]], Send, Client], Awaitable[None]]
#: The principal (hostd.auth) of a peer from its CURVE User-Id, or None when it has none.
Identify = Callable[[str | None], Principal]
#: Departed peers remembered, so the requests they left unread in the socket are dropped unanswered.
REMEMBERED_DEPARTURES = 4096


@contextmanager
def router_socket(*, high_water_mark: int, max_message_bytes: int) -> Iterator[zmq.asyncio.Socket]:
    """A ROUTER socket (not yet bound), closed without lingering on exit."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # Replies are sent without waiting (see Peers.send): to a peer that has gone they fail at once
    # (EHOSTUNREACH, which is how we learn it left), to a peer whose queue is full they are dropped;
    # the high-water marks bound what a slow peer can make us queue.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, high_water_mark)
    sock.setsockopt(zmq.RCVHWM, high_water_mark)
    # Messages a little over the limit get a PAYLOAD_TOO_LARGE reply; far over it, ZeroMQ drops the
    # peer before buffering the whole message.
    sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_message_bytes)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)  # term() would block the loop


class Peer:
    __slots__ = ("client", "gone", "outstanding", "tasks")

    def __init__(self, identity: bytes) -> None:
        self.client = Client(f"zmq:{identity.hex()}")
        self.outstanding = 0  # requests read and not yet answered (some may not have started)
        self.tasks: set[asyncio.Task[object]] = set()  # those of them running
        self.gone = False


class Peers:
    """The peers with requests outstanding, by routing identity; a peer leaves the table when its
    last request is answered, so the table is as big as the work in flight."""

    def __init__(self, sock: zmq.asyncio.Socket, bind: str) -> None:
        self.sock = sock
        self.bind = bind
        self.active: dict[bytes, Peer] = {}
        # ZeroMQ-made identities (a zero byte first) are never reused, so their requests read after
        # they left can be dropped; a peer that chose its identity may reconnect under it.
        self.departed: dict[bytes, None] = {}
        self.dropped = RateLimitedLog(log)  # a line per interval, however many replies a stalled peer misses

    def admit(self, identity: bytes) -> Peer | None:  # one message
        """The peer a request read from ``identity`` belongs to; None if that peer is known to be gone."""
        peer = self.active.get(identity)
        if peer is None:
            if identity in self.departed:
                return None
            peer = self.active[identity] = Peer(identity)
        peer.outstanding += 1
        return peer

    def done(self, identity: bytes, peer: Peer, messages: int = 1) -> None:
        peer.outstanding -= messages
        if not peer.outstanding and self.active.get(identity) is peer:
            del self.active[identity]

    async def send(self, frames: list[bytes]) -> None:
        try:
            await self.sock.send_multipart(frames, flags=zmq.DONTWAIT)
        except zmq.Again:  # its queue is full (high_water_mark): it is not reading
            self.dropped.warning("full", "zmq reply dropped: the peer does not read its replies (its queue holds "
                                 "high_water_mark of them)", bind=self.bind)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.departed_peer(frames[0])

    def departed_peer(self, identity: bytes) -> None:
        """Cancel what ``identity`` has outstanding: there is no one to answer."""
        peer = self.active.pop(identity, None)
        if identity[:1] == b"\x00":
            self.departed[identity] = None
            if len(self.departed) > REMEMBERED_DEPARTURES:
                del self.departed[next(iter(self.departed))]
        if peer is None:
            return
        peer.gone = True
        current = asyncio.current_task()
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        log.debug("zmq peer left; its requests are cancelled", bind=self.bind, client=peer.client.label,
                  cancelled=len(peer.tasks))


async def serve_router(sock: zmq.asyncio.Socket, respond: Respond, stop: Shutdown, *, max_in_flight: int,
                       bind: str, identify: Identify | None = None, curve: bool = False) -> None:
    """Answer what ``sock`` receives until ``stop``, then what was accepted by the drain deadline.
    With ``identify``, each peer's Client carries the principal of its CURVE User-Id (None without CURVE)."""
    peers = Peers(sock, bind)
    ahead: ReadAhead[tuple[list[bytes], Peer]] = ReadAhead(max_in_flight)
    queued: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)  # the same socket, not owned: its blocking API

    async def receive(copy: bool = True) -> Any:
        """The next message: one already queued is taken at once, without the asyncio socket's future
        and event check per message (more than a third of the loop's time under pipelined load);
        only when none is queued does it wait, through the asyncio socket (which checks the
        socket's events again, so nothing that arrived meanwhile goes unnoticed)."""
        try:
            return queued.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return await sock.recv_multipart(copy=copy)

    async def answer(messages: list[list[bytes]], peer: Peer) -> None:
        identity = messages[0][0]
        try:
            if peer.gone:  # left before these requests started
                return
            task = asyncio.current_task()
            assert task is not None
            peer.tasks.add(task)
            try:
                await respond(messages, peers.send, peer.client)
            except Exception:
                log.exception("zmq reply failed", bind=bind)
            finally:
                peer.tasks.discard(task)
        finally:
            peers.done(identity, peer, len(messages))
            ahead.answered(len(messages))

    async def answer_groups(replies: BoundedTasks) -> None:
        async for group in ahead.groups():
            by_peer: dict[int, tuple[Peer, list[list[bytes]]]] = {}
            for frames, peer in group:
                by_peer.setdefault(id(peer), (peer, []))[1].append(frames)
            for peer, messages in by_peer.values():
                await replies.spawn(answer(messages, peer))

    async with BoundedTasks(max_in_flight, stop) as replies, anyio.create_task_group() as tg:
        tg.start_soon(answer_groups, replies)
        try:
            with anyio.CancelScope() as reading:
                tg.start_soon(_cancel_on, stop, reading)
                while True:
                    if curve:  # Frame objects carry the User-Id the authenticator gave the connection
                        received = await receive(copy=False)
                        user: str | None = str(received[-1].get("User-Id"))
                        frames = [frame.bytes for frame in received]
                    else:
                        frames, user = await receive(), None
                    if (peer := peers.admit(frames[0])) is not None:
                        if identify is not None:
                            peer.client.principal = identify(user)
                        try:
                            await ahead.put((frames, peer))
                        except BaseException:  # stopped while waiting for room: it never starts
                            peers.done(frames[0], peer)
                            raise
        finally:
            ahead.close()


async def _cancel_on(stop: Shutdown, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
