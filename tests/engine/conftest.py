"""Fixtures for the engine tests: one CPU thread (the test machines are small and shared)."""

from tests.models.fixtures import one_cpu_thread  # noqa: F401 - an autouse fixture, found by name
