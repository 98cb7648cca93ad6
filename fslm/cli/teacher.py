"""The teacher options `fslm synth` and `fslm distill` share: a local model, or an OpenAI-compatible endpoint.

Not in fslm.cli.common: the HTTP teacher's defaults are read from fslm.teachers, which imports httpx, and every verb
(`fslm --help` too) imports common.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from fslm.cli.common import check_engine, check_model, console, default_of, engine_option
from fslm.errors import InputError
from fslm.teachers import HTTPTeacher, Teacher, make_teacher

TEACHER_URL = typer.Option(None, "--teacher-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
TEACHER_MODEL = typer.Option(None, "--teacher-model", help="Model name served at --teacher-url.")
API_KEY_ENV = typer.Option(None, "--api-key-env", help="NAME of the env var that holds the API key.")
CONCURRENCY = typer.Option(
    default_of(HTTPTeacher, "concurrency"), "--concurrency", min=1, help="HTTP teacher: requests in flight."
)
TIMEOUT = typer.Option(
    default_of(HTTPTeacher, "timeout"), "--timeout", help="HTTP teacher: seconds per request before a retry."
)
LOCAL_ENGINE = default_of(make_teacher, "backend")
TEACHER_ENGINE = engine_option(LOCAL_ENGINE, help="Local teacher's inference engine: hf, llamacpp, vllm or auto.")


def teacher_from_options(
    teacher: str | None,
    url: str | None,
    model: str | None,
    api_key_env: str | None,
    concurrency: int,
    timeout: float,
    engine: str,
    *,
    quiet: bool,
    default_ref: str = default_of(make_teacher, "default_ref"),
    default_what: str = "--teacher",
    dtype: str = default_of(make_teacher, "dtype"),
) -> Callable[[], Teacher]:
    """Check the teacher options (the shared ones, in their order on the command line) before any work and return
    what builds the teacher once it is needed. An HTTP teacher loads nothing, so it is built here: a bad URL or key
    fails first. A local model (`teacher`, else `default_ref`, which `default_what` names in an error) is only
    resolved here and loaded when called."""
    if timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds, got {timeout}")
    check_engine(engine)
    if url:
        if engine != LOCAL_ENGINE:
            raise InputError(
                "--engine picks a local teacher's engine; an HTTP teacher (--teacher-url) runs where it is served"
            )
        http_teacher = make_teacher(
            teacher, url=url, model=model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout
        )
        return lambda: http_teacher
    if model or api_key_env:
        raise InputError("--teacher-model and --api-key-env go with --teacher-url (an HTTP teacher)")
    check_model(teacher or default_ref, "--teacher" if teacher else default_what)

    def load_teacher() -> Teacher:
        if not quiet:
            console.print("loading teacher…", style="dim")
        return make_teacher(teacher, default_ref=default_ref, dtype=dtype, backend=engine)

    return load_teacher
