"""unite-llm: decode-time ensembling of LLMs with different tokenizers (UniTE).

Implements *Determine-Then-Ensemble: Necessity of Top-k Union for LLM Ensembling*
(Yao et al., ICLR 2025)::

    from unite_llm import Ensemble
    with Ensemble.load(["smollm2-135m-instruct", "gemma3-270m"]) as ens:
        print(ens.generate("The capital of France is", max_new_tokens=16).text)
"""

from .builder import build_ensemble
from .config import EnsembleConfig
from .engine import Ensemble, GenerationOutput, StepRecord, StreamChunk, Timing, UnionEntry
from .errors import ContextLengthError, InvalidConfigError, InvalidInputError, ModelNotFoundError, UniteError
from .members import Member, load_member
from .models import DEFAULT_ENSEMBLE
from .sampling import GenerationConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENSEMBLE",
    "ContextLengthError",
    "Ensemble",
    "EnsembleConfig",
    "GenerationConfig",
    "GenerationOutput",
    "InvalidConfigError",
    "InvalidInputError",
    "Member",
    "ModelNotFoundError",
    "StepRecord",
    "StreamChunk",
    "Timing",
    "UnionEntry",
    "UniteError",
    "build_ensemble",
    "load_member",
]
