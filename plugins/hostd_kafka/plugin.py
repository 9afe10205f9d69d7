"""The Kafka transport (aiokafka): a consumer group on input_topic, replies to output_topic.

Each request yields exactly one message: the envelope reply on ``output_topic`` (same key) or, on
any error, a dead letter on ``dead_letter_topic`` with the original value and where it came from.
Offsets are committed only after every output before them is acknowledged (acks=all): after a
crash messages may be processed twice, never lost. A broker that is down (at start or later) is
retried with backoff while the daemon's other transports keep serving.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field

from hostd.errors import describe
from hostd.hookspecs import hookimpl
from hostd.transports import Transport, TransportContext

log = structlog.get_logger("hostd.kafka")


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "hostd"
    input_topic: str = "hostd.requests"
    output_topic: str = "hostd.predictions"
    dead_letter_topic: str = "hostd.dead-letters"
    client_id: str = "hostd"
    max_batch: int = Field(default=500, ge=1)  # messages handed to the data plane per poll
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    retry_backoff_s: float = Field(default=1.0, gt=0)  # doubles up to retry_backoff_max_s
    retry_backoff_max_s: float = Field(default=30.0, gt=0)


async def serve_kafka(ctx: TransportContext, *, task_status: TaskStatus[None]) -> None:
    try:
        from hostd_kafka.stream import Stream
    except ImportError as exc:
        raise RuntimeError("the kafka transport needs aiokafka: pip install 'hostd[kafka]'") from exc
    settings: KafkaSettings = ctx.settings
    task_status.started()  # readiness does not wait for the broker; the loop below retries
    backoff = settings.retry_backoff_s
    while not ctx.stop.is_set():
        stream = Stream(ctx.dataplane, settings)
        try:
            await stream.run(ctx.stop, on_connected=lambda: log.info("kafka connected",
                                                                     servers=settings.bootstrap_servers))
            backoff = settings.retry_backoff_s
        except Exception as exc:  # broker down or gone: log, wait, reconnect
            log.warning("kafka unavailable; retrying", error=describe(exc), retry_in_s=backoff)
            with anyio.move_on_after(backoff):
                await ctx.stop.wait()
            backoff = min(backoff * 2, settings.retry_backoff_max_s)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()


@hookimpl
def register_transports(register):  # type: ignore[no-untyped-def]
    register(Transport(name="kafka", settings=KafkaSettings, serve=serve_kafka))
