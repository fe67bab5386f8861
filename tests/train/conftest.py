"""Fixtures for the tests of the commands (medens/train): one CPU thread, and ``offline`` (no hub, empty cache)."""

from tests.models.fixtures import offline, one_cpu_thread  # noqa: F401 - fixtures, found by name
