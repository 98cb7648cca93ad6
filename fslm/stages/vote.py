"""The `vote` stage: k sampled drafts, aggregated.

Drafts. Draft j (0-based) of a prompt is generated alone, with the drafted stage's generation settings but the vote's
`temperature`, `top_p` and seed `seed + j`: a prompt's drafts depend only on the prompt, never on the other prompts of
a batch, so a batch gives what one-by-one runs give. At temperature 0 (then k is 1) the one draft is greedy and every
prompt's draft is made in one batched call: the stage then equals the same stage without `vote`.

Free text (no `score:` block): the stage's own generation is drafted. Drafts are compared by a normalised form (`text`:
lowercased, whitespace collapsed, outer quotes and trailing `.!?,;:` dropped; `number`: the last number in the draft,
commas dropped and `2.50` read as `2.5`, or the text form when there is none). The most frequent form wins; a tie goes
to the form that occurs first among the drafts. The stage's text is the first draft with the winning form, verbatim;
its confidence is the winner's share of the k drafts.

Options (a `score:` block and `over: <stage>`): the generate stage `over` (one this stage sees) is drafted k times;
the options are scored once per draft, with that draft in place of the stage's text (the score stage's own format).
Each draft gives a probability per option (softmax over its option log-probabilities); the stage's option scores are
the logs of their mean over the drafts (the options' marginal probabilities under the draft distribution), its text
the option with the highest mean, its confidence the margin of the means (top-1 minus top-2).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

from fslm.engine import Generation
from fslm.stages.conditions import choice_margin
from fslm.stages.inputs import stage_labels
from fslm.stages.records import StageRecord
from fslm.stages.score import notes_text, score_contexts

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_END = ".!?,;:"
_QUOTES = "\"'`“”‘’"


def normalize(text: str, how: str = "text") -> str:
    """The form drafts are compared by (module docstring)."""
    if how == "number":
        found = _NUMBER.findall(text)
        if found:
            number = found[-1].replace(",", "")
            if "." in number:
                number = number.rstrip("0").rstrip(".")
            return "-0" if number == "-0" else number
    form = " ".join(text.lower().split())
    return form.strip(_QUOTES + " ").rstrip(_END + " ").strip(_QUOTES + " ")


def majority(drafts: list[str], how: str = "text") -> tuple[int, int]:
    """(index of the winning draft, its votes): the most frequent normalised form, ties to the earliest form; the
    index is that form's first draft."""
    forms = [normalize(d, how) for d in drafts]
    counts: dict[str, int] = {}
    for form in forms:
        counts[form] = counts.get(form, 0) + 1
    best = max(counts, key=lambda f: (counts[f], -forms.index(f)))  # dict order is first occurrence
    return forms.index(best), counts[best]


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def sample_drafts(stack, drafted, inputs: list[str], spec) -> list[list[Generation]]:
    """k drafts of stage `drafted` for each input (module docstring); seconds are each draft's own."""
    engine, adapter = stack.engine_for(drafted), stack.adapter_for(drafted)
    base = dataclasses.replace(stack.params_for(drafted), temperature=spec.temperature, top_p=spec.top_p)
    if spec.temperature == 0:
        params = dataclasses.replace(base, seed=None)
        t0 = time.perf_counter()
        made = engine.generate(inputs, params, adapter=adapter) if inputs else []
        each = round((time.perf_counter() - t0) / max(1, len(inputs)), 4)
        return [[dataclasses.replace(g, seconds=each)] for g in made]
    drafts: list[list[Generation]] = []
    for text in inputs:
        mine = []
        for j in range(spec.k):
            t0 = time.perf_counter()
            gen = engine.generate([text], dataclasses.replace(base, seed=spec.seed + j), adapter=adapter)[0]
            mine.append(dataclasses.replace(gen, seconds=round(time.perf_counter() - t0, 4)))
        drafts.append(mine)
    return drafts


def vote_records(stack, stage, results) -> list[StageRecord]:
    """Free-text votes: the stage's own input drafted k times, the majority kept."""
    spec = stage.vote
    index = stack.config.index_of(stage.name)
    inputs = [stack.stage_input(index, r.prompt, r.outputs) for r in results]
    engine = stack.engine_for(stage)
    records = []
    for text, drafts in zip(inputs, sample_drafts(stack, stage, inputs, spec), strict=True):
        best, votes = majority([d.text for d in drafts], spec.normalize)
        records.append(
            StageRecord(
                stage.name,
                text,
                drafts[best].text,
                sum(d.tokens_in for d in drafts),
                sum(d.tokens_out for d in drafts),
                round(sum(d.seconds for d in drafts), 4),
                stack.adapter_for(stage),
                drafts[best].finish_reason,
                kind="vote",
                model=engine.model_ref,
                confidence=votes / len(drafts),
                decision=f"{votes}/{len(drafts)} drafts agree (draft {best + 1} kept)",
                drafts=tuple(d.text for d in drafts),
            )
        )
    return records


def score_vote_records(stack, stage, results, opts) -> list[StageRecord]:
    """Score votes: the `over` stage drafted k times, the options scored per draft, probabilities averaged."""
    spec, fmt = stage.vote, stage.score.format
    cfg = stack.config
    over = cfg.stage(spec.over)
    over_index, index = cfg.index_of(over.name), cfg.index_of(stage.name)
    labels = stage_labels(cfg)
    inputs = [stack.stage_input(over_index, r.prompt, r.outputs) for r in results]
    drafted = sample_drafts(stack, over, inputs, spec)
    scored = []  # per result, per draft: (contexts, continuations)
    for r, drafts, choice in zip(results, drafted, opts, strict=True):
        mine = []
        for d in drafts:
            outputs = {**r.outputs, over.name: d.text}
            chat = stack.stage_input(index, r.prompt, outputs) if fmt == "chat" else ""
            notes = notes_text(labels, stage.sees, outputs) if fmt == "raw" else ""
            mine.append(score_contexts(fmt, chat, notes, choice))
        scored.append(mine)
    engine, adapter = stack.engine_for(stage), stack.adapter_for(stage)
    contexts = [c for mine in scored for ctxs, _ in mine for c in ctxs]
    conts = [c for mine in scored for _, cs in mine for c in cs]
    t0 = time.perf_counter()
    scores = engine.score(contexts, conts, adapter=adapter) if contexts else []
    seconds = (time.perf_counter() - t0) / max(1, len(results))
    records, k = [], 0
    for mine, drafts, choice in zip(scored, drafted, opts, strict=True):
        n = len(choice.options)
        per_draft: list[list[float]] = []  # each draft's option log-probabilities (log-softmax of its scores)
        tokens_in = sum(d.tokens_in for d in drafts)
        first_tokens: tuple[int, ...] = ()
        for ctxs, _ in mine:
            part = scores[k : k + n]
            k += n
            total = _logsumexp([s.logprob for s in part])
            per_draft.append([s.logprob - total for s in part])
            tokens_in += sum(engine.count_tokens(c) for c in dict.fromkeys(ctxs)) + sum(s.n_tokens for s in part)
            first_tokens = first_tokens or tuple(s.n_tokens for s in part)
        # log of the mean probability, in log space: finite even when a draft gives an option ~0 probability
        logs = tuple(_logsumexp([row[o] for row in per_draft]) - math.log(len(per_draft)) for o in range(n))
        best = max(range(n), key=logs.__getitem__)
        records.append(
            StageRecord(
                stage.name,
                mine[0][0][0],
                choice.options[best],
                tokens_in,
                sum(d.tokens_out for d in drafts),
                round(sum(d.seconds for d in drafts) + seconds, 4),
                adapter,
                "scored",
                kind="vote",
                model=engine.model_ref,
                options=choice.options,
                option_scores=logs,
                option_tokens=first_tokens,
                confidence=choice_margin(logs),
                decision=f"mean option probabilities over {len(drafts)} drafts of {over.name!r}",
                drafts=tuple(d.text for d in drafts),
                score_format=fmt,
            )
        )
    return records
