"""Process workers: the model loaded in each child process, so GIL-bound models use every core.

``workers: {kind: process, count: N}``. Each child builds the model from the same settings
(class_path, configuration, decorators) when it starts. A child that dies mid-call fails that call
with MODEL_ERROR and the pool is replaced, so the next request is served.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hostd.errors import ModelError

_batch_function: Any = None  # in a child: the loaded model's predict_batch


def _load(settings: dict[str, Any]) -> None:
    global _batch_function
    from hostd.loading import load_model
    from hostd.model import batch_function
    from hostd.settings import ModelSettings

    _batch_function = batch_function(load_model(ModelSettings.model_validate(settings)))


def _predict(inputs: list[Any]) -> list[Any]:
    return list(_batch_function(inputs))


def _ready() -> bool:
    return _batch_function is not None


class ProcessWorkers:
    def __init__(self, settings: dict[str, Any], count: int, name: str) -> None:
        self._settings, self._count, self._name = settings, count, name
        # spawn, not fork: the daemon has threads (and an event loop) that a fork would copy mid-flight.
        self._context = multiprocessing.get_context("spawn")
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._count, mp_context=self._context, initializer=_load,
                                   initargs=(self._settings,))

    def warm_up(self) -> None:
        """Start the children and load the model in them (blocking; call it off the event loop)."""
        for future in [self._pool.submit(_ready) for _ in range(self._count)]:
            future.result()

    async def run(self, inputs: list[Any]) -> list[Any]:
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(_predict, inputs))
        except BrokenProcessPool:
            if pool is self._pool:  # the first caller to notice replaces it
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise ModelError(f"model '{self._name}': a worker process died during the call; "
                             "it has been replaced") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
