"""`fslm serve`: run the OpenAI-compatible API and trace viewer for a stack."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from fslm.cli.common import check_engine, check_stack, console, default_of, engine_option, status
from fslm.errors import ConfigError
from fslm.serve.app import serve  # for its defaults: no model is loaded, no server started
from fslm.serve.config import ServeSettings


def _d(name: str):
    return default_of(ServeSettings, name)


def serve_command(
    stack: Path | None = typer.Option(None, "--stack", "-s", help="Stack YAML (default: the packaged 4-stage stack)."),
    host: str = typer.Option(
        _d("host"), help="Interface to bind; use 0.0.0.0 only behind a firewall or with an API key."
    ),
    port: int = typer.Option(_d("port"), help="TCP port."),
    max_batch: int = typer.Option(
        _d("max_batch"), "--max-batch", help="Most requests run together in one batched stack run."
    ),
    batch_wait_ms: float = typer.Option(
        _d("batch_wait_ms"), "--batch-wait-ms", help="A batch closes after this long with no new request..."
    ),
    batch_max_wait_ms: float = typer.Option(
        _d("batch_max_wait_ms"), "--batch-max-wait-ms", help="...or this long after its first request."
    ),
    queue_size: int = typer.Option(
        _d("queue_size"), "--queue-size", help="Requests allowed to wait; more get 429 + Retry-After."
    ),
    join_running: bool = typer.Option(
        _d("join_running"),
        "--join-running/--no-join-running",
        help="Requests arriving while others run join them at the next stage boundary (continuous batching).",
    ),
    max_prompt_tokens: int | None = typer.Option(
        None, "--max-prompt-tokens", help="Default: the stack's max_prompt_tokens."
    ),
    max_new_tokens: int = typer.Option(
        _d("max_new_tokens"), "--max-new-tokens", help="Largest max_tokens a request may ask for."
    ),
    max_body_bytes: int = typer.Option(_d("max_body_bytes"), "--max-body-bytes", help="Larger request bodies get 413."),
    trace: bool = typer.Option(_d("trace"), "--trace/--no-trace", help="Include fslm_trace in responses by default."),
    trace_history: int = typer.Option(
        _d("trace_history"), "--trace-history", help="Requests kept in memory (/ui with --no-log)."
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write requests to the run log (`fslm logs`)."),
    persist_traces: bool | None = typer.Option(
        None,
        "--persist-traces/--no-persist-traces",
        help="Deprecated: requests go to the run log unless --no-log (--no-persist-traces is the same as --no-log).",
        hidden=True,
    ),
    log_level: str = typer.Option(default_of(serve, "log_level"), "--log-level", help="uvicorn log level."),
    engine: str | None = engine_option(help="Inference engine (default: the stack's `engine:`): hf, llamacpp or auto."),
) -> None:
    """Serve a stack over HTTP: POST /v1/chat/completions (OpenAI format + fslm_trace), /metrics, viewer at /ui."""
    from fslm.stack import Stack

    if persist_traces is not None:
        console.print(
            "note: --persist-traces/--no-persist-traces are deprecated: every request goes to the run log "
            "(`fslm logs`) unless --no-log",
            style="dim",
            highlight=False,
        )
    try:
        settings = ServeSettings(
            host=host,
            port=port,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            batch_max_wait_ms=batch_max_wait_ms,
            queue_size=queue_size,
            join_running=join_running,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            max_body_bytes=max_body_bytes,
            trace=trace,
            trace_history=trace_history,
            log=False if no_log else None,
            persist_traces=persist_traces,
        )
    except ValidationError as err:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid serve option: {problems}") from None
    key = " (API key required)" if settings.resolved_api_key() else ""  # a blank key fails here, before any load
    cfg = check_stack(stack, engine=engine)  # a bad stack file or engine costs no model load
    check_engine(engine or cfg.engine)
    with status("loading stack and model…"):
        loaded = Stack.load(stack, backend=engine)
    console.print(
        f"serving stack [bold]{loaded.config.name}[/] on http://{host}:{port}/v1{key} · viewer http://{host}:{port}/ui",
        highlight=False,
    )
    serve(loaded, settings, log_level=log_level)
