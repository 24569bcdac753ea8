"""OpenAI-compatible HTTP server for an ensemble (``unite serve``).

Needs the ``serve`` extra: ``pip install 'unite-llm[serve]'``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
