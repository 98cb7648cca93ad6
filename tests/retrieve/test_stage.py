"""A retrieve stage in a stack: config rules, run (trace + what later stages read), distill and fine-tune."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from fslm.config import load_stack_config, parse_stack_config
from fslm.distill import distill
from fslm.errors import ConfigError
from fslm.finetune.examples import build_examples
from fslm.finetune.run import trained_stack_config
from fslm.stack import NO_PASSAGE, Stack, clip
from fslm.teachers import TeacherReply


def retrieval_stack(model: str, index: str = "index") -> dict:
    return {
        "name": "rag",
        "base_model": model,
        "max_prompt_tokens": 256,
        "stages": [
            {"name": "related", "label": "Related", "retrieve": {"index": index, "k": 2, "max_chars": 60}},
            {
                "name": "answer",
                "instruction": "Answer.",
                "sees": ["prompt", "related"],
                "template": "Q: {prompt}\nR: {related}",
                "generation": {"max_new_tokens": 48},
            },
        ],
    }


@pytest.fixture()
def stack_file(tmp_path, tiny_model_dir, index_dir):
    shutil.copytree(index_dir, tmp_path / "index")
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(retrieval_stack(str(tiny_model_dir))))
    return path


def test_config_rules_for_retrieve_stages(tiny_model_dir):
    base = retrieval_stack("tiny")
    cfg = parse_stack_config(base)
    assert cfg.stages[0].is_retrieval and cfg.stages[0].instruction == ""
    bad = json.loads(json.dumps(base))
    bad["stages"][0]["adapter"] = "x"
    with pytest.raises(ConfigError, match=r"stages\.0: adapter: a retrieve stage runs no model"):
        parse_stack_config(bad)
    bad = json.loads(json.dumps(base))
    bad["stages"].reverse()
    bad["stages"][0]["sees"] = ["prompt"]
    bad["stages"][0]["template"] = "Q: {prompt}"
    bad["stages"][1]["sees"] = ["prompt", "answer"]
    with pytest.raises(ConfigError, match=r"stages\.1\.retrieve: the final \(answer\) stage must be a "):
        parse_stack_config(bad)
    bad = json.loads(json.dumps(base))
    del bad["stages"][1]["instruction"]
    with pytest.raises(ConfigError, match=r"stages\.1: instruction: required for a model stage"):
        parse_stack_config(bad)


def test_missing_index_is_named_before_the_model_loads(tmp_path, tiny_model_dir):
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(retrieval_stack(str(tiny_model_dir), "nowhere")))
    with pytest.raises(ConfigError, match=r"stages\.0\.retrieve\.index: no retrieval index in .*nowhere"):
        Stack.load(path)


def test_run_traces_the_passages_and_the_answer_stage_reads_them(stack_file, tiny_engine):
    stack = Stack(load_stack_config(stack_file), tiny_engine)
    result = stack.run_batch(["At what temperature does water boil?", "zzz qqq"])
    related, answer = result[0].trace
    assert related.finish_reason == "retrieved" and related.retrieved[0] == "boil"
    assert related.tokens_in == related.tokens_out == 0 and related.adapter is None
    assert related.output.startswith("[1] Water boils at 100 degrees Celsius")
    assert f"R: {related.output}" in answer.input
    assert result[1].trace[0].output == NO_PASSAGE and result[1].trace[0].retrieved == ()
    assert all(len(line) <= 60 + len("[1] ") for line in related.output.splitlines())


def test_clip_cuts_at_a_word_and_marks_the_cut():
    assert clip("short  text", 40) == "short text"
    cut = clip("one two three four five six", 15)
    assert cut.endswith(" …") and len(cut) <= 15 and "one two" in cut


class StageTeacher:
    id = "stage-teacher"

    def __init__(self):
        self.systems: list[str] = []

    def generate(self, requests, params):
        self.systems += [m[0]["content"] for m in requests]
        return [TeacherReply("It is so.", 0.0, "stop") for _ in requests]

    def close(self) -> None:
        pass


def test_distill_writes_the_passages_as_the_retrieve_stage_target_never_the_record_itself(stack_file, tmp_path):
    records = [
        {"instruction": "Cats chase mice at night.", "input": "", "output": "Yes."},
        {"instruction": "Do magnets attract iron nails?", "input": "", "output": "Yes, they do."},
    ]
    data = tmp_path / "a.json"
    data.write_text(json.dumps(records))
    teacher = StageTeacher()
    out = tmp_path / "d.jsonl"
    distill(stack_file, data, out, teacher=teacher)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert teacher.systems == []  # hinted mode: the answer is the gold; the retriever needs no teacher
    assert "Cats chase mice" not in rows[0]["targets"]["related"]  # its own text is avoided
    assert rows[1]["targets"]["related"].startswith("[1] A magnet attracts iron nails")
    identity = json.loads((tmp_path / "d.jsonl.identity.json").read_text())
    assert (
        identity["indexes"]["related"]
        == json.loads((stack_file.parent / "index" / "manifest.json").read_text())["passages_sha256"]
    )


def test_finetune_trains_only_model_stages_and_keeps_the_index_reachable(stack_file, tiny_engine, tmp_path):
    cfg = load_stack_config(stack_file)
    records = [
        {
            "id": "r",
            "prompt": "Do magnets attract iron?",
            "targets": {"related": "[1] A magnet attracts iron.", "answer": "Yes."},
        }
    ]
    data = build_examples(cfg, tiny_engine, records, max_length=512)
    assert [d.stage for d in data] == ["answer"]
    moved = trained_stack_config(cfg, tmp_path / "elsewhere", ["answer"])
    assert moved.index_path(moved.stages[0]) == (stack_file.parent / "index").resolve()
    assert moved.stages[1].adapter == "adapters/answer"


def test_evaluation_refuses_items_the_retrieve_stage_could_find(tmp_path, tiny_model_dir, tiny_engine):
    from fslm.errors import InputError
    from fslm.evaluate import StackSystem, evaluate
    from fslm.retrieve import Passage, Retriever
    from fslm.tasks import load_task

    from .test_corpus import needs_data

    if needs_data.args[0]:
        pytest.skip("shared benchmark data not found")
    item = load_task("arc_easy", limit=2)[1]
    Retriever.build(
        [
            Passage(item.id, f"{item.question}\nAnswer: {item.choices[item.gold]}"),
            Passage("other", "An unrelated passage about magnets."),
        ]
    ).save(tmp_path / "index")
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(retrieval_stack(str(tiny_model_dir))))
    system = StackSystem(Stack(load_stack_config(path), tiny_engine))
    with pytest.raises(InputError, match=r"1 of the items to evaluate are passages of stage 'related'.*arc_easy"):
        evaluate(system, "arc_easy", limit=2)


def test_lm_eval_requests_never_read_a_passage_that_copies_them(stack_file, tiny_engine):
    """lm-eval's requests carry no item ids, so the plugin's stack drops passages sharing an 8-word run with the
    request; `fslm run` (decontaminate off) still reads them."""
    from fslm.evaluate import StackSystem
    from fslm.lm_eval_plugin import FslmLM

    class Req:
        def __init__(self, *args):
            self.args = args

    stack = Stack(load_stack_config(stack_file), tiny_engine)
    item = "Question: Water boils at 100 degrees Celsius at sea level. True or false?\nAnswer:"
    assert stack.run_batch([item], stages=1)[0].trace[0].retrieved[0] == "boil"
    lm = FslmLM(system=StackSystem(stack))
    read = []
    original = stack.run_batch
    stack.run_batch = lambda prompts, **kw: read.append(r := original(prompts, **kw)) or r
    lm.loglikelihood([Req(item, " true"), Req(item, " false")])
    lm.generate_until([Req(item, {"until": ["\n"], "max_gen_toks": 4})])
    assert len(read) == 2
    assert all("boil" not in r.trace[0].retrieved for batch in read for r in batch)
