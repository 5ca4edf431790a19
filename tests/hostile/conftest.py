"""Fixtures of the hostile-input catalogue (builders in hostile_kit.py)."""

from hostile_kit import http_server  # noqa: F401  (a fixture, registered by being imported here)
