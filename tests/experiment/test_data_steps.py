"""Data steps: curate (a seeded random baseline at equal N) between distill and finetune, and synth (self-instruct)
feeding a distill step; step references checked at spec load; fingerprints follow the steps a step reads."""

from __future__ import annotations

import json

import pytest
import yaml

from fslm.errors import ConfigError
from fslm.experiment import ExperimentError, build_plan, load_spec, parse_spec, run_experiment
from fslm.experiment.plan import step_fingerprint
from fslm.experiment.train import train_payload

from .conftest import write_spec
from .test_training import FAST, distilled, stack_dict

BASE = {"name": "x", "evaluation": {"tasks": ["arc_easy"]}, "systems": {"a": {"model": "m"}}}
SEEDS = [
    ("Give three tips for staying healthy.", "", "Eat well, sleep enough and exercise."),
    ("Translate the sentence into French.", "I like cheese.", "J'aime le fromage."),
    ("Sort the numbers in increasing order.", "5, 2, 9", "2, 5, 9"),
]


def training(**steps) -> dict:
    return {**BASE, "training": steps}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"c": {"curate": {"data": "nope"}}}, "training.c.curate.data: 'nope' is not a distill or synth step"),
        (
            {"f": {"finetune": {"data": "d.jsonl"}}, "c": {"curate": {"data": "f"}}},
            "training.c.curate.data: 'f' is not a distill or synth step",
        ),
        ({"c": {"curate": {"data": "d.jsonl", "top": 3, "keep": 0.5}}}, "give top or keep, not both"),
        ({"c": {"curate": {"data": "d.jsonl", "by": "quality"}}}, "by quality needs labels"),
        ({"c": {"curate": {"data": "d.jsonl", "by": "random", "labels": "l.jsonl"}}}, "by random ranks by no score"),
        (
            {"c": {"curate": {"data": "d.jsonl", "judge": "m", "labels": "l.jsonl"}}},
            "give labels or a judge, not both",
        ),
        ({"c": {"curate": {"data": "d.jsonl", "by": "random", "judge": "m"}}}, "leave out judge"),
        ({"c": {"curate": {"data": "d.jsonl", "judge": "m", "judge_n": 1}}}, "training.c.curate.judge_n: Input should"),
        ({"c": {"curate": {"data": "d.jsonl", "judge": "m", "judge_dtype": "int8"}}}, "training.c.curate.judge_dtype"),
        ({"c": {"curate": {"data": "d.jsonl", "by": "vibes"}}}, "training.c.curate.by: Input should be"),
        ({"c": {"curate": {"data": "d.jsonl", "top": 0}}}, "training.c.curate.top: Input should be greater"),
        ({"s": {"synth": {"n": 0}}}, "training.s.synth.n: Input should be greater than or equal to 1"),
        ({"s": {"synth": {"engine": "nope"}}}, "training.s.synth.engine"),
        ({"s": {"synth": {"tеacher": "m"}}}, "Extra inputs are not permitted"),
        (
            {"d": {"distill": {"data": "f"}}, "f": {"corpus": {}}},
            "training.d.distill.data: 'f' is not a synth or curate",
        ),
        (
            {"d": {"distill": {}}, "c": {"curate": {"data": "d"}}, "d2": {"distill": {"data": "c"}}},
            "training.d2.distill.data: curate step 'c' keeps distilled records, and a distill step reads alpaca ones",
        ),
        (
            {"s": {"synth": {}}, "c": {"curate": {"data": "s"}}, "f": {"finetune": {"data": "c"}}},
            "training.f.finetune.data: curate step 'c' keeps alpaca records, and a finetune step reads distilled",
        ),
    ],
)
def test_data_step_errors_name_the_field(steps, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(training(**steps), "exp.yaml")
    assert message in str(err.value)


def test_defaults_come_from_the_library_and_upstream_edits_change_the_fingerprint(tmp_path):
    from fslm.distill.curate import CurateOptions
    from fslm.distill.synth import SynthOptions

    body = training(
        s={"synth": {"n": 4, "seeds": "seeds.jsonl"}},
        d={"distill": {"data": "s", "limit": 4}},
        c={"curate": {"data": "d", "by": "random", "top": 3}},
        f={"finetune": {"data": "c"}},
        real={"distill": {"data": "alpaca.json", "limit": 4}},  # the real baseline at the same N
    )
    spec = load_spec(write_spec(tmp_path, body))
    assert spec.training["s"].synth.options() == SynthOptions(n=4)
    assert spec.training["c"].curate.options(None) == CurateOptions(top=3, by="random")
    assert spec.step_deps("f") == ["c"] and spec.step_deps("c") == ["d"] and spec.step_deps("d") == ["s"]
    out = tmp_path / "exp" / "train"
    assert train_payload(spec, "d")["args"]["data"] == str(out / "s" / "synth.jsonl")
    assert train_payload(spec, "c")["args"]["data"] == str(out / "d" / "distilled.jsonl")
    assert train_payload(spec, "f")["args"]["data"] == str(out / "c" / "curated.jsonl")
    assert train_payload(spec, "s")["args"]["seeds"] == str(tmp_path / "seeds.jsonl")
    before = step_fingerprint(spec, "f")
    assert before["reads"]["c"]["reads"]["d"]["reads"]["s"]["synth"]["n"] == 4
    body["training"]["s"]["synth"]["seed"] = 1  # three steps upstream
    assert step_fingerprint(load_spec(write_spec(tmp_path, body)), "f") != before


def test_random_curate_then_finetune(tiny_model_dir, tiny_data, tmp_path):
    """A curate step between distilled records and finetune (a tiny random teacher's distilled records are all
    filtered out, so the records are written here, as in test_training; the distill -> curate path is checked
    above): the finetune step trains on exactly the 3 records the seeded random order kept."""
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(stack_dict(tiny_model_dir)))
    (tmp_path / "data.jsonl").write_text(distilled(8))
    body = {
        "name": "curated",
        "evaluation": {"tasks": ["arc_easy"]},
        "training": {
            "random3": {"curate": {"data": "data.jsonl", "by": "random", "top": 3, "seed": 1}},
            "likely3": {"curate": {"data": "data.jsonl", "top": 3, "model": str(tiny_model_dir)}},
            "trained": {"finetune": {"stack": "stack.yaml", "data": "random3", "options": FAST}},
        },
        "systems": {"stack-trained": {"stack": "trained"}},
    }
    spec = write_spec(tmp_path, body)
    assert build_plan(load_spec(spec)).jobs["train:trained"].deps == ["train:random3"]
    result = run_experiment(spec, jobs=1, isolate=False)
    assert sorted(result.ran) == ["eval:stack-trained", "train:likely3", "train:random3", "train:trained"]
    out = tmp_path / "exp" / "train"
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    curated = [json.loads(line) for line in (out / "random3" / "curated.jsonl").read_text().splitlines()]
    assert len(curated) == 3 and all(row in rows for row in curated)
    assert len((out / "random3" / "curated.scores.jsonl").read_text().splitlines()) == 8
    curate_report = json.loads((out / "random3.done.json").read_text())["report"]
    assert curate_report["by"] == "random" and curate_report["kept"] == 3 and curate_report["model"] == "random"
    assert not (out / "random3" / "scores.png").exists()  # a random order has no scores to draw
    likely = json.loads((out / "likely3.done.json").read_text())["report"]
    assert likely["by"] == "perplexity" and likely["kept"] == 3 and len(likely["ends"]["best"]) == 3
    assert (out / "likely3" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    trained = json.loads((out / "trained.done.json").read_text())["report"]
    assert trained["records"] == 3, trained
    assert run_experiment(spec, jobs=1, isolate=False).ran == []

    body["training"]["random3"]["curate"]["seed"] = 2  # another sample: curate and the finetune after it rerun
    spec.write_text(yaml.safe_dump(body))
    jobs = build_plan(load_spec(spec)).jobs
    assert jobs["train:random3"].state == jobs["train:trained"].state == "partial"
    # the rerun re-selects, and the adapter trained on the old sample is moved aside (finetune would refuse to resume
    # it under other data), then trained again on the new 3 records
    again = run_experiment(spec, jobs=1, isolate=False)
    assert {"train:random3", "train:trained"} <= set(again.ran) and not again.failed, again
    assert (out / "trained.stale-1" / "stack.yaml").is_file() and (out / "trained" / "stack.yaml").is_file()
    assert not (out / "random3.stale-1").exists()  # a data step resumes in place
    resampled = [json.loads(line) for line in (out / "random3" / "curated.jsonl").read_text().splitlines()]
    assert len(resampled) == 3 and resampled != curated


def test_a_synth_step_feeds_a_distill_step(tiny_model_dir, tiny_data, tmp_path):
    """A tiny random teacher rarely writes a usable task: the synth step either writes its n records, which the
    distill step then reads, or fails with a stall that names what to change, and blocks the step after it."""
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"instruction": i, "instances": [{"input": x, "output": o}]} for i, x, o in SEEDS]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(stack_dict(tiny_model_dir)))
    synth = {"n": 2, "teacher": str(tiny_model_dir), "seeds": "seeds.jsonl", "max_new_tokens": 24}
    spec = write_spec(
        tmp_path,
        {
            "name": "synth",
            "evaluation": {"tasks": ["arc_easy"]},
            "training": {
                "synthetic": {"synth": {**synth, "requests_per_round": 2, "max_stalled_rounds": 2}},
                "distilled": {"distill": {"stack": "stack.yaml", "data": "synthetic", "teacher": str(tiny_model_dir)}},
            },
            "systems": {"base": {"model": str(tiny_model_dir)}},
        },
    )
    out = tmp_path / "exp" / "train"
    try:
        run_experiment(spec, jobs=1, isolate=False)
    except ExperimentError as err:
        failed = err.result.failed
        assert (
            "synth stalled at" in failed["train:synthetic"] and "raise max_stalled_rounds" in failed["train:synthetic"]
        )
        assert failed["train:distilled"] == "not run: train:synthetic failed"
        assert not (out / "synthetic.done.json").exists()
        return
    records = [json.loads(line) for line in (out / "synthetic" / "synth.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(set(r) >= {"instruction", "input", "output"} for r in records)
    distilled = (out / "distilled" / "distilled.jsonl").read_text().splitlines()
    assert len(distilled) == 2


def test_a_judged_curate_step_resolves_its_judge_and_judge_n_is_in_the_fingerprint(tiny_model_dir, tmp_path):
    from fslm.distill.curate import CurateOptions

    (tmp_path / "judge").symlink_to(tiny_model_dir, target_is_directory=True)
    body = training(c={"curate": {"data": "d.jsonl", "judge": "judge", "judge_n": 50, "judge_dtype": "bfloat16"}})
    spec = load_spec(write_spec(tmp_path, body))
    step = spec.training["c"].curate
    args = train_payload(spec, "c")["args"]
    assert args["judge"] == str(tmp_path / "judge")  # a local folder next to the spec, made absolute
    assert step.options(None, args["judge"]) == CurateOptions(
        by=None, judge=str(tmp_path / "judge"), judge_n=50, judge_dtype="bfloat16"
    )
    before = step_fingerprint(spec, "c")
    assert before["curate"]["judge"] == "judge" and before["curate"]["judge_n"] == 50
    body["training"]["c"]["curate"]["judge_n"] = 60
    assert step_fingerprint(load_spec(write_spec(tmp_path, body)), "c") != before
