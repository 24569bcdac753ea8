"""``unite generate`` and ``unite models``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from ..errors import InvalidInputError
from ..prompts import as_utf8
from ._app import app, plan_from_flags, setup_logging, user_errors

ModelOpt = Annotated[
    Optional[list[str]], typer.Option("-m", "--model", help="Member: .gguf path, alias or prefix:spec. Repeat for each member.")
]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="Ensemble config file (JSON/YAML/TOML).")]
GateOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Consult the partners only on steps where the primary is unsure: THRESHOLD on its top-1 probability, "
        "margin=THRESHOLD on top-1 minus top-2, or off. Default: the default ensemble's gate, else off."
    ),
]
WeightingOpt = Annotated[
    Optional[str],
    typer.Option(help="Per-step weighting rules, comma-separated: floor=F (primary's weight at least F), entropy; or off."),
]
ChatTemplateOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--chat-template",
        help="MEMBER=TEMPLATE: force a chat template (builtin 'gemma', a .jinja file, or Jinja text) on a member "
        "that has none, e.g. a base model. Repeatable.",
    ),
]


def read_prompt(prompt: str) -> str:
    """``-`` reads standard input; either way the text must be valid UTF-8."""
    if prompt == "-":
        return as_utf8(sys.stdin.buffer.read(), "standard input").decode("utf-8")
    return as_utf8(prompt).decode("utf-8")


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text, or - to read standard input.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Top-k per member (paper: 10).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated member weights, e.g. 0.6,0.4.")] = None,
    method: Annotated[
        Optional[str], typer.Option(help="Method: unite (default), gac, deepen, deepen-fit, packllm, rank.")
    ] = None,
    primary: Annotated[Optional[str], typer.Option(help="Primary member: output follows its tokens.")] = None,
    gate: GateOpt = None,
    weighting: WeightingOpt = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", "-n", help="Ensemble steps (default: the config's, else 128).")
    ] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0: greedy (default: the config's, else 0).")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus (default: the config's, else 1).")] = None,
    seed: Optional[int] = None,
    stop: Annotated[
        Optional[list[str]],
        typer.Option(help="Stop string (repeatable); not included in the output. Default: the config's generation block."),
    ] = None,
    chat: Annotated[bool, typer.Option(help="Render the prompt with each member's own chat template.")] = False,
    chat_template: ChatTemplateOpt = None,
    system: Annotated[Optional[str], typer.Option(help="System message (chat mode).")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Decode past END (default: the config's).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (text, finish_reason, steps, timing).")] = False,
    explain: Annotated[bool, typer.Option(help="With --json: every step's full union and each member's probabilities.")] = False,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context window per member.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per member.")] = None,
    parallel: Annotated[
        Optional[bool], typer.Option("--parallel/--sequential", help="Step members in threads (default: when several).")
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="Ray cluster for ray: members (default: start a local one).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log every step to stderr.")] = False,
) -> None:
    """Generate text with an ensemble (default: Qwen2.5-Coder-1.5B-Instruct + Gemma-3-270M)."""
    setup_logging(verbose)
    if explain and not as_json:
        raise InvalidInputError("--explain needs --json (it adds every step's union to the JSON output)")
    text = read_prompt(prompt)
    plan = plan_from_flags(
        model,
        config,
        k=k,
        weights=weights,
        method=method,
        primary=primary,
        n_ctx=n_ctx,
        threads=threads,
        parallel=parallel,
        ray_address=ray_address,
        chat_templates=chat_template,
        gate=gate,
        weighting=weighting,
    )
    # The config's generation block gives the defaults; the flags given override it.
    gen = plan.config.generation_config(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop) if stop else None,
        ignore_eos=True if ignore_eos else None,
    )
    chat = chat or plan.chat
    if system and not chat:
        raise InvalidInputError("--system needs --chat")
    ens = plan.build()
    prompt_in = (
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}] if chat else text
    )
    with ens:
        if as_json:
            out = ens.generate(prompt_in, gen, chat=chat)
            typer.echo(
                json.dumps({"members": ens.names, "method": ens.method.name, **out.to_dict(full=explain)}, ensure_ascii=False)
            )
            return
        last = None
        for chunk in ens.stream(prompt_in, gen, chat=chat):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
        sys.stdout.write("\n")
        if verbose and last is not None and last.output is not None:
            t = last.output.timing
            summary = (
                f"{ens.method.name}: {t.steps} steps, {t.step_ms:.1f} ms/step, load {t.load_s:.2f}s, prefill {t.prefill_s:.2f}s"
            )
            typer.echo(f"[{last.output.finish_reason}] {summary}", err=True)


@app.command()
@user_errors
def models(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the embedded models: size, tokenizer, chat template, base or instruct, and their files.

    Qwen files are assembled (and checked) on first use; this lists them, assembling if needed.
    """
    from rich.console import Console
    from rich.table import Table

    from ..errors import ModelNotFoundError
    from ..models import CATALOGUE, DEFAULT_ENSEMBLE

    rows: list[dict[str, Any]] = []  # JSON objects (--json) and table rows
    for info in CATALOGUE.values():
        try:
            path = info.resolve()
            where, size = str(path), path.stat().st_size
        except ModelNotFoundError as err:
            where, size = f"unavailable: {err}", info.size
        rows.append(
            {
                "alias": info.alias,
                "model": info.description,
                "size_mb": round(size / 1e6, 1),
                "tokenizer": info.tokenizer,
                "vocab": info.vocab,
                "chat_template": info.instruct,
                "kind": "instruct" if info.instruct else "base",
                "default": info.alias in DEFAULT_ENSEMBLE,
                "file": where,
            }
        )
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title="Embedded models (* = in the default ensemble)")
    for col in ("alias", "model", "MB", "tokenizer", "vocab", "chat template", "kind", "file"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["alias"] + (" *" if r["default"] else ""),
            r["model"],
            f"{r['size_mb']:.0f}" if r["size_mb"] else "?",
            r["tokenizer"],
            f"{r['vocab']:,}",
            "yes" if r["chat_template"] else "no",
            r["kind"],
            r["file"],
        )
    Console(width=200).print(table)
