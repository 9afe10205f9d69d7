"""Fixtures for the end-to-end tests: the brokers (see brokers.py), and asyncio for the async tests."""

import pytest

from tests.e2e.brokers import start_redis, start_tansu

__all__ = ["anyio_backend", "start_redis", "start_tansu"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # hostd runs on asyncio, and so do the broker clients the tests use
