"""The `fslm` command: a thin typer layer over the Python API (one module per verb, imported on first use)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from fslm.cli.lazy import LazyGroup, Verb

try:  # typer >= 0.26 parses with its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

# Listed in `fslm --help` in this order (commands, then command groups, as typer lists them).
VERBS: dict[str, Verb] = {
    # The core loop: run a stack, build one (distill -> finetune), measure it, serve it.
    "run": Verb("run", "run_command", "Answer PROMPT with a stack and print the answer and every stage's text."),
    "models": Verb(
        "models", "models_command", "List the models resolvable offline: name, source, parameters, cached or not."
    ),
    "distill": Verb(
        "distill",
        "distill_command",
        "Have a teacher write every stage's target text for instruction data (resumable JSONL).",
    ),
    "curate": Verb(
        "curate",
        "curate_command",
        "Score instruction records by a small model's perplexity (and a quality classifier); keep the best.",
    ),
    "synth": Verb(
        "synth",
        "synth_command",
        "Self-instruct: a teacher writes new instructions, inputs and outputs from seed tasks (resumable JSONL).",
        extra="eval",
    ),
    "finetune": Verb(
        "finetune",
        "finetune_command",
        "Fine-tune one LoRA adapter per stage on distilled data and write a runnable trained stack.",
    ),
    "serve": Verb(
        "serve",
        "serve_command",
        "Serve a stack over HTTP: POST /v1/chat/completions (OpenAI format + fslm_trace), /metrics, viewer at /ui.",
        extra="serve",
    ),
    # Small/large collaboration.
    "generate": Verb(
        "generate",
        "generate_command",
        "Generate with --model, sped up by --draft / --prompt-lookup, or changed by --amateur / --expert-delta.",
    ),
    "stack": Verb("stack", "app", "Check, inspect and pack stack configs."),
    "logs": Verb(
        "logs", "app", "Browse the log of every run, generate and serve request: list, show, search, export, rm, prune."
    ),
    "experiment": Verb(
        "experiment",
        "app",
        "Run an experiment from one YAML spec: train, evaluate, compare, report; reruns resume.",
        extra="eval",
    ),
    "eval": Verb(
        "eval",
        "app",
        "Evaluate a model or stack on the benchmark tasks; `fslm eval compare A B` compares two runs.",
        extra="eval",
    ),
    "cascade": Verb(
        "cascade", "app", "Cascade: escalate to a larger system when the small one is unsure.", extra="collaborate"
    ),
    "route": Verb(
        "route",
        "app",
        "Learned router: predict from the prompt whether the small system will be right.",
        extra="collaborate",
    ),
    "check": Verb(
        "check",
        "app",
        "Hallucination checker: a small model's P(supported) for free-form answers, with or without passages.",
        extra="collaborate",
    ),
    "retrieve": Verb(
        "retrieve",
        "app",
        "Retrieval: build a passage corpus, index it (BM25, dense or hybrid), search it.",
        extra="retrieve",
    ),
    "pairs": Verb(
        "pairs",
        "pairs_command",
        "Write choice questions no evaluation reads as raw-scoring pairs for `fslm finetune --pairs`.",
        extra="retrieve",
    ),
}


class _FslmVerbs(LazyGroup):
    """A bad flag value, a missing argument or an unknown verb or option is one `error:` line (exit 2), like every
    other user error, rather than typer's usage box."""

    verbs = VERBS

    def parse_args(self, ctx, args):
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `fslm` or `fslm stack` alone: the help
    except UsageError as err:
        from fslm.cli.common import usage_error

        usage_error(err)


app = typer.Typer(
    name="fslm",
    cls=_FslmVerbs,
    help="Build, distill, fine-tune, evaluate and serve stacks of small language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # typer builds a group only when it has a callback or eager commands; every verb here is lazy.
    pass


def main() -> None:
    app()
