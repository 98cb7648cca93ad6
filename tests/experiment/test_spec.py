"""The experiment spec validates itself and names the field; variants are written as stack files that move."""

from __future__ import annotations

import pytest
import yaml

from fslm.config import load_stack_config
from fslm.errors import ConfigError
from fslm.experiment import load_spec, parse_spec
from fslm.experiment.variants import stack_path, system_stack

from .conftest import write_spec

THREE = {"a": {"model": "m"}, "b": {"model": "m"}, "c": {"model": "m"}}
BASE = {"name": "x", "evaluation": {"tasks": ["arc_easy"]}, "systems": {"a": {"model": "m"}}}


def spec_with(**changes) -> dict:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            spec_with(systems={"a": {"model": "m", "stack": "s.yaml"}}),
            "systems.a: give exactly one of model, stack, from",
        ),
        (
            spec_with(systems={"a": {"model": "m", "patch": {"drop": ["x"]}}}),
            "systems.a: patch: apply to stack systems",
        ),
        (spec_with(systems={"a": {"stack": "s.yaml", "modle": 1}}), "systems.a.modle: Extra inputs are not permitted"),
        (spec_with(systems={"a": {"from": "b"}}), "systems.a.from: 'b' is not a system of this spec"),
        (spec_with(systems={"a": {"from": "b"}, "b": {"from": "a"}}), "systems.a.from: a loop (a -> b -> a)"),
        (spec_with(systems={"a": {"stack": "trained"}}), "systems.a.stack: 'trained' is not 'default', a .yaml path"),
        (spec_with(systems={"a": {"stack": "default", "num_fewshot": 2}}), "systems.a: num_fewshot: stacks are"),
        (spec_with(systems={"a b": {"model": "m"}}), "systems: 'a b' is not a usable name"),
        (spec_with(systems={"selected": {"model": "m"}}), "systems.selected: 'selected' is reserved"),
        (spec_with(systems={"a": {"stack": "s.yaml", "answer_format": "chat"}}), "systems.a.answer_format: Input"),
        (spec_with(evaluation={"tasks": ["arc_easy", "nope"]}), "evaluation: tasks.1: unknown task 'nope'"),
        (spec_with(evaluation={"tasks": ["arc_easy"], "limit": 0}), "evaluation.limit: Input should be greater"),
        (spec_with(evaluation={"tasks": ["arc_easy"], "split": "dev"}), "evaluation.split: Input should be 'test'"),
        (spec_with(evaluation={"tasks": ["arc_easy"], "split": "heldout", "num_fewshot": 1}), "num_fewshot: held-out"),
        (spec_with(comparisons=[["a", "c"]]), "comparisons.0.b: 'c' is not a system of this spec"),
        (spec_with(comparisons=[["a"]]), "comparisons.0: a pair [A, B] has two system names, got 1"),
        (spec_with(comparisons=[["a", "a"]]), "comparisons.0: compares 'a' with itself"),
        (spec_with(comparisons=[["selected", "a"]]), "comparisons.0.a: 'selected' names the selection's choice"),
        (
            spec_with(
                systems={"a": {"model": "m"}, "b": {"model": "m"}},
                selection={"among": ["a"]},
                comparisons=[{"a": "a", "b": "b", "heldout": True}],
            ),
            "comparisons.0.b: heldout compares held-out runs, and 'b' is not in selection",
        ),
        (spec_with(selection={"among": ["a", "z"]}), "selection.among.1: 'z' is not a system of this spec"),
        (spec_with(selection={"among": []}), "selection.among: List should have at least 1 item"),
        (spec_with(selection={"among": ["a"], "context": ["a"]}), "selection: a system is listed twice"),
        (spec_with(selection={"among": ["a"], "context": ["q"]}), "selection.context.0: 'q' is not a system"),
        (spec_with(report={"traces": [{"system": "q"}]}), "report.traces.0.system: 'q' is not a system"),
        (
            spec_with(report={"traces": [{"system": "a", "task": "boolq"}]}),
            "report.traces.0.task: 'boolq' is not among",
        ),
        (
            spec_with(training={"t": {"finetune": {"data": "d"}}}),
            "training.t.finetune.data: 'd' is not a distill or curate step",
        ),
        (
            spec_with(training={"t": {"finetune": {"data": "d.jsonl", "options": {"rnk": 4}}}}),
            "options: unknown option",
        ),
        (
            spec_with(
                training={
                    "t": {
                        "choice_kd": {"stage": "answer", "tasks": ["arc_challenge"], "options": {"kd_level": "token"}}
                    }
                }
            ),
            "a choice_kd step trains at kd_level 'choice'",
        ),
        (
            spec_with(training={"t": {"choice_kd": {"stage": "answer", "tasks": ["nope"]}}}),
            "training.t.choice_kd.tasks.0",
        ),
        (
            spec_with(training={"t": {}}),
            "training.t: give exactly one of distill, synth, curate, finetune, corpus, index, pairs, finetune_pairs, choice_kd",
        ),
        (
            spec_with(training={"c": {"distill": {}}, "t": {"index": {"corpus": "c"}}}),
            "training.t.index.corpus: 'c' is not a corpus step",
        ),
        (
            spec_with(training={"c": {"corpus": {}}, "t": {"pairs": {"stack": "c", "records": 4}}}),
            "training.t.pairs.stack: 'c' is not 'default', a .yaml path, or a step of this spec that writes a stack",
        ),
        (
            spec_with(training={"c": {"corpus": {}}, "i": {"index": {"corpus": "c"}}}, systems={"a": {"stack": "i"}}),
            "systems.a.stack: 'i' is not 'default'",  # an index step without a stack writes none
        ),
        (spec_with(training={"p": {"pairs": {"stack": "s.yaml", "records": 0}}}), "training.p.pairs.records"),
        (spec_with(training={"a": {"distill": {}}}), "training: ['a'] are also system names"),
        (
            spec_with(training={"t": {"finetune": {"stack": "t", "data": "d.jsonl"}}}),
            "training.t: it reads its own output (t -> t)",
        ),
        ({"name": "x", "systems": {"a": {"model": "m"}}}, "evaluation: Field required"),
        (spec_with(evaluation={"tasks": ["gsm8k"], "metrics": ["rougeL", "rouge2"]}), "unknown metric 'rouge2'"),
        (spec_with(evaluation={"tasks": ["gsm8k"], "metrics": []}), "evaluation.metrics: no metrics given"),
        (
            spec_with(evaluation={"tasks": ["alpaca"]}, training={"d": {"distill": {}}}),
            "training.d.distill: reads every record of alpaca/random_9k.json, and the evaluation's alpaca task",
        ),
        (
            spec_with(systems={"a": {"model": "m"}, "b": {"model": "m", "test": False}}, comparisons=[["a", "b"]]),
            "comparisons.0.b: 'b' has test: false (held-out runs only)",
        ),
        (
            spec_with(systems={"a": {"stack": "s.yaml", "expert_delta": "t:b"}}),
            "systems.a: expert_delta, delta_alpha: proxy-tuning applies to model systems only",
        ),
        (spec_with(systems={"a": {"model": "m", "expert_delta": "t"}}), "systems.a: expert_delta 't': expected"),
        (spec_with(systems={"a": {"stack": "s.yaml", "dtype": "bfloat16"}}), "systems.a: dtype: applies to model"),
        (spec_with(systems={"a": {"model": "m", "dtype": "float16"}}), "systems.a.dtype: Input should be 'float32'"),
        (spec_with(systems={"a": {"model": "m", "delta_alpha": 2}}), "systems.a: delta_alpha: weighs expert_delta"),
        (
            spec_with(systems={"a": {"model": "m", "expert_delta": "t:b", "delta_alpha": float("inf")}}),
            "delta_alpha) must be a finite number",
        ),
        (
            spec_with(report={"gap_recovered": [{"weak": "a", "strong": "b", "ceiling": "a"}]}),
            "report.gap_recovered.0.strong: 'b' is not a system of this spec",
        ),
        (
            spec_with(systems=THREE, report={"gap_recovered": [{"weak": "a", "strong": "b", "ceiling": "a"}]}),
            "report.gap_recovered.0: weak, strong and ceiling must be three different systems",
        ),
        (
            spec_with(
                systems={**THREE, "c": {"model": "m", "test": False}},
                report={"gap_recovered": [{"weak": "a", "strong": "b", "ceiling": "c"}]},
            ),
            "report.gap_recovered.0.ceiling: 'c' has test: false (held-out runs only)",
        ),
        (
            spec_with(systems=THREE, report={"gap_recovered": [{"weak": "a", "strong": "b", "top": "c"}]}),
            "report.gap_recovered.0.ceiling: Field required",
        ),
        (
            spec_with(systems=THREE, report={"gap_recovered": [{"weak": "a", "strong": "selected", "ceiling": "c"}]}),
            "report.gap_recovered.0.strong: 'selected' is not a system of this spec",
        ),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(data, "exp.yaml")
    assert str(err.value).startswith("exp.yaml: invalid experiment spec")
    assert message in str(err.value)


def test_a_valid_spec_parses_pairs_and_fewshot(tmp_path):
    spec = parse_spec(
        spec_with(
            evaluation={"tasks": "all", "num_fewshot": 5},
            systems={"a": {"model": "m"}, "b": {"model": "m", "num_fewshot": 0}, "c": {"stack": "default"}},
            comparisons=[["a", "b"], {"a": "c", "b": "a"}],
        ),
        "exp.yaml",
        tmp_path / "exp.yaml",
    )
    assert [(p.a, p.b) for p in spec.comparisons] == [("a", "b"), ("c", "a")]
    assert (spec.fewshot("a"), spec.fewshot("b"), spec.fewshot("c")) == (5, 0, 0)
    assert "gsm8k" in spec.evaluation.task_names and spec.out_dir == tmp_path / "exp"


def test_a_selection_only_system_is_planned_on_held_out_items_alone(tmp_path):
    from fslm.experiment import build_plan

    spec = parse_spec(
        spec_with(
            systems={"a": {"model": "m"}, "b": {"model": "m", "test": False}},
            selection={"among": ["b"], "context": ["a"], "limit": 2},
            comparisons=[{"a": "b", "b": "a", "heldout": True}],
        ),
        "exp.yaml",
        tmp_path / "exp.yaml",
    )
    jobs = {(job.kind, job.name) for job in build_plan(spec).jobs.values()}
    assert ("eval", "a") in jobs and ("eval", "b") not in jobs
    assert {("select", "a"), ("select", "b")} <= jobs


def test_load_spec_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="experiment spec not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystems: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: malformed YAML"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_spec(bad)
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")  # safe_load refuses Python objects
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_spec(bad)


STACK = {
    "name": "three",
    "base_model": "m",
    "stages": [
        {"name": "intent", "instruction": "Restate.", "adapter": "adapters/intent"},
        {"name": "facts", "instruction": "Facts.", "sees": ["prompt", "intent"], "adapter": "adapters/facts"},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"], "adapter": "adapters/answer"},
    ],
}


@pytest.fixture()
def variant_spec(tmp_path):
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "three.yaml").write_text(yaml.safe_dump(STACK))
    systems = {
        "full": {"stack": "stacks/three.yaml"},
        "no-facts": {"from": "full", "patch": {"drop": ["facts"]}},
        "short": {
            "from": "no-facts",
            "patch": {"stages": {"answer": {"instruction": "Be brief.", "generation": {"max_new_tokens": 3}}}},
        },
        "swapped": {"from": "full", "patch": {"adapters": {"answer": "other/answer", "intent": None}}},
        "answer-only": {"from": "full", "patch": {"keep": ["answer"], "name": "solo"}},
    }
    return load_spec(write_spec(tmp_path, spec_with(systems=systems, out="results")))


def test_variants_apply_patches_along_the_from_chain(variant_spec, tmp_path):
    short = system_stack(variant_spec, "short")
    assert [s.name for s in short.stages] == ["intent", "answer"] and short.name == "short"
    answer = short.stages[-1]
    assert answer.instruction == "Be brief." and answer.generation.max_new_tokens == 3 and answer.sees == ["prompt"]
    swapped = system_stack(variant_spec, "swapped")
    assert swapped.adapter_path(swapped.stages[0]) is None
    assert swapped.adapter_path(swapped.stages[2]) == tmp_path / "other" / "answer"
    assert system_stack(variant_spec, "answer-only").name == "solo"


def test_a_variant_is_written_with_paths_relative_to_its_file(variant_spec, tmp_path):
    assert stack_path(variant_spec, "full") == tmp_path / "stacks" / "three.yaml"  # unpatched: the file itself
    path = stack_path(variant_spec, "no-facts")
    assert path == tmp_path / "results" / "stacks" / "no-facts.yaml"
    written = yaml.safe_load(path.read_text())
    assert [s["adapter"] for s in written["stages"]] == ["../../stacks/adapters/intent", "../../stacks/adapters/answer"]
    cfg = load_stack_config(path)
    assert cfg.adapter_path(cfg.stages[0]).resolve() == (tmp_path / "stacks" / "adapters" / "intent").resolve()
    mtime = path.stat().st_mtime_ns
    stack_path(variant_spec, "no-facts")
    assert path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"drop": ["nope"]}, "systems.bad.patch.drop.0: no stage 'nope'"),
        ({"keep": ["intent"]}, "final (answer) stage"),
        ({"stages": {"nope": {"instruction": "x"}}}, "systems.bad.patch.stages.nope: stack 'three' has no such stage"),
        ({"adapters": {"nope": None}}, "systems.bad.patch.adapters.nope"),
        ({"stages": {"facts": {"sees": ["answer"]}}}, "answer"),  # fslm.config words the error; it names the stage
        ({"drop": ["intent"], "stages": {"facts": {"template": "{intent}"}}}, "stages.1.template uses {intent}"),
    ],
)
def test_bad_patches_name_the_system_and_field(tmp_path, patch, message):
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(STACK))
    spec = load_spec(write_spec(tmp_path, spec_with(systems={"bad": {"stack": "three.yaml", "patch": patch}})))
    with pytest.raises(ConfigError) as err:
        system_stack(spec, "bad")
    assert "systems.bad.patch" in str(err.value) and message in str(err.value)


def test_overrides_set_dotted_keys_before_validation(tmp_path):
    path = write_spec(tmp_path, spec_with(evaluation={"tasks": ["arc_easy"], "limit": 300}))
    spec = load_spec(path, {"evaluation.limit": 40, "out": "runs/pilot", "systems.b.model": "other"})
    assert (
        spec.evaluation.limit == 40
        and spec.out_dir == tmp_path / "runs" / "pilot"
        and spec.systems["b"].model == "other"
    )
    assert load_spec(path).evaluation.limit == 300  # the file is untouched
    with pytest.raises(ConfigError, match="evaluation.limit: Input should be greater than or equal to 1"):
        load_spec(path, {"evaluation.limit": 0})
    with pytest.raises(ConfigError, match="--set name.x: name is not a mapping"):
        load_spec(path, {"name.x": 1})


def test_cli_set_values_are_read_as_yaml():
    from fslm.cli.experiment import parse_settings
    from fslm.errors import InputError

    assert parse_settings(["evaluation.limit=40", "evaluation.tasks=[boolq, piqa]", "name=x=y"]) == {
        "evaluation.limit": 40,
        "evaluation.tasks": ["boolq", "piqa"],
        "name": "x=y",
    }
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_settings(["evaluation.limit"])


def test_a_scale_is_a_named_set_of_overrides_and_set_wins_over_it(tmp_path):
    data = spec_with(
        evaluation={"tasks": ["arc_easy"], "limit": 300},
        scales={"smoke": {"evaluation.limit": 2, "out": "runs/smoke", "systems.a": {"model": "tiny"}}},
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_spec(path).evaluation.limit == 300  # no scale named: the file as written
    smoke = load_spec(path, {"scale": "smoke"})
    assert (
        smoke.evaluation.limit == 2 and smoke.systems["a"].model == "tiny" and smoke.out_dir == tmp_path / "runs/smoke"
    )
    assert load_spec(path, {"scale": "smoke", "evaluation.limit": 5}).evaluation.limit == 5
    with pytest.raises(ConfigError, match=r"scale: 'pilot' is not an entry of scales \(scales: smoke\)"):
        load_spec(path, {"scale": "pilot"})


def test_the_report_carries_the_notes_a_person_keeps():
    from fslm.experiment.report import results_markdown

    results = {
        "name": "x",
        "description": "",
        "evaluation": {"tasks": ["arc_easy"], "split": "test", "limit": 2, "num_fewshot": 0, "gen_max_tokens": 8},
        "items_per_system": 2,
        "systems": {},
        "comparisons": [],
        "selection": None,
        "traces": [],
        "notes": "Attempt 1: a scorer. It won.\n",
    }
    text = results_markdown(results, pareto=False)
    assert text.rstrip().endswith("## Notes\n\nAttempt 1: a scorer. It won.")
    assert "## Notes" not in results_markdown({**results, "notes": None}, pareto=False)


def test_metrics_are_canonical_names_and_reach_the_worker(tmp_path):
    from fslm.experiment.plan import build_plan
    from fslm.experiment.run import eval_payload

    spec = parse_spec(spec_with(evaluation={"tasks": ["arc_easy"], "metrics": ["rouge-l", "MiniLM", "em"]}), "e.yaml")
    assert spec.evaluation.metrics == ["rougeL", "minilm", "em"]
    assert parse_spec(BASE, "e.yaml").evaluation.metrics is None
    spec.source_path = tmp_path / "e.yaml"
    job = build_plan(spec).runs()["a"]
    assert eval_payload(spec, job)["metrics"] == ["rougeL", "minilm", "em"]


def test_a_distill_step_must_stop_before_the_alpaca_tail(tmp_path, monkeypatch):
    import json

    from fslm.settings import reset_settings
    from fslm.tasks.alpaca import ALPACA_TEST_TAIL

    records = [{"instruction": f"Task {i}.", "output": f"Answer {i}."} for i in range(ALPACA_TEST_TAIL + 4)]
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "random_9k.json").write_text(json.dumps(records))
    (tmp_path / "elsewhere.json").write_text(json.dumps(records))
    monkeypatch.setenv("FSLM_DATA_DIR", str(tmp_path))
    reset_settings()
    try:
        evaluation = {"tasks": ["arc_easy", "alpaca"]}
        parse_spec(spec_with(evaluation=evaluation, training={"d": {"distill": {"limit": 4}}}), "e.yaml")
        with pytest.raises(ConfigError, match="training.d.distill: reads the first 5 records .* at most 4"):
            parse_spec(spec_with(evaluation=evaluation, training={"d": {"distill": {"limit": 5}}}), "e.yaml")
        same_file = {"d": {"distill": {"data": str(tmp_path / "alpaca" / "random_9k.json")}}}
        with pytest.raises(ConfigError, match="reads every record"):
            parse_spec(spec_with(evaluation=evaluation, training=same_file), "e.yaml")
        other = {"d": {"distill": {"data": str(tmp_path / "elsewhere.json")}}}
        parse_spec(spec_with(evaluation=evaluation, training=other), "e.yaml")  # another file: no overlap
        parse_spec(spec_with(training={"d": {"distill": {}}}), "e.yaml")  # alpaca not evaluated: no check
    finally:
        reset_settings()


def test_an_expert_delta_system_resolves_its_adapter_and_fingerprints_its_bytes(tmp_path, tiny_adapters):
    """Adapter paths in expert_delta are relative to the spec file; the fingerprint holds the adapter's sha256 and
    alpha, so a retrained adapter or another alpha reruns the system, and the worker gets absolute paths."""
    import shutil

    from fslm.experiment.fingerprint import fingerprint
    from fslm.experiment.plan import build_plan
    from fslm.experiment.results import describe
    from fslm.experiment.run import eval_payload

    shutil.copytree(tiny_adapters["intent"], tmp_path / "ad")
    systems = {"plain": {"model": "m"}, "steered": {"model": "m", "expert_delta": "small+ad:small", "delta_alpha": 0.5}}
    spec = load_spec(write_spec(tmp_path, spec_with(systems=systems)))
    assert spec.expert_delta("steered") == f"small+{(tmp_path / 'ad').resolve()}:small"
    assert spec.expert_delta("plain") is None
    first = fingerprint(spec, "steered", None, 0)
    assert first is not None and first["delta_alpha"] == 0.5 and len(first["expert_delta"][0]["adapter"]) == 64
    assert first["expert_delta"][1] == {"model": "small", "adapter": None}
    assert "expert_delta" not in (fingerprint(spec, "plain", None, 0) or {})
    job = build_plan(spec).jobs["eval:steered"]
    assert eval_payload(spec, job)["system"] == {
        "model": "m",
        "expert_delta": spec.expert_delta("steered"),
        "delta_alpha": 0.5,
    }
    assert describe(spec, "steered") == "m proxy-tuned by small+ad:small (alpha 0.5)"
    other = load_spec(
        write_spec(tmp_path, spec_with(systems={**systems, "steered": {**systems["steered"], "delta_alpha": 1}}))
    )
    assert fingerprint(other, "steered", None, 0) != first
    with open(tmp_path / "ad" / "adapter_model.safetensors", "ab") as fh:
        fh.write(b" ")  # a retrained adapter: other bytes at the same path
    assert fingerprint(spec, "steered", None, 0) != first
    shutil.rmtree(tmp_path / "ad")
    assert fingerprint(spec, "steered", None, 0) is None  # the job reports the missing folder


def test_a_model_systems_dtype_reaches_the_worker_and_its_fingerprint_only_when_given(tmp_path):
    """A model system's dtype is part of what its rows were computed with; systems without one keep the fingerprint
    they had before the field existed (their finished runs stay valid)."""
    from fslm.experiment.fingerprint import fingerprint
    from fslm.experiment.plan import build_plan
    from fslm.experiment.results import describe
    from fslm.experiment.run import eval_payload

    systems = {"plain": {"model": "m"}, "half": {"model": "m", "dtype": "bfloat16"}}
    spec = load_spec(write_spec(tmp_path, spec_with(systems=systems)))
    plain, half = fingerprint(spec, "plain", None, 0), fingerprint(spec, "half", None, 0)
    assert plain == {"model": "m", "split": None, "num_fewshot": 0, "gen_max_tokens": 256}
    assert half == {**plain, "dtype": "bfloat16"}
    jobs = build_plan(spec).jobs
    assert eval_payload(spec, jobs["eval:half"])["system"] == {"model": "m", "dtype": "bfloat16"}
    assert eval_payload(spec, jobs["eval:plain"])["system"] == {"model": "m"}
    assert describe(spec, "half") == "m (bfloat16) alone"


def test_a_stack_retrieving_from_a_recipe_index_is_fingerprinted_by_its_recipe(tmp_path):
    """A recipe folder (the index is built on first use) has no manifest: its recipe.json stands for the index, so
    the run is recorded and an edited recipe reruns it; a folder with neither leaves the job to report it."""
    import json
    import shutil

    from fslm.experiment.fingerprint import fingerprint

    (tmp_path / "idx").mkdir()
    recipe = {"corpus": {"sources": ["arc_easy"], "eval_tail": 200}}
    (tmp_path / "idx" / "recipe.json").write_text(json.dumps(recipe))
    stack = {
        "name": "r",
        "base_model": "smollm2-135m",
        "stages": [
            {"name": "related", "retrieve": {"index": "idx", "k": 3}},
            {"name": "answer", "sees": ["prompt", "related"], "score": {"format": "raw"}, "final": True},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(stack))
    spec = load_spec(write_spec(tmp_path, spec_with(systems={"a": {"stack": "r.yaml"}})))
    first = fingerprint(spec, "a", None, 0)
    assert first is not None and len(first["stack"]["stages"][0]["retrieve"]["index"]) == 64
    (tmp_path / "idx" / "recipe.json").write_text(json.dumps({**recipe, "passages_sha256": "0" * 64}))
    assert fingerprint(spec, "a", None, 0) != first
    shutil.rmtree(tmp_path / "idx")
    assert fingerprint(spec, "a", None, 0) is None
