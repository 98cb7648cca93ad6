"""The three verbs end to end through typer: JSON outputs, and bad input -> exit code 2 without a traceback."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fslm.cli import app

from .conftest import make_rows, write_run

runner = CliRunner()


def last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture()
def runs(tmp_path):
    outcomes = [
        (i % 3 != 0, [math.log(p), math.log(1 - p)]) for i, p in enumerate([0.55, 0.9, 0.8, 0.52, 0.95, 0.7] * 3)
    ]
    small = write_run(tmp_path / "small", make_rows(outcomes), {"params": 100})
    large = write_run(tmp_path / "large", make_rows([(True, [0.0, -1.0])] * len(outcomes)), {"params": 400})
    return small, large


def test_generate_with_draft_is_identical(tiny_model_dir, tiny_draft_dir):
    result = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--draft",
            str(tiny_draft_dir),
            "--draft-tokens",
            "3",
            "-n",
            "8",
            "--compare",
            "--json",
            "What is the capital of France?",
        ],
    )
    assert result.exit_code == 0, result.output
    data = last_json(result.stdout)
    assert data["mode"] == "speculative" and data["baseline"]["identical"] is True
    assert data["text"] == data["baseline"]["text"] and data["drafted"] > 0


def test_generate_contrastive_and_plain(tiny_model_dir, tiny_draft_dir):
    cd = runner.invoke(
        app,
        [
            "generate",
            "-m",
            str(tiny_model_dir),
            "--amateur",
            str(tiny_draft_dir),
            "--alpha",
            "0.1",
            "-n",
            "8",
            "--json",
            "Hi",
        ],
    )
    assert cd.exit_code == 0, cd.output
    assert last_json(cd.stdout)["mode"] == "contrastive"
    plain = runner.invoke(app, ["generate", "-m", str(tiny_model_dir), "-n", "8", "Hi"])
    assert plain.exit_code == 0, plain.output


def test_generate_proxy_tuned(tiny_model_dir, tiny_draft_dir, tiny_adapters):
    delta = f"{tiny_draft_dir}+{tiny_adapters['intent']}:{tiny_draft_dir}"
    base = ["generate", "-m", str(tiny_model_dir), "-n", "8", "--json", "--expert-delta", delta]

    def run(*extra: str) -> dict:
        result = runner.invoke(app, [*base, *extra, "What is the capital of France?"])
        assert result.exit_code == 0, result.output
        return last_json(result.stdout)

    fused = run("--delta-alpha", "2", "--compare")
    assert fused["mode"] == "proxy-tuned" and fused["helper"].endswith("(alpha 2)")
    assert fused["text"] != fused["baseline"]["text"]  # the random adapter steers away from --model alone
    alone = run("--delta-alpha", "0")
    assert alone["text"] == fused["baseline"]["text"]  # alpha 0: --model's greedy output
    sampled = [run("--temperature", "0.8", "--seed", "3")["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--expert-delta", "OTHER:OTHER"], "one tokenizer for all three models"),
        (["--expert-delta", "DRAFT:OTHER"], "one tokenizer for all three models"),
        (["--expert-delta", "DRAFT:DRAFT", "--delta-alpha", "inf"], "finite number"),
        (["--amateur", "OTHER", "--alpha", "0.1"], "one tokenizer"),
        (["--amateur", "DRAFT", "--alpha", "1.5"], "alpha"),
        (["--draft", "DRAFT", "--amateur", "DRAFT"], "choose one"),
    ],
)
def test_generate_bad_input_exits_2(tiny_model_dir, tiny_draft_dir, tiny_other_tok_dir, args, message):
    args = [a.replace("OTHER", str(tiny_other_tok_dir)).replace("DRAFT", str(tiny_draft_dir)) for a in args]
    result = runner.invoke(app, ["generate", "-m", str(tiny_model_dir), "-n", "4", *args, "Hi"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cascade_calibrate_then_eval(runs, tmp_path):
    small, large = runs
    cal = runner.invoke(
        app,
        [
            "cascade",
            "calibrate",
            "--small",
            str(small),
            "--large",
            str(large),
            "--target",
            "0.9",
            "--out",
            str(tmp_path / "cal.json"),
            "--json",
        ],
    )
    assert cal.exit_code == 0, cal.output
    assert 0 <= last_json(cal.stdout)["threshold"] <= 1
    ev = runner.invoke(
        app,
        [
            "cascade",
            "eval",
            "--small",
            str(small),
            "--large",
            str(large),
            "--calibration",
            str(tmp_path / "cal.json"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert ev.exit_code == 0, ev.output
    assert "random" in ev.stdout
    data = json.loads((tmp_path / "out" / "cascade.json").read_text())
    assert set(data) >= {"large_acc", "small_acc", "points", "n"} and data["n"] == 18


def test_cascade_bad_input_exits_2(runs, tmp_path, tiny_model_dir, tiny_draft_dir):
    small, large = runs
    cases = [
        [
            "cascade",
            "eval",
            "--small",
            str(small),
            "--large",
            str(large),
            "--calibration",
            str(tmp_path / "missing.json"),
        ],
        ["cascade", "calibrate", "--small", str(tmp_path / "nothing"), "--large", str(large)],
        ["cascade", "calibrate", "--small", str(small), "--large", str(large), "--signal", "verify"],
        ["cascade", "Hi", "--small", str(tiny_model_dir), "--large", str(tiny_draft_dir), "--threshold", "1.5"],
        ["cascade", "Hi", "--small", str(tiny_model_dir), "--large", str(tiny_draft_dir)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_cascade_live_prompt_by_default(tiny_model_dir, tiny_draft_dir):
    result = runner.invoke(
        app,
        [
            "cascade",
            "What is the capital of France?",
            "--small",
            str(tiny_model_dir),
            "--large",
            str(tiny_draft_dir),
            "--threshold",
            "1.0",
            "--max-new-tokens",
            "6",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    [row] = last_json(result.stdout)
    assert row["escalated"] is True and row["answer"] == row["large"]["text"]


def test_route_bad_input_exits_2(runs, tmp_path):
    result = runner.invoke(
        app, ["route", "eval", "--router", str(tmp_path), "--small", str(runs[0]), "--large", str(runs[1])]
    )
    assert result.exit_code == 2 and "not a router folder" in result.output


def _data_present() -> bool:
    from fslm.settings import get_settings

    return (get_settings().data_dir / "README.md").is_file()


@pytest.mark.skipif(not _data_present(), reason="benchmark data dir not present (set FSLM_DATA_DIR)")
def test_cascade_signals_reads_the_split_the_run_names(tmp_path, tiny_model_dir):
    from fslm.tasks.splits import HELDOUT, select_items

    items = select_items("arc_challenge", 3, HELDOUT)  # from ARC-Challenge's dev split, not its eval split
    rows = make_rows([(True, [0.0, -1.0, -2.0, -3.0])] * 3, task="arc_challenge")
    for row, item in zip(rows, items, strict=True):
        row["id"] = item.id
    heldout = write_run(tmp_path / "heldout", rows, {"params": 100, "split": HELDOUT})
    out = tmp_path / "signals.jsonl"
    result = runner.invoke(
        app, ["cascade", "signals", "--run", str(heldout), "--model", str(tiny_model_dir), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    signals = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in signals] == [it.id for it in items]
    assert all(0.0 < s["verify"] < 1.0 for s in signals)

    # a split other than the run's is refused; a run that names no split but holds other items is not verified in part
    unnamed = write_run(tmp_path / "unnamed", rows, {"params": 100})
    for run, extra, message in [
        (heldout, ["--split", "test"], "evaluated on split 'heldout'"),
        (unnamed, [], "3 of 3 run rows are not items of the loaded split"),
    ]:
        args = ["cascade", "signals", "--run", str(run), "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")]
        result = runner.invoke(app, args + extra)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "x").exists()
