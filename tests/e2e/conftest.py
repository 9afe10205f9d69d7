"""Fixtures for the end-to-end tests that need a broker (see brokers.py)."""

from tests.e2e.brokers import start_redis, start_tansu

__all__ = ["start_redis", "start_tansu"]
