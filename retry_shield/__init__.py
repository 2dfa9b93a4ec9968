"""Retry shield: a local buffering proxy that hides flaky LLM APIs from their clients.

Run it with ``python proxy.py``; README.md's code map says which module owns what.
"""

__version__ = "1.0.0"
SERVICE_NAME = "retry-shield"
