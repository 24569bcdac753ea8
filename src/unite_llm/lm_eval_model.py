"""lm-evaluation-harness model ``unite``: an :class:`~unite_llm.engine.Ensemble` evaluated in process.

::

    lm_eval --model unite --model_args members=smollm2-135m-instruct+gemma3-270m,k=10 --tasks ...
    python -m unite_llm.lm_eval_model --model unite --model_args ... --tasks ...   # any lm-eval version

The three request types of lm-eval's ``LM``:

* ``generate_until``: :meth:`Ensemble.generate` on a list of contexts (one batch per
  chunk of ``batch_size`` requests with the same settings; it batches where the members
  can), greedy unless a task asks ``do_sample``; ``until`` are stop strings (never in the
  answer, found across steps), ``max_gen_toks`` counts ensemble steps (one union
  candidate each).
* ``loglikelihood``: the mixture of the members' probabilities of the continuation's
  bytes, ``log sum_i w_i p_i(continuation | context)``, each member in its own tokenization
  (:mod:`unite_llm.loglik` defines it); ``is_greedy`` is whether the ensemble's own greedy
  decode of the context begins with the continuation.  That is the test lm-eval means
  (would this model generate it?) for the ensemble as it really decodes: requiring every
  member's argmax at every one of its tokens would be a different model (the members'
  unanimous vote, in token sequences the ensemble need not follow), and a one-member
  ensemble decodes exactly as its member, so for it both agree.
* ``loglikelihood_rolling``: the mixture of the members' whole-text probabilities, each
  computed over rolling windows of its context as lm-eval does.

With ``--apply_chat_template`` the contexts are chats: :meth:`UniteLM.apply_chat_template`
returns the messages (marked JSON) and every member renders them with its own template.

Model arguments (``--model_args key=value,...``): ``members`` (specs joined by ``+``;
default: the config's, else the default ensemble with its robust settings, as for ``unite
generate``: :mod:`unite_llm.builder`), ``k``, ``method``, ``weights`` (joined by ``+``),
``primary``, ``n_ctx``, ``n_threads``, ``n_seq`` (sequences each llama.cpp member decodes
together; default ``batch_size``), ``parallel``, ``prefix_cache``, ``config`` (an
ensemble config file, :mod:`unite_llm.config`), ``seed`` (for sampled tasks),
``max_gen_toks`` (default 256), ``greedy_check`` (``False`` skips the decode behind
``is_greedy`` and reports False), ``batch_size`` (in ``model_args`` or lm-eval's own
``--batch_size``; ``model_args`` wins when both are given), ``scores_file`` (a JSONL record of every
member's log-likelihood of every request, appended as they are computed and reused when the
run is started again: a killed run resumes, and each member's own accuracy, or any subset's
mixture, can be computed afterwards from the one run; see :class:`ScoresFile`).  From Python, ``UniteLM(ensemble=ens)``
wraps an ensemble already loaded (it is then not closed by this model).

lm-eval finds ``unite`` in three ways: importing this module registers it (so
``lm_eval.simple_evaluate(model="unite", ...)`` works after ``import
unite_llm.lm_eval_model``); ``python -m unite_llm.lm_eval_model ARGS`` is lm-eval's own
command line with the model registered (the route for lm-eval 0.4.x, which has no plugin
discovery); and the ``lm_eval.models`` entry point in ``pyproject.toml`` lets lm-eval
versions with plugin discovery find it with no import at all.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import lm_eval.models  # noqa: F401  (lm-eval's own models first: its get_model imports them only into an empty registry)
import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from .cli._app import parse_gate, parse_weighting  # the same text rules as --gate/--weighting
from .engine import Ensemble
from .errors import InvalidConfigError, UniteError
from .loglik import Chat, Context, choice_mixture, ensemble_loglik, ensemble_rolling_loglik, greedy_prefixes, mixture
from .sampling import GenerationConfig

log = logging.getLogger("unite_llm")

DEFAULT_MAX_GEN_TOKS = 256
_AUTO_BATCH = 16
# Generation settings of lm-eval tasks that the ensemble reads; others are ignored with a warning.
_KNOWN_GEN_KWARGS = {"until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_p", "seed"}
CHAT_MARK = "<unite-chat>"
"""Starts the context strings :meth:`UniteLM.apply_chat_template` returns (the messages as JSON):
every member renders them with its own chat template, so no single rendered string exists."""


def as_context(context: str) -> Context:
    """An lm-eval context string: raw text, or a chat from :meth:`UniteLM.apply_chat_template`."""
    if not context.startswith(CHAT_MARK):
        return context
    data = json.loads(context[len(CHAT_MARK) :])
    return Chat(tuple(data["messages"]), bool(data["add_generation_prompt"]))


def _split(value: Any, what: str) -> list[str]:
    """``"a+b"`` (lm-eval's model_args cannot hold commas) or a list -> ``["a", "b"]``."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    parts = [p.strip() for p in str(value).split("+")]
    if not all(parts):
        raise InvalidConfigError(f"{what}: empty entry in {value!r} (join entries with '+')")
    return parts


def _gate(value: Any) -> float | dict[str, Any] | bool | None:
    """``gate=0.2``, ``gate=margin=0.1`` or ``gate=off`` (lm-eval reads a bare number as a float)."""
    if value is None or isinstance(value, bool):  # lm-eval reads "false" as False: off, as "off"
        return False if value is False else None
    return float(value) if isinstance(value, int | float) else parse_gate(str(value))


def _batch_size(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, int) and not isinstance(value, bool):
        return max(1, value)
    text = str(value)
    if text.isdigit():
        return max(1, int(text))
    if text.startswith("auto"):
        return _AUTO_BATCH
    raise InvalidConfigError(f"batch_size must be an integer or 'auto', got {value!r}")


_INT_ARGS = ("k", "n_ctx", "n_threads", "n_seq", "seed", "max_gen_toks", "max_batch_size")
_BOOL_ARGS = ("parallel", "prefix_cache", "greedy_check")


def check_model_args(args: dict[str, Any]) -> None:
    """``--model_args`` values of the wrong type as one :class:`InvalidConfigError` naming the
    argument (``k=abc`` was a raw ``ValueError`` from ``int("abc")``)."""
    for name in _INT_ARGS:
        value = args.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():  # lm-eval reads "-1" as -1.0
            value = int(value)  # and int() reads it back the same
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            raise InvalidConfigError(f"model_args {name}={value!r}: expected an integer")
    for name in _BOOL_ARGS:
        value = args.get(name)
        if value is not None and not isinstance(value, bool):
            raise InvalidConfigError(f"model_args {name}={value!r}: expected true or false")
    weights = args.get("weights")
    if weights is not None and not isinstance(weights, int | float):
        for part in _split(weights, "weights"):
            try:
                float(part)
            except ValueError:
                raise InvalidConfigError(f"model_args weights={weights!r}: {part!r} is not a number") from None


class ScoresFile:
    """Every member's log-likelihood of each ``(context, continuation)``, one JSON line each.

    Lines are appended (and flushed) as requests are scored, so a run killed half-way loses
    nothing: started again with the same file, it reuses the lines whose members are the
    ensemble's and scores only the rest.  Each line holds ``members``, ``weights``,
    ``context``, ``continuation``, ``member_logliks`` and the ensemble's ``loglik``; a member's
    own log-likelihood is exactly what a one-member ensemble reports, and the ensemble's is
    their mixture (:func:`~unite_llm.loglik.mixture`), so a subset's can be recomputed too.
    """

    def __init__(self, path: str | Path, members: Sequence[str]) -> None:
        self.path = Path(path)
        self.members = list(members)
        self.known: dict[tuple[str, str], list[float]] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: scored again
                        log.warning("unite: %s line %d is not JSON and is ignored", self.path, n)
                        continue
                    if row.get("members") == self.members:
                        self.known[(row["context"], row["continuation"])] = [float(x) for x in row["member_logliks"]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        if torn:  # the next line must not be glued to a line cut by a kill
            self._file.write("\n")

    def get(self, context: str, continuation: str) -> list[float] | None:
        return self.known.get((context, continuation))

    def add(self, context: str, continuation: str, weights: Sequence[float] | np.ndarray, lls: Sequence[float]) -> None:
        self.known[(context, continuation)] = list(lls)
        if self._file is None:
            return
        row = {
            "members": self.members,
            "weights": [float(w) for w in weights],
            "context": context,
            "continuation": continuation,
            "member_logliks": [float(x) for x in lls],
            "loglik": mixture(lls, weights),
        }
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class UniteLM(LM):
    """A UniTE ensemble as an lm-eval model (see the module docstring)."""

    def __init__(
        self,
        members: str | Sequence[str] | None = None,
        *,
        ensemble: Ensemble | None = None,
        config: str | None = None,
        k: int | None = None,
        method: str | None = None,
        weights: str | Sequence[float] | float | None = None,
        primary: str | int | None = None,
        gate: str | float | None = None,
        weighting: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_seq: int | None = None,
        parallel: bool | None = None,
        prefix_cache: bool = True,
        seed: int | None = 1234,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        greedy_check: bool = True,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        scores_file: str | None = None,
        device: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        check_model_args(locals())
        if unknown:
            raise InvalidConfigError(f"unknown model_args for unite: {', '.join(sorted(unknown))}")
        if device is not None:
            log.info("unite: --device %s ignored (members carry their own device options)", device)
        self._owned = ensemble is None
        self.batch_size = _batch_size(batch_size)
        if ensemble is None:
            from .builder import build_ensemble

            # llama.cpp members decode a batch together when they keep that many sequences.
            seqs = int(n_seq) if n_seq is not None else self.batch_size
            # The same rules as `unite generate` (unite_llm.builder): a config file's settings apply,
            # None is not given, and with neither members nor a config the default ensemble is used.
            ensemble = build_ensemble(
                config,
                members=_split(members, "members") or None,
                k=None if k is None else int(k),
                method=method,
                weights=None if weights is None else [float(x) for x in _split(weights, "weights")],
                primary=primary,
                gate=_gate(gate),
                weighting=None if weighting is None else parse_weighting(str(weighting).replace("+", ",")),
                parallel=parallel,
                prefix_cache=prefix_cache,
                n_ctx=None if n_ctx is None else int(n_ctx),
                n_threads=None if n_threads is None else int(n_threads),
                n_seq=seqs if seqs > 1 else None,
            )
        self.ensemble = ensemble
        self.seed = seed
        self.max_gen_toks = int(max_gen_toks)
        self.greedy_check = bool(greedy_check)
        self._pool: ThreadPoolExecutor | None = None
        if self.ensemble.parallel and len(self.ensemble.members) > 1:
            self._pool = ThreadPoolExecutor(max_workers=len(self.ensemble.members), thread_name_prefix="unite-score")
        self._warned: set[str] = set()
        self.scores = ScoresFile(scores_file, self.ensemble.names) if scores_file else None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> UniteLM:
        """lm-eval's constructor from ``--model_args`` and its own options (``--batch_size``,
        ``--max_batch_size``, ``--device``): an option also given in ``model_args`` is taken from
        there (lm-eval's base class passed both, a ``TypeError``)."""
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> UniteLM:
        """As :meth:`create_from_arg_string`, from a dict of model arguments."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    def close(self) -> None:
        """Stop the scoring threads; close the ensemble if this model loaded it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.scores is not None:
            self.scores.close()
        if self._owned:
            self.ensemble.close()

    def __del__(self) -> None:  # lm-eval never closes its models
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # -- lm-eval's three request types ------------------------------------------------

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_context.setdefault(req.args[0], []).append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="unite loglikelihood")
        # A question's choices together: members reuse the log-probabilities of the shared context,
        # and one greedy decode answers is_greedy for all of them.
        ens = self.ensemble
        for text, rows in by_context.items():
            context = as_context(text)
            conts = [requests[i].args[1] for i in rows]
            members = np.array([self._member_lls(text, context, c) for c in conts]).T  # [member, choice]
            if len(rows) > 1 and (ens.gate is not None or ens.weighting):
                # A robust ensemble ranks a question's choices as UniTE ranks a union (loglik.choice_mixture).
                lls = choice_mixture(members, ens.weights, rules=ens.weighting, primary=ens.primary, gate=ens.gate).tolist()
            else:
                lls = [mixture(col, ens.weights) for col in members.T]
            greedy = greedy_prefixes(self.ensemble, context, conts) if self.greedy_check else [False] * len(rows)
            for i, ll, g in zip(rows, lls, greedy):
                results[i] = (ll, g)
                self.cache_hook.add_partial("loglikelihood", requests[i].args, (ll, g))
            bar.update(len(rows))
        bar.close()
        return [r if r is not None else (float("nan"), False) for r in results]

    def _member_lls(self, text: str, context: Context, continuation: str) -> list[float]:
        """Every member's log-likelihood of the request, from the scores file when it has it."""
        known = self.scores.get(text, continuation) if self.scores is not None else None
        if known is not None:
            return known
        _, lls = ensemble_loglik(self.ensemble, context, continuation, pool=self._pool)
        if self.scores is not None:
            self.scores.add(text, continuation, self.ensemble.weights, lls)
        return lls

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        results: list[float] = []
        for req in tqdm(requests, disable=disable_tqdm, desc="unite loglikelihood_rolling"):
            (text,) = req.args
            ll, _ = ensemble_rolling_loglik(self.ensemble, text, pool=self._pool)
            results.append(ll)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, ll)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, tuple[tuple[GenerationConfig, bool], list[int]]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            config = self.generation_config(gen_kwargs)
            chat = context.startswith(CHAT_MARK)
            key = json.dumps([config.max_new_tokens, config.temperature, config.top_p, config.seed, list(config.stop), chat])
            groups.setdefault(key, ((config, chat), []))[1].append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="unite generate_until")
        for (config, chat), rows in groups.values():
            for at in range(0, len(rows), self.batch_size):
                chunk = rows[at : at + self.batch_size]
                prompts: list[Any] = [self._prompt(requests[i].args[0], config.max_new_tokens) for i in chunk]
                outputs = self.ensemble.generate(prompts, config, chat=chat)
                for i, out in zip(chunk, outputs):
                    results[i] = out.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, out.text)
                bar.update(len(chunk))
        bar.close()
        return [r if r is not None else "" for r in results]

    def _prompt(self, context: str, max_new_tokens: int) -> Any:
        """What ``Ensemble.generate`` takes for an lm-eval context: text cut to fit, or a chat's messages."""
        parsed = as_context(context)
        if not isinstance(parsed, Chat):
            return self.fit_context(parsed, max_new_tokens)
        if not parsed.add_generation_prompt:
            raise InvalidConfigError("unite: a chat that continues its last message (a task's gen_prefix) cannot be generated")
        return list(parsed.messages)

    # -- chat templates (--apply_chat_template) -------------------------------------------

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The messages themselves, marked (:data:`CHAT_MARK`): each member renders them with its own template."""
        payload = {"messages": chat_history, "add_generation_prompt": add_generation_prompt}
        return CHAT_MARK + json.dumps(payload, ensure_ascii=False)

    @property
    def tokenizer_name(self) -> str:
        return "unite:" + "+".join(self.ensemble.names)

    def chat_template(self, chat_template: bool | str = False) -> str:
        """Every member's own template (lm-eval records it and keys its request cache on it)."""
        return json.dumps({m.name: m.chat_template for m in self.ensemble.members}, ensure_ascii=False)

    def fit_context(self, context: str | bytes, max_new_tokens: int) -> str:
        """``context`` without as many leading characters as it takes for every member to hold it
        and ``max_new_tokens`` more tokens (at most half its window); lm-eval's models truncate
        the same way, on the left."""
        original = data = context.encode("utf-8") if isinstance(context, str) else bytes(context)
        for _ in range(4):
            cut = 0
            for m in self.ensemble.members:
                room = m.n_ctx - min(max_new_tokens, m.n_ctx // 2) - 1
                ids = m.tokenize(data, add_bos=True, special=True)
                if len(ids) > room:
                    cut = max(cut, len(m.vocab.decode(ids[: len(ids) - room])) + 1)
            if cut == 0:
                break
            while cut < len(data) and data[cut] & 0xC0 == 0x80:  # not inside a character
                cut += 1
            data = data[cut:]
        if len(data) < len(original):
            log.warning("unite: context cut to its last %d bytes to fit the members' windows", len(data))
        return data.decode("utf-8")

    def generation_config(self, gen_kwargs: dict[str, Any] | None) -> GenerationConfig:
        """lm-eval's ``generation_kwargs`` as the ensemble's :class:`GenerationConfig`."""
        kw = dict(gen_kwargs or {})
        for name in sorted(set(kw) - _KNOWN_GEN_KWARGS):
            if name not in self._warned:
                self._warned.add(name)
                log.warning("unite: generation setting %s=%r is not supported and is ignored", name, kw[name])
        until = kw.get("until") or []
        stops = [until] if isinstance(until, str) else [str(s) for s in until]
        max_new = kw.get("max_gen_toks", kw.get("max_new_tokens", self.max_gen_toks))
        temperature = float(kw.get("temperature", 0.0) or 0.0)
        sample = bool(kw.get("do_sample", False)) and temperature > 0
        return GenerationConfig(
            max_new_tokens=int(max_new),
            temperature=temperature if sample else 0.0,
            top_p=float(kw.get("top_p", 1.0) or 1.0) if sample else 1.0,
            seed=int(seed) if sample and (seed := kw.get("seed", self.seed)) is not None else None,
            stop=tuple(s for s in stops if s),
        )


if __name__ != "__main__":  # run as a script, the module registers under its import name instead (below)
    register_model("unite")(UniteLM)


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with ``unite`` registered: ``python -m unite_llm.lm_eval_model --model unite ...``."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except UniteError as err:  # a user error: one line and its exit code, as `unite` gives
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except ValueError as err:  # lm-eval's own user error for a task name it does not know
        if not str(err).startswith("Tasks not found"):
            raise
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    from unite_llm.lm_eval_model import main as _main  # registers "unite" once, as unite_llm.lm_eval_model.UniteLM

    _main()
