"""Defaults shared by several entry points, kept in one place so that they agree.

This module imports nothing (``unite serve``'s flags read it without the ``serve`` extra).
"""

from __future__ import annotations

DEFAULT_MAX_BATCH = 8
"""Requests decoded together by ``unite serve`` and :func:`unite_llm.server.create_app`."""

DEFAULT_MAX_TOKENS = 512
"""Completion length when a served request sets no ``max_tokens`` (chat) and the config's
``generation`` block sets no ``max_new_tokens``."""
