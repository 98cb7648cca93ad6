"""`fslm check` (run / fit) end to end on a tiny model: files in, scored rows and a fitted checker out."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.collaborate.checker import check_file, fit_checker_file, p_supported, read_check_file

runner = CliRunner()

ROWS = [
    {"id": "a", "question": "Which planet is largest?", "answer": "Jupiter", "supported": True},
    {"id": "b", "question": "Which planet is largest?", "answer": "Mars", "supported": False},
    {
        "question": "How many legs has a spider?",
        "answer": "eight",
        "passages": ["A spider has eight legs."],
        "supported": True,
    },
    {
        "question": "How many legs has a spider?",
        "answer": "six",
        "passages": ["A spider has eight legs."],
        "supported": False,
    },
    {"question": "Water boils at?", "answer": "100 degrees Celsius", "supported": True},
    {"question": "Water boils at?", "answer": "10 degrees Celsius", "supported": False},
]


@pytest.fixture()
def labelled(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_fit_then_run_with_the_checker(labelled, tmp_path, tiny_model_dir, tiny_engine):
    model = str(tiny_model_dir)
    checker = tmp_path / "checker.json"
    result = runner.invoke(app, ["check", "fit", str(labelled), "--model", model, "--out", str(checker), "--json"])
    assert result.exit_code == 0, result.output
    fitted = json.loads(checker.read_text())
    assert fitted["kind"] == "fslm-checker" and fitted["model"] == model and fitted["passages"] == "mixed"
    assert fitted["n"] == 6 and fitted["n_unsupported"] == 3 and 0.0 <= fitted["threshold"] <= 1.0
    assert fitted == json.loads(result.output.strip().splitlines()[-1])

    scored = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["check", str(labelled), "--checker", str(checker), "--out", str(scored), "--json"])
    assert result.exit_code == 0, result.output  # `check ITEMS` = `check run ITEMS`; the model comes from the checker
    data = json.loads(result.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert rows == data["rows"] and [r.get("id") for r in rows] == ["a", "b", None, None, None, None]
    items, _ = read_check_file(labelled)
    raw = p_supported(tiny_engine, items)
    assert [r["p_supported"] for r in rows] == pytest.approx(raw, abs=1e-6)  # the CLI is the Python API
    for r in rows:
        assert r["unsupported"] == (r["p_supported_calibrated"] < fitted["threshold"])
    # the fit picked the F1-best threshold on these very rows: the report here reproduces its numbers
    assert data["labels"]["f1"] == pytest.approx(fitted["f1"], abs=1e-6)
    assert data["labels"]["n_unsupported"] == 3 and data["labels"]["auroc"] == pytest.approx(fitted["auroc"])

    result = runner.invoke(app, ["check", "run", str(labelled), "--model", model])
    assert result.exit_code == 0, result.output
    assert "6 answers" in result.output and "AUROC" in result.output


def test_python_twins_agree_with_each_other(labelled, tmp_path, tiny_model_dir, tiny_engine):
    fitted = fit_checker_file(labelled, str(tiny_model_dir), tmp_path / "c.json", engine=tiny_engine)
    rows, report = check_file(labelled, checker=tmp_path / "c.json", engine=tiny_engine)
    assert report["f1"] == pytest.approx(fitted["f1"], abs=1e-6)
    unlabelled = tmp_path / "plain.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "supported"}) + "\n" for r in ROWS))
    rows, report = check_file(unlabelled, str(tiny_model_dir), engine=tiny_engine)
    assert report is None and all("unsupported" not in r and "supported" not in r for r in rows)


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        (
            ['{"question": "q", "answer": "a", "supported": "yes"}'],
            [],
            r"bad.jsonl:1: 'supported' must be true or false",
        ),
        (
            ['{"question": "q", "answer": "a"}', '{"question": "q", "answer": "a", "source": 1}'],
            [],
            r"bad.jsonl:2: unknown field",
        ),
        (['{"question": "q", "answer": ""}'], [], r"bad.jsonl:1: 'answer' must be a non-empty string"),
        (['{"question": "q", "answer": "a", "passages": []}'], [], r"bad.jsonl:1: 'passages' is an empty list"),
        (["[1, 2]"], [], r"bad.jsonl:1: expected a JSON object"),
        (["{not json"], [], r"bad.jsonl:1: expected a JSON object per line"),
        ([], [], r"bad.jsonl: no rows"),
        (['{"question": "q", "answer": "a"}'], ["fit"], r"bad.jsonl:1: no 'supported' label"),
        (['{"question": "q", "answer": "a", "supported": true}'], ["fit"], r"needs both supported and unsupported"),
    ],
)
def test_bad_rows_exit_2_naming_file_and_line(tmp_path, tiny_model_dir, lines, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(line + "\n" for line in lines))
    extra = ["--out", str(tmp_path / "c.json")] if args else []
    result = runner.invoke(app, ["check", *(args or ["run"]), str(bad), "--model", str(tiny_model_dir), *extra])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "c.json").exists()


def test_checker_file_and_model_mistakes_exit_2(labelled, tmp_path, tiny_model_dir, tiny_draft_dir):
    checker = tmp_path / "checker.json"
    assert (
        runner.invoke(app, ["check", "fit", str(labelled), "-m", str(tiny_model_dir), "--out", str(checker)]).exit_code
        == 0
    )
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(json.loads(checker.read_text()) | {"threshold": 3}))
    (tmp_path / "other.json").write_text(json.dumps({"threshold": 0.5}))
    cases = [
        (["--checker", str(checker), "--model", str(tiny_draft_dir)], "was fitted for"),
        ([], "give --model, or --checker"),
        (["--checker", str(broken)], "'threshold' must be in [0, 1]"),
        (["--checker", str(labelled)], "not valid JSON"),
        (["--checker", str(tmp_path / "other.json")], "not a checker file"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["check", "run", str(labelled), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output and message in result.output and "Traceback" not in result.output


def test_rows_without_passages_are_checked_against_an_index(labelled, tmp_path, tiny_model_dir, tiny_engine):
    from fslm.collaborate.checker import CheckItem
    from fslm.retrieve import index_passages

    corpus = tmp_path / "passages.jsonl"
    texts = ["Jupiter is the largest planet of the solar system.", "A spider has eight legs.", "Paris is in France."]
    corpus.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    index_passages(corpus, tmp_path / "index")
    checker = tmp_path / "checker.json"
    fit = ["check", "fit", str(labelled), "-m", str(tiny_model_dir), "--index", str(tmp_path / "index"), "--k", "1"]
    result = runner.invoke(app, [*fit, "--out", str(checker)])
    assert result.exit_code == 0, result.output
    fitted = json.loads(checker.read_text())
    assert fitted["index"] == str(tmp_path / "index") and fitted["k"] == 1 and fitted["passages"] == "mixed"

    rows, _ = check_file(labelled, checker=checker, engine=tiny_engine)  # the checker's index and k
    assert rows[0]["passages"] == [texts[0]]  # "Which planet is largest?" finds the Jupiter passage
    assert rows[2]["passages"] == ["A spider has eight legs."]  # the row's own passages are kept
    assert "passages" not in rows[4]  # no passage shares a term with "Water boils at?": checked without
    expected = p_supported(tiny_engine, [CheckItem(ROWS[0]["question"], ROWS[0]["answer"], (texts[0],))])
    assert rows[0]["p_supported"] == pytest.approx(expected[0], abs=1e-6)

    for extra, message in [(["--index", str(tmp_path)], "was fitted with"), (["--k", "2"], "was fitted with 1")]:
        result = runner.invoke(app, ["check", "run", str(labelled), "--checker", str(checker), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
