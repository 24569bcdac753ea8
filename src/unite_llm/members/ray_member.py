"""Any member inside a Ray actor: ``ray:<member spec>[?option=value&...]``.

Real ensembles are several large models that do not fit one GPU or one machine; Ray
places each member where its resources are (``num_gpus``, ``num_cpus``, custom
``resources``, or a named node) and the member's KV cache lives in its actor.

What crosses the wire, and why it is small:

* at load, once: the member's byte vocabulary, chat template and BOS/EOS text;
* per step, to the actor: the length of the prefix it already holds and only the
  changed suffix of token ids (usually one or two), plus the top-k settings;
* per step, back: the member's top-k ids and their logits, its end-of-generation
  logits and ``n_evaluated`` (about 100 bytes of numbers);
* per step, on demand: the logits of the union candidates it did not rank, in one
  batched ``at(ids)`` call (see :mod:`unite_llm.members.remote`);
* tokenization of the re-tokenized tail window (a few dozen bytes each way).

The full 262k-entry vector never travels unless someone calls ``np.asarray`` on it.

Options (keyword arguments, or a query string on the spec so that each member of one
ensemble can sit elsewhere: ``ray:gemma3-270m?num_gpus=1&n_gpu_layers=-1&node=10.0.0.7``):
``num_cpus`` (default 1, also the inner member's ``n_threads`` unless given),
``num_gpus`` (default 0), ``resources`` (dict), ``node`` (a node id or IP address:
hard placement with NodeAffinitySchedulingStrategy), ``placement_timeout_s``; every
other option goes to the inner member's loader.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from ..errors import InvalidConfigError, UniteError
from ..scores import top_k_ids
from ..vocab import ByteVocab
from .base import MemberBase, check_context, common_prefix
from .remote import RemoteLogits, WireStats, parse_spec

log = logging.getLogger("unite_llm.ray")

LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2  # a local cluster moves only small messages
DEFAULT_TOP_K = (10, False)  # the first step's guess at the step method's (k, ignore_eos)


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or
    start a local one on loopback if none is given and this process has none yet."""
    import ray

    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            _init_loopback_cluster()
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise InvalidConfigError(f"cannot reach a Ray cluster at {address or 'a new local cluster'}: {err}") from None


def _check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise InvalidConfigError(f"cannot reach a Ray cluster at {address}: {err}") from None


def _init_loopback_cluster() -> None:
    """A one-machine cluster whose every service listens on 127.0.0.1.

    Ray swaps a ``127.0.0.1`` node address for the machine's routable IP unless it runs
    in its single-machine mode (the default on macOS/Windows), which its
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` switch selects; the switch is read when the
    node starts, so it is set for this call only (the services it spawns inherit it).
    """
    import ray
    from ray._private import ray_constants

    saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            num_cpus=max(2, os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
        )
    finally:
        if saved[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


class MemberActor:
    """Runs inside the actor: one real member, its KV cache and its latest logits."""

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        from . import load_member

        self.member = load_member(spec, **options)
        self.context: list[int] = []
        self.logits: np.ndarray | None = None
        self.eog = np.array(sorted(self.member.vocab.eog_ids), dtype=np.int64)

    def info(self) -> dict[str, Any]:
        m = self.member
        return {
            "name": m.name,
            "pieces": list(m.vocab.pieces),
            "eog_ids": sorted(m.vocab.eog_ids),
            "n_ctx": m.n_ctx,
            "chat_template": m.chat_template,
            "bos_text": m.bos_text,
            "eos_text": m.eos_text,
            "node": __import__("ray").get_runtime_context().get_node_id(),
        }

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return self.member.tokenize(text, add_bos=add_bos, special=special)

    def step(
        self, keep: int, suffix: list[int], k: int, ignore_eos: bool, new_sequence: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Move to ``context[:keep] + suffix``; answer top-k ids+logits, EOG logits, n_evaluated.

        ``new_sequence``: this step starts a generation (see :func:`unite_llm.members.base.start_sequence`).
        """
        if new_sequence:
            from .base import start_sequence

            start_sequence(self.member)
        self.context = self.context[:keep] + suffix
        # The actor holds an in-process member: its scores are a full array (asarray copies nothing).
        self.logits = np.asarray(self.member.next_logits(self.context))
        ids, values = self.top_k(k, ignore_eos)
        return ids, values, self.logits[self.eog].astype(np.float32), self.member.n_evaluated

    def top_k(self, k: int, ignore_eos: bool) -> tuple[np.ndarray, np.ndarray]:
        assert self.logits is not None
        ids = np.asarray(top_k_ids(self.logits, self.member.vocab, k, ignore_eos=ignore_eos), dtype=np.int32)
        return ids, self.logits[ids].astype(np.float32)

    def at(self, ids: list[int]) -> np.ndarray:
        assert self.logits is not None
        return self.logits[np.asarray(ids, dtype=np.intp)].astype(np.float32)

    def full(self) -> np.ndarray:
        assert self.logits is not None
        return np.array(self.logits, dtype=np.float32)

    def reset(self) -> None:
        from .base import reset_cache

        reset_cache(self.member)
        self.context = []
        self.logits = None

    def close(self) -> None:
        self.member.close()


def _unwrap(err: Exception) -> Exception:
    """The user error behind a Ray error, if there is one (so the CLI prints one line)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, UniteError):
        return cause
    text = str(err)
    for cls in UniteError.__subclasses__():
        marker = f"{cls.__name__}: "
        if marker in text:
            return cls(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return err


def _strategy(node: str | None) -> Any:
    if node is None:
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    for n in alive:
        if node in (n["NodeID"], n.get("NodeManagerAddress"), n.get("NodeName")):
            return NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
    known = ", ".join(f"{n['NodeID'][:12]} ({n.get('NodeManagerAddress')})" for n in alive)
    raise InvalidConfigError(f"no live Ray node {node!r} (nodes: {known})")


class RayMember(MemberBase):
    """A member whose model runs in a Ray actor (see the module docstring)."""

    abilities = frozenset({"reset", "start_sequence"})

    def __init__(
        self,
        spec: str,
        *,
        name: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        node: str | None = None,
        placement_timeout_s: float = 300.0,
        ray_address: str | None = None,
        **options: Any,
    ) -> None:
        import ray

        inner, query = parse_spec(spec)
        placement: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "node": node,
            "placement_timeout_s": placement_timeout_s,
        }
        placement |= {key: query.pop(key) for key in list(query) if key in placement}
        resources = dict(resources or {}) | {key[10:]: query.pop(key) for key in list(query) if key.startswith("resources.")}
        options = {**options, **query}
        if options.get("n_threads") is None and placement["num_cpus"] >= 1:
            options["n_threads"] = int(placement["num_cpus"])  # the actor's CPUs are its thread budget
        connect(ray_address)
        actor_cls = ray.remote(MemberActor).options(
            num_cpus=placement["num_cpus"],
            num_gpus=placement["num_gpus"],
            resources=resources or None,
            scheduling_strategy=_strategy(placement["node"]),
        )
        # Any: Ray types a handle's methods as the class's plain methods (no ``.remote``) unless each
        # is decorated with ``@ray.method``, which would import Ray with this module.
        self.actor: Any = cast(Any, actor_cls.remote(inner, {**options, "name": name}))
        try:
            info = ray.get(self.actor.info.remote(), timeout=float(placement["placement_timeout_s"]))
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actor)
            raise InvalidConfigError(
                f"Ray could not place {inner!r} within {placement['placement_timeout_s']}s "
                f"(asked for num_cpus={placement['num_cpus']}, num_gpus={placement['num_gpus']}, resources={resources})"
            ) from None
        except Exception as err:
            ray.kill(self.actor)
            raise _unwrap(err) from None
        self.name = name or info["name"]
        self.node_id: str = info["node"]
        self.vocab = ByteVocab(info["pieces"], frozenset(info["eog_ids"]))
        self._eog = list(info["eog_ids"])
        self.n_ctx: int = info["n_ctx"]
        self.chat_template: str | None = info["chat_template"]
        self.bos_text: str = info["bos_text"]
        self.eos_text: str = info["eos_text"]
        self.n_evaluated = 0
        self.wire = WireStats()
        self._sent: list[int] = []  # the actor's context, as far as we told it
        self._new_sequence = False  # the next step starts a generation
        self._step = 0
        self._want = DEFAULT_TOP_K
        self._tokens: dict[tuple[bytes, bool, bool], list[int]] = {}

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        t0 = time.perf_counter()
        try:
            result = ray.get(getattr(self.actor, method).remote(*args))
        except Exception as err:
            raise _unwrap(err) from None
        self.wire.add(args, result, time.perf_counter() - t0)
        return result

    def tokenize(self, text: bytes, *, add_bos: bool = False, special: bool = False) -> list[int]:
        key = (bytes(text), add_bos, special)
        if key not in self._tokens:
            if len(self._tokens) > 4096:
                self._tokens.clear()
            self._tokens[key] = self._call("tokenize", key[0], add_bos, special)
        return list(self._tokens[key])

    def start_sequence(self) -> None:
        """The next step starts a generation; told to the actor with that step (no extra round trip)."""
        self._new_sequence = True

    def reset(self) -> None:
        """Forget the actor's KV cache (see :func:`unite_llm.members.base.reset_cache`)."""
        self._call("reset")
        self._sent = []

    def next_logits(self, context: Sequence[int]) -> RemoteLogits:
        check_context(self, len(context))
        context = list(context)
        keep = common_prefix(self._sent, context)
        k, ignore_eos = self._want
        new_sequence, self._new_sequence = self._new_sequence, False
        ids, values, eog_values, self.n_evaluated = self._call("step", keep, context[keep:], k, ignore_eos, new_sequence)
        self._sent = context
        self._step += 1
        step = self._step
        known = dict(zip(ids.tolist(), values.tolist())) | dict(zip(self._eog, eog_values.tolist()))

        def fetch_top(k: int, ignore_eos: bool) -> tuple[list[int], list[float]]:
            self._want = (k, ignore_eos)  # the next step answers with these settings directly
            top, top_values = self._call("top_k", k, ignore_eos)
            return top.tolist(), top_values.tolist()

        def fetch(missing: list[int]) -> tuple[list[float], list[int]]:
            return self._call("at", missing).tolist(), []

        return RemoteLogits(
            vocab=self.vocab,
            known=known,
            tops={(k, ignore_eos): ids.tolist()},
            fetch_top=fetch_top,
            fetch=fetch,
            fetch_full=lambda: self._call("full"),
            is_current=lambda: self._step == step,
        )

    def close(self) -> None:
        import ray

        if getattr(self, "actor", None) is None:
            return
        try:
            ray.get(self.actor.close.remote(), timeout=30)
        except Exception as err:  # the actor may already be gone with its cluster
            log.debug("closing %s: %s", self.name, err)
        ray.kill(self.actor)
        self.actor = None

    def __repr__(self) -> str:
        return f"RayMember({self.name!r}, node={self.node_id[:12]}, vocab={len(self.vocab)})"
