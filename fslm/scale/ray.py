"""Fan batches out over Ray actors that each build their worker (a loaded teacher, engine or system) once.

The driver keeps everything that touches the output: it submits batches, takes their results back in submission
order and writes them itself, so the resumable JSONL stores keep one writer and a run can mix Ray and single-process
sessions. A worker process that dies (killed, out of memory, node lost) costs only its batches in flight: they go to
a fresh actor. An error raised by the worker's own code (a bad model, an endpoint that refuses) is re-raised as is.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fslm.errors import FslmError, InputError
from fslm.extras import require

AUTO = "auto"
ATTEMPTS = 3  # per batch: a batch whose worker died this many times ends the run (finished batches are kept)
WINDOW = 2  # batches in flight per actor: one running, one queued behind it
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
SETTINGS = 4
FORWARDED_ENV = ("FSLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # what a worker needs to resolve models as the driver


class WorkerLostError(FslmError):
    """A batch's Ray worker died again and again; the batches written so far stay, a rerun resumes."""


def connect(address: str) -> None:
    """Join the Ray cluster at HOST:PORT (a head started with `ray start --head`), or with "auto" the cluster this
    machine already runs or a new local one. Nothing answering there is an InputError, raised before any model loads.
    A process already connected keeps its connection."""
    require("ray", "--ray")
    import ray

    if ray.is_initialized():
        return
    if address != AUTO:
        _check_reachable(address)
    try:
        ray.init(address=None if address == AUTO else address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as err:  # ray raises ConnectionError, RuntimeError or ValueError, by cause
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"--ray {address}: cannot join a Ray cluster there ({first})") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Something at HOST:PORT that speaks gRPC, as a Ray head's GCS does: ray.init itself would retry for minutes
    against a closed port or another server. The probe is HTTP/2's opening; gRPC answers with a SETTINGS frame."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        raise InputError(f"--ray {address}: expected HOST:PORT (a Ray head's address, port 6379 by default) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.sendall(HTTP2_PREFACE + EMPTY_SETTINGS)
            reply = conn.recv(9)
    except OSError as err:
        raise InputError(
            f"--ray {address}: nothing answers there ({err.strerror or err}); start a head with "
            "`ray start --head --port 6379` or pass --ray auto for a local cluster"
        ) from None
    if len(reply) < 4 or reply[3] != SETTINGS:
        raise InputError(
            f"--ray {address}: a server answers there, but not a Ray head (no gRPC); give the head's address, "
            "which `ray start --head` prints (port 6379 by default)"
        )


class _Host:
    """The actor: builds its worker on first use (so a failure to build is the worker's own error, re-raised in
    the driver, rather than an opaque actor death) and runs batches through it."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]], env: dict[str, str]):
        self.factory, self.env, self.worker = factory, env, None

    def _ready(self) -> Callable[[Any], Any]:
        if self.worker is None:
            os.environ.update(self.env)
            from fslm.settings import reset_settings

            reset_settings()
            self.worker = self.factory()
        return self.worker

    def run(self, payload: Any) -> Any:
        return self._ready()(payload)

    def ask(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self._ready())

    def pid(self) -> int:
        """The worker process (call with `.options(concurrency_group="control")` to get it while a batch runs)."""
        return os.getpid()


class RayPool:
    """`actors` actors (default: one per CPU of the cluster), each running `factory()`'s worker on payloads. Each
    reserves one CPU, or an equal share when more actors than CPUs are asked for (HTTP teachers and endpoint stages
    wait on the network, so many clients per core pay).

    Use as a context manager: leaving it kills the actors. `resubmitted` counts batches sent again after a death."""

    def __init__(self, factory: Callable[[], Callable[[Any], Any]], actors: int | None = None):
        import ray

        if actors is not None and actors < 1:
            raise InputError(f"--ray-actors must be at least 1, got {actors}")
        total = ray.cluster_resources().get("CPU", 1)
        self.size = actors or max(1, int(total))
        cpus = min(1.0, total / self.size)
        # torch threads per actor: the one CPU Ray reserved for it; FSLM_* and HF_* settings as in the driver
        self._env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)} | {"FSLM_THREADS": "1"}
        # "control": calls that answer while a batch runs (`pid`); batches stay one at a time in the default group
        self._remote = ray.remote(num_cpus=cpus, max_restarts=0, concurrency_groups={"control": 1})(_Host)
        self._factory, self._run = factory, uuid.uuid4().hex[:8]
        self._made = 0
        self.actors = [self._new() for _ in range(self.size)]
        self.resubmitted = 0

    def _new(self):
        self._made += 1
        name = f"fslm-worker-{self._run}-{self._made}"  # visible in `ray list actors`
        return self._remote.options(name=name).remote(self._factory, self._env)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def ask(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(worker)` on the first actor (a teacher's id, say): also the point where a worker that cannot be built
        fails, before any batch is sent."""
        return self._get(self.actors[0].ask.remote(fn))

    def ask_all(self, fn: Callable[[Any], Any]) -> list[Any]:
        return [self._get(ref) for ref in [a.ask.remote(fn) for a in self.actors]]

    @staticmethod
    def _get(ref) -> Any:
        import ray
        from ray.exceptions import RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as err:  # the worker's own exception, e.g. a TeacherError naming the URL
            raise err.cause from None

    def map(self, payloads: Sequence[Any]) -> Iterator[Any]:
        """Each payload's result, in payload order, while up to WINDOW batches per actor are in flight."""
        import ray
        from ray.exceptions import RayActorError

        pending: dict[Any, tuple[int, Any]] = {}  # ObjectRef -> (payload index, actor)
        retry: list[int] = []  # indices whose actor died, sent again first
        attempts = [0] * len(payloads)
        results: dict[int, Any] = {}
        next_new, next_out = 0, 0

        def fill() -> None:
            nonlocal next_new
            busy = {id(a): 0 for a in self.actors}
            for _, actor in pending.values():
                busy[id(actor)] = busy.get(id(actor), 0) + 1
            while retry or next_new < len(payloads):
                actor = min(self.actors, key=lambda a: busy[id(a)])
                if busy[id(actor)] >= WINDOW:
                    return
                if retry:
                    index = retry.pop(0)
                else:
                    index, next_new = next_new, next_new + 1
                pending[actor.run.remote(payloads[index])] = (index, actor)
                busy[id(actor)] += 1

        fill()
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ref)
            try:
                results[index] = self._get(ref)
            except RayActorError as err:
                attempts[index] += 1
                if attempts[index] >= ATTEMPTS:
                    raise WorkerLostError(
                        f"batch {index + 1} of {len(payloads)}: its Ray worker died {ATTEMPTS} times (last: "
                        f"{str(err).strip().splitlines()[0]}); finished batches are saved, rerun to resume"
                    ) from None
                self._replace(actor)
                retry.append(index)
                self.resubmitted += 1
            fill()
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1

    def _replace(self, dead) -> None:
        """Swap a dead actor for a fresh one (once, however many of its batches report the death)."""
        import ray

        for i, actor in enumerate(self.actors):
            if actor is dead:
                ray.kill(dead)  # already gone, or wedged: either way it takes no more work
                self.actors[i] = self._new()
                return
