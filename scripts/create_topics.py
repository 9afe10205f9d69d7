"""Create the kafka transport's topics named in a host.yaml (Tansu does not auto-create them)."""

from __future__ import annotations

import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from hostd.cli import load


async def create(config: str) -> None:
    settings, _ = load(config)
    kafka = settings.transports.get("kafka")
    if kafka is None:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {kafka.input_topic: 4, kafka.output_topic: 4, kafka.dead_letter_topic: 1}
        missing = [NewTopic(name, partitions, 1) for name, partitions in wanted.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(create(sys.argv[1] if len(sys.argv) > 1 else "host.yaml"))
