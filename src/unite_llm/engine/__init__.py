"""The engine: members decoding as one model.

* :mod:`~unite_llm.engine.core`: :class:`EngineCore`, the member set and a step's four
  operations (``forward``, ``step``, ``record``, ``append``), and the members' turn;
* :mod:`~unite_llm.engine.batch`: :class:`DecodeBatch`, the one decode loop, and
  :func:`drive`, which feeds it rows (a list of prompts, or the server's queue);
* :mod:`~unite_llm.engine.ensemble`: :class:`Ensemble`, the public face over both;
* :mod:`~unite_llm.engine.outputs`: what a generation returns;
* :mod:`~unite_llm.engine.checks`: the settings' checks, before anything loads.
"""

from .batch import DecodeBatch, PromptFeed, RowFeed, drive
from .core import EngineCore
from .ensemble import Ensemble
from .outputs import GenerationOutput, StepRecord, StreamChunk, Timing, UnionEntry

__all__ = [
    "DecodeBatch",
    "EngineCore",
    "Ensemble",
    "GenerationOutput",
    "PromptFeed",
    "RowFeed",
    "StepRecord",
    "StreamChunk",
    "Timing",
    "UnionEntry",
    "drive",
]
