"""A full poll of slow rows through Kafka with batching on: each row keeps its own timeout_ms.

The bug this pins: predict_each gave a 64-row chunk a budget of timeout_ms x 64, but the batcher cut
every batch at timeout_ms, so 64 rows of 20 ms (1.28 s together, 20 ms each against a 1 s limit)
were dead-lettered whole.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from tests.e2e.brokers import Reader, Topics, produce, request
from tests.e2e.test_kafka_e2e import serve
from tests.support.e2e import Start, echo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


async def test_a_poll_of_slow_rows_is_predicted_when_each_row_is_within_timeout_ms(start_tansu: Start,
                                                                                     start_hostd: Start) -> None:
    broker = start_tansu()
    topics = Topics.named("slow-rows")
    await topics.create(broker.bootstrap)
    count = 64  # one predict_each chunk: one batch of 64 rows, 1.28 s of model time
    await produce(broker.bootstrap, topics.input,
                  [(b"k", request(str(i), "echo", {"x": i, "delay_ms": 20})) for i in range(count)])
    # Batching on (the default), one worker: the whole poll reaches the model as one batch.
    await serve(start_hostd, broker, topics, [echo(workers=1, timeout_ms=1000)])
    async with Reader(broker.bootstrap, topics.output, topics.dead_letter) as reader:
        await reader.until(lambda: len(reader.answered) >= count, 60, f"{count} outcomes")
    codes = Counter(orjson.loads(r.value)["error"]["code"] for r in reader.on(topics.dead_letter))
    assert not codes, f"rows of 20 ms against timeout_ms 1000 were dead-lettered: {dict(codes)}"
    assert sorted(orjson.loads(r.value)["prediction"]["y"] for r in reader.on(topics.output)) == \
        [2.0 * i for i in range(count)]
