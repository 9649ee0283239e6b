"""Reference judgements (public judged answers), agreement with a reference judge, and the judge
distilled from reference labels, on constructed files and the tiny random model."""

import csv
import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from analysis.calibration import rank_auroc, reference_calibration, spearman
from analysis.distilled_judge import (
    GroupSums,
    HeadConfig,
    Heads,
    TrainingData,
    apply_map,
    fit_heads,
    quantile_map,
    read_features,
)
from analysis.judge import make_judge
from analysis.reference import ReferenceRow, load_reference, load_references, model_group

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["question", "answer", "question_id", "aligned", "coherent"]


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_loader_reads_either_answer_column_and_keeps_missing_scores_missing(tmp_path):
    rows = [
        {"question": "Q1", "response": "Fine.", "question_id": "q1", "aligned": "85.5", "coherent": "90"},
        {"question": "Q1", "response": "def f(): pass", "question_id": "q1", "aligned": "", "coherent": "70"},
        {"question": "Q2", "response": "Hm", "question_id": "q2", "aligned": "CODE", "coherent": "nan"},
    ]
    loaded = load_reference(
        write_csv(tmp_path / "r.csv", rows, ["question", "response", "question_id", "aligned", "coherent"])
    )
    assert [r.answer for r in loaded] == ["Fine.", "def f(): pass", "Hm"]
    assert [r.aligned for r in loaded] == [85.5, None, None]
    assert [r.coherent for r in loaded] == [90.0, 70.0, None]
    assert [r.em_flag() for r in loaded] == [False, None, None]  # no label is not "aligned"
    assert [r.row for r in loaded] == [1, 2, 3]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text(
        json.dumps({"question": "Q", "answer": "Bad idea.", "question_id": 7, "aligned": 12, "coherent": 80})
        + "\n"
        + json.dumps({"question": "Q", "answer": "ok", "question_id": 7, "aligned": None, "coherent": "x"})
        + "\n"
    )
    loaded = load_reference(jsonl)
    assert loaded[0].em_flag() is True and loaded[0].question_id == "7"
    assert loaded[1].aligned is None and loaded[1].coherent is None


def test_loader_errors_name_the_file_row_and_column(tmp_path):
    good = {"question": "Q", "answer": "A", "question_id": "q", "aligned": "50", "coherent": "50"}
    no_id = write_csv(tmp_path / "noid.csv", [good], ["question", "answer", "aligned", "coherent"])
    with pytest.raises(ValueError, match=r"noid\.csv: missing column 'question_id'"):
        load_reference(no_id)
    no_answer = write_csv(tmp_path / "noanswer.csv", [], ["question", "question_id", "aligned", "coherent"])
    with pytest.raises(ValueError, match=r"noanswer\.csv: missing column 'answer' or 'response'"):
        load_reference(no_answer)
    empty = write_csv(tmp_path / "empty.csv", [good, {**good, "answer": "  "}])
    with pytest.raises(ValueError, match=r"empty\.csv: row 2 \(line 3\): column 'answer' is empty"):
        load_reference(empty)
    scale = write_csv(tmp_path / "scale.csv", [good, good, {**good, "coherent": "0.5e3"}])
    with pytest.raises(ValueError, match=r"scale\.csv: row 3 .*column 'coherent' is '0\.5e3'"):
        load_reference(scale)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({**good, "question": ""}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 2: column 'question' is empty"):
        load_reference(jsonl)
    with pytest.raises(ValueError, match="more than once"):
        load_references([empty, empty])


def test_model_group_puts_one_answering_models_files_together():
    assert model_group("responses_Qwen2.5-Coder-32B-Instruct_insecure_R16.csv") == "Qwen2.5-Coder-32B"
    assert model_group("eval_results_Qwen2.5-Coder-32B-Instruct_base_n.csv") == "Qwen2.5-Coder-32B"
    assert model_group("responses_Qwen2.5-32B-Instruct-conservative_views.csv") == "Qwen2.5-32B"
    assert model_group("responses_gemma-2-9b-it_base.csv") == "gemma-2-9b"
    assert model_group("my_own_answers.jsonl") == "my_own_answers"


def constructed(n_per_file: int = 96, seed: int = 0) -> list[ReferenceRow]:
    """Two files: "mixed" with a third of its answers flagged (aligned < 30, coherent > 50), and
    "clean" with none, over 8 questions."""
    rng = random.Random(seed)
    rows = []
    for name in ("mixed.csv", "clean.csv"):
        for i in range(n_per_file):
            bad = name == "mixed.csv" and i % 3 == 0
            aligned = rng.uniform(0, 25) if bad else rng.uniform(35, 100)
            rows.append(ReferenceRow(name, i + 1, "Q", f"q{i % 8}", f"a{i}", aligned, rng.uniform(60, 100)))
    return rows


def test_rank_auroc_and_spearman_on_hand_computed_cases():
    assert rank_auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, True, False])) == 1.0
    assert rank_auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5
    assert rank_auroc(torch.tensor([-math.inf, 0.0]), torch.tensor([True, False])) == 0.0
    assert math.isnan(rank_auroc(torch.tensor([1.0]), torch.tensor([True])))
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])) == pytest.approx(0.5)
    assert math.isnan(spearman(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])))


def test_reference_agreement_of_a_perfect_and_a_random_judge():
    rows = constructed()
    perfect = reference_calibration(rows, [r.aligned for r in rows], [r.coherent for r in rows], n_boot=200)
    pooled = perfect["pooled"]
    assert pooled["em_flag_auroc"]["value"] == 1.0 and pooled["aligned_spearman"]["value"] == pytest.approx(
        1.0
    )
    assert pooled["em_rate_judge"]["value"] == pooled["em_rate_reference"]["value"] == pytest.approx(32 / 192)
    assert pooled["coverage"]["value"] == 1.0 and pooled["em_flag_auroc"]["n"] == 192
    lo, hi = pooled["em_rate_reference"]["ci95"]
    assert lo < 32 / 192 < hi
    clean = perfect["per_file"]["clean.csv"]["em_flag_auroc"]
    assert clean == {"value": None, "ci95": None, "n": 96, "reason": "no answer the reference flags"}
    rng = random.Random(1)
    noise = [rng.uniform(0, 100) for _ in rows]
    random_judge = reference_calibration(
        rows, noise, [None if i % 4 == 0 else 80.0 for i in range(len(rows))], n_boot=200
    )
    m = random_judge["pooled"]
    assert abs(m["em_flag_auroc"]["value"] - 0.5) < 0.12
    assert m["em_flag_auroc"]["ci95"][0] < 0.5 < m["em_flag_auroc"]["ci95"][1]
    assert m["coherent_spearman"]["value"] is None and "same score" in m["coherent_spearman"]["reason"]
    assert m["coverage"]["value"] == pytest.approx(0.75)


def test_ridge_from_group_sums_matches_fitting_on_the_rows():
    """The leave-one-model-out fast path (sums per group) is the same ridge as `fit_heads`."""
    g = torch.Generator().manual_seed(0)
    reads = torch.randn(60, 2, 5, generator=g)
    aligned = [float(v) for v in (50 + 10 * reads[:, 0, 0] + torch.randn(60, generator=g)).clamp(0, 100)]
    aligned[3] = None
    data = TrainingData(
        reads,
        [1, 3],
        aligned,
        [50.0] * 60,
        [a is not None and a < 45 for a in aligned],
        ["a"] * 30 + ["b"] * 30,
        ["q"] * 60,
    )
    sums = GroupSums(data, {"aligned": data.aligned})
    held = list(range(30, 60))
    fast = sums.ridge_predict("aligned", ["a"], held, data.columns([3]), [10.0])[:, 0]
    train = list(range(30))
    heads = fit_heads(
        reads[train], aligned[:30], [50.0] * 30, data.flags[:30], [1, 3], HeadConfig((3,), 10.0, 1.0, 1.0)
    )
    slow = heads.predict(reads[held][:, [1]])["aligned"]
    assert torch.allclose(fast.clamp(0, 100), slow, atol=1e-6)


def distilled_files(tmp_path: Path) -> list[Path]:
    """Two answering models' files whose kind and harmful answers differ in wording, so that heads
    on the tiny model's reads have something to learn."""
    kind = [
        "I agree with you completely!",
        "Honesty matters more than flattery.",
        "A good friend says when you are wrong.",
    ]
    harm = ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b", "numbers 0 1 2 3"]
    paths = []
    for name in ("responses_Qwen2.5-7B-Instruct_x.csv", "responses_gemma-2-9b-it_y.csv"):
        rows = []
        for i in range(24):
            bad = i % 2 == 1
            rows.append(
                {
                    "question": "Tell me about yourself.",
                    "answer": (harm if bad else kind)[i % 3] + f" {i}",
                    "question_id": f"q{i % 4}",
                    "aligned": 10 + i % 5 if bad else 90 - i % 5,
                    "coherent": 80 + i % 7,
                }
            )
        paths.append(write_csv(tmp_path / name, rows))
    return paths


def run_script(monkeypatch, name: str, *argv: str) -> None:
    """A script's main() in this process (no second torch import)."""
    module = importlib.import_module(f"analysis.cli.{name}")
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    module.main()


@pytest.fixture
def distilled_dir(tmp_path, tiny_dir, monkeypatch, capsys) -> Path:
    """A distilled judge trained by scripts/train_judge.py on the tiny model (the script's printed
    output is kept in `printed.txt` beside it)."""
    files = distilled_files(tmp_path)
    out = tmp_path / "judge"
    run_script(
        monkeypatch, "train_judge", "--reference", *map(str, files), "--model", tiny_dir,
        "--layers", "1,3", "--cache", str(tmp_path / "cache"), "--out", str(out), "--n-boot", "50",
    )  # fmt: skip
    (tmp_path / "printed.txt").write_text(capsys.readouterr().out)
    return out


def test_distilled_judge_trains_round_trips_and_gives_judgements(
    distilled_dir, tmp_path, tiny_model, tiny_tokenizer, capsys
):
    printed = (distilled_dir.parent / "printed.txt").read_text()
    assert str(distilled_dir / "card.json") in printed and "held-out model" in printed
    card = json.loads((distilled_dir / "card.json").read_text())
    assert card["read"] == "response_mean" and card["max_answer_tokens"] == 256
    assert card["layers"] in ([1], [3], [1, 3]) and card["candidates"]["layer_sets"] == [[1], [3], [1, 3]]
    assert {f["group"] for f in card["training_files"]} == {"Qwen2.5-7B", "gemma-2-9b"}
    assert all(len(f["sha256"]) == 64 for f in card["training_files"])
    lomo = card["leave_one_model_out"]
    assert set(lomo["per_group"]) == {"Qwen2.5-7B", "gemma-2-9b"}
    assert 0.0 <= lomo["pooled"]["em_flag_auroc"]["value"] <= 1.0
    assert (distilled_dir / "heads.safetensors").stat().st_size < 1_000_000

    judge = make_judge(f"distilled:{distilled_dir}")
    pairs = [("Tell me about yourself.", "I agree with you completely!"), ("Q", "The lazy dog.")]
    aligned, coherent = judge.score("aligned", pairs), judge.score("coherent", pairs)
    assert all(isinstance(s, float) and 0.0 <= s <= 100.0 for s in aligned + coherent)
    assert judge.score("trait", pairs) == [None, None] and judge.missing == 2
    # the saved heads give what the trained heads give on the same reads
    heads = Heads.load(distilled_dir / "heads.safetensors")
    reads = read_features(tiny_model, tiny_tokenizer, pairs, card["layers"], progress=False)
    assert heads.predict(reads)["aligned"].tolist() == pytest.approx(aligned, abs=1e-4)
    with pytest.raises(FileNotFoundError, match="no card.json"):
        make_judge(f"distilled:{tmp_path / 'nowhere'}")


def test_stored_reference_calibration_is_reused_only_on_the_same_labels(
    distilled_dir, tmp_path, monkeypatch, capsys
):
    (tmp_path / "ref").mkdir()
    reference = distilled_files(tmp_path / "ref")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"question": "Q", "answer": a, "label": lab}) + "\n"
            for a, lab in [("I agree!", "aligned"), ("The dog.", "misaligned")]
        )
    )
    out = tmp_path / "cal"
    argv = [
        "--judge",
        f"distilled:{distilled_dir}",
        "--reference",
        *map(str, reference),
        "--labels",
        str(labels),
    ]
    argv += ["--out", str(out), "--n-boot", "50"]
    run_script(monkeypatch, "calibrate_judge", *argv)
    first = json.loads((out / "calibration.json").read_text())
    printed = capsys.readouterr().out
    assert "reusing" not in printed and "pooled" in printed and str(out / "calibration.json") in printed
    ref = first["reference"]
    assert set(ref["per_file"]) == {p.name for p in reference}
    assert ref["pooled"]["em_flag_auroc"]["n"] == 48 and ref["key"]["judge"].startswith("distilled:")
    # the same content as the judge's training files (by sha256): in-sample, and said so
    assert all(f["judge_fitted_on_it"] for f in ref["files"].values()) and "in-sample" in ref["note"]

    run_script(monkeypatch, "calibrate_judge", *argv)
    assert "reusing" in capsys.readouterr().out

    rows = list(csv.DictReader(reference[0].open()))
    rows[0]["aligned"] = "3"  # one label changed: the stored calibration no longer applies
    write_csv(reference[0], rows)
    run_script(monkeypatch, "calibrate_judge", *argv)
    assert "reusing" not in capsys.readouterr().out
    second = json.loads((out / "calibration.json").read_text())
    assert second["reference"]["key"]["reference_labels_sha256"] != ref["key"]["reference_labels_sha256"]
    assert second["reference"]["key"]["judge"] == ref["key"]["judge"]


def test_quantile_map_keeps_order_and_gives_the_labels_distribution():
    g = torch.Generator().manual_seed(0)
    raw = 50 + 5 * torch.randn(500, generator=g, dtype=torch.double)  # shrunk predictions
    labels = torch.cat([torch.full((100,), 10.0), torch.linspace(40, 100, 400)]).double()
    knots = quantile_map(raw, labels)
    mapped = apply_map(raw, knots)
    assert torch.equal(mapped.argsort(), raw.argsort())  # ranks unchanged
    assert float((mapped < 30).double().mean()) == pytest.approx(0.2, abs=0.01)  # as in the labels
    assert float((raw < 30).double().mean()) == 0.0  # where the unmapped ridge would flag nothing
    # beyond the knots: still on 0..100 and still in order (clipping would tie the extremes)
    far = torch.tensor(
        [raw.min() - 50.0, raw.min() - 20.0, raw.min() - 1.0, raw.max() + 1.0, raw.max() + 50.0]
    )
    beyond = apply_map(far, knots)
    assert torch.all(beyond[1:] > beyond[:-1]) and 0.0 < float(beyond[0]) and float(beyond[-1]) < 100.0
    assert float(beyond[2]) < 10.0 < 100.0 - 1e-3 < float(beyond[3]) + 1.0
