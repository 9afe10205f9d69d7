"""hostd.readahead: a reader's burst comes out as one group; the reader waits while too many are unanswered."""

from __future__ import annotations

import asyncio

import pytest

from hostd.readahead import ReadAhead

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_what_the_reader_puts_before_it_waits_is_one_group() -> None:
    ahead: ReadAhead[int] = ReadAhead(limit=100)
    groups: list[list[int]] = []

    async def collect() -> None:
        async for group in ahead.groups():
            groups.append(group)
            ahead.answered(len(group))

    collecting = asyncio.create_task(collect())
    for burst in ([1, 2, 3], [4], [5, 6]):
        for message in burst:
            await ahead.put(message)  # room: no wait, so the burst is put in one go
        await asyncio.sleep(0.01)  # the reader waits for the network
    ahead.close()
    await asyncio.wait_for(collecting, 5)
    assert groups == [[1, 2, 3], [4], [5, 6]]


async def test_put_waits_while_limit_messages_are_unanswered_and_close_yields_what_is_left() -> None:
    ahead: ReadAhead[int] = ReadAhead(limit=2)
    await ahead.put(1)
    await ahead.put(2)
    third = asyncio.create_task(ahead.put(3))
    await asyncio.sleep(0.01)
    assert not third.done(), "a third message was read with two unanswered"
    ahead.answered(1)
    await asyncio.wait_for(third, 5)
    ahead.close()
    assert [group async for group in ahead.groups()] == [[1, 2, 3]]
