"""Stack runs in steps, so that several runs share one engine call per model: continuous batching at stage boundaries.

`Stack.run_steps` is `Stack.run_batch` as a generator: it runs each wave's retrieve/score/tool/... stages itself and
yields the wave's generate work (`StageWork` items); whoever drives it sends back their generations. `drive` runs one
such generator alone (that is `run_batch`). `Together` runs many: each round it collects the pending work of every
run, whatever stage each sits at, generates it in one `generate_work` call (one `generate_mixed` per model: rows of
other adapters, caps and stop strings batch together), and hands each run its share. A server admits new requests
between rounds, so a request arriving while others decode their answers starts its first stage in their batch
instead of waiting for them to finish (fslm/serve/batching.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fslm.config import StageConfig
from fslm.engine import Engine, Generation, GenerationParams, generate_mixed

T = TypeVar("T")
log = logging.getLogger("fslm.stack")


class StageSettings(Protocol):
    """What generating a stage needs from its stack (`fslm.stack.Stack` or a `with_generation` view of one)."""

    cache: Any  # a StageCache, or None

    def engine_for(self, stage: StageConfig) -> Engine: ...
    def params_for(self, stage: StageConfig) -> GenerationParams: ...
    def adapter_for(self, stage: StageConfig) -> str | None: ...
    def cache_key(self, engine: Engine, stage: StageConfig, params: GenerationParams, text: str) -> str | None: ...


@dataclass(frozen=True)
class StageWork:
    """One stage's inputs to generate, under the settings of `stack` (a `with_generation` view keeps its own)."""

    stack: StageSettings
    stage: StageConfig
    inputs: list[str]


# Yields the generate work of one step, is sent one list of Generations per StageWork, returns the run's value.
Steps = Generator[list[StageWork], list[list[Generation]], T]


def generate_work(items: Sequence[StageWork]) -> list[list[Generation]]:
    """Every item's generations, in one engine call per model; outputs a stage cache already holds are not
    regenerated. Seconds are per generated row (a cached output keeps its own)."""
    by_engine: dict[int, list[int]] = {}
    for k, item in enumerate(items):
        by_engine.setdefault(id(item.stack.engine_for(item.stage)), []).append(k)
    out: list[list[Generation]] = [[] for _ in items]
    for members in by_engine.values():
        for k, made in zip(members, _generate_one_engine([items[k] for k in members]), strict=True):
            out[k] = made
    return out


def _generate_one_engine(items: Sequence[StageWork]) -> list[list[Generation]]:
    engine = items[0].stack.engine_for(items[0].stage)
    rows: list[tuple[str, GenerationParams, str | None]] = []
    keys: list[tuple[Any, str] | None] = []  # (cache, key) of each row, None when not cached
    for item in items:
        params, adapter = item.stack.params_for(item.stage), item.stack.adapter_for(item.stage)
        for text in item.inputs:
            rows.append((text, params, adapter))
            key = item.stack.cache_key(engine, item.stage, params, text)
            keys.append(None if key is None else (item.stack.cache, key))
    found: dict[int, Generation] = {}
    caches: dict[int, tuple[Any, list[int]]] = {}
    for i, entry in enumerate(keys):
        if entry is not None:
            caches.setdefault(id(entry[0]), (entry[0], []))[1].append(i)
    for cache, members in caches.values():
        hits = cache.get_many([keys[i][1] for i in members])  # type: ignore[index]
        found.update({i: hits[keys[i][1]] for i in members if keys[i][1] in hits})  # type: ignore[index]
    todo = [i for i in range(len(rows)) if i not in found]
    if todo:
        t0 = time.perf_counter()
        made = generate_mixed(engine, [rows[i] for i in todo])
        elapsed = round((time.perf_counter() - t0) / len(todo), 4)
        fresh = {i: dataclasses.replace(g, seconds=elapsed) for i, g in zip(todo, made, strict=True)}
        for cache, members in caches.values():
            cache.put_many({keys[i][1]: fresh[i] for i in members if i in fresh})  # type: ignore[index]
        found.update(fresh)
    out, k = [], 0
    for item in items:
        out.append([found[i] for i in range(k, k + len(item.inputs))])
        k += len(item.inputs)
    return out


def drive(steps: Steps[T]) -> T:
    """Run one step generator to its end, generating its work as it asks."""
    try:
        work = next(steps)
        while True:
            work = steps.send(generate_work(work))
    except StopIteration as stop:
        return stop.value


@dataclass
class _Run:
    steps: Steps[Any]
    done: Callable[[Any, BaseException | None], None]
    work: list[StageWork]


class Together:
    """Many step generators advanced in lockstep rounds: each round's work of all of them is one `generate_work`.

    `add` starts a run (its first step runs now, up to its first generate work) and calls `done(value, None)` when it
    returns or `done(None, error)` when it raises. If a round's shared call fails, each run's work is retried alone
    and only the runs whose own work fails get the error (thrown into the generator, which may handle it)."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, steps: Steps[Any], done: Callable[[Any, BaseException | None], None]) -> None:
        run = _Run(steps, done, [])
        self._advance(run, lambda: next(steps))

    def step(self) -> None:
        """One round: every waiting run's work generated together, each run advanced to its next work or its end."""
        runs, self._runs = self._runs, []
        if not runs:
            return
        try:
            made = generate_work([w for run in runs for w in run.work])
        except Exception:
            for run in runs:  # find whose input fails; the others go on with their own results
                try:
                    own = generate_work(run.work)
                except Exception as err:
                    self._advance(run, lambda run=run, err=err: run.steps.throw(err))
                else:
                    self._advance(run, lambda run=run, own=own: run.steps.send(own))
            return
        k = 0
        for run in runs:
            share, k = made[k : k + len(run.work)], k + len(run.work)
            self._advance(run, lambda run=run, share=share: run.steps.send(share))

    def _advance(self, run: _Run, resume: Callable[[], list[StageWork]]) -> None:
        try:
            run.work = resume()
        except StopIteration as stop:
            value, error = stop.value, None
        except Exception as err:
            value, error = None, err
        else:
            self._runs.append(run)
            return
        try:
            run.done(value, error)
        except Exception:  # a failing callback must not stop the other runs from advancing
            log.exception("a run's completion callback failed")
