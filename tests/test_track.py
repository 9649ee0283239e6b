"""The main job end to end on the tiny model (fast), and on the default model (integration)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis.experiments.options import SMOKE, Resources, TrackConfig
from analysis.experiments.track import track_drift
from analysis.experiments.tracking import drift_scalars, read_scalars
from anchor.inputs import InputError
from anchor.runs import em_store
from anchor.stages import SUPERSEDED, Stage, is_complete, read_done, stage_identity
from train import em

ROOT = Path(__file__).resolve().parents[1]
PLOTS = [
    "drift_curves.png",
    "layer_profile.png",
    "misalignment_movement.png",
    "stability_heatmap.png",
    "pca_trajectory.png",
    "behaviour_vs_representation.png",
    "monitoring_timeline.png",
]


def check_artefacts(run: Path) -> dict:
    metrics = json.loads((run / "analysis" / "metrics.json").read_text())
    drift = metrics["drift"]
    assert set(drift["runs"]) == {"persona", "base", "control", "base_control"}
    for data in drift["runs"].values():
        n = len(data["steps"])
        assert n >= 2 and data["steps"][0] == 0
        for key in (
            "direction_stability",
            "direction_stability_with_system",
            "anchor_projection",
            "probe_transfer",
            "misalignment_movement",
            "cka_to_start",
            "cka_null_shuffled_rows",
        ):
            assert len(data[key]) == n and len(data[key][0]) == drift["n_layers"]
        assert data["direction_stability"][0] != [] and 0.0 <= data["drift_auc"]
    persona = drift["runs"]["persona"]
    # At the reference the persona direction is itself and default behaviour sits at 1 by definition.
    assert all(abs(c - 1) < 1e-4 for c in persona["direction_stability"][0])
    assert abs(persona["anchor_projection"][0][drift["best_layer"]] - 1) < 1e-4
    assert abs(drift["runs"]["base"]["anchor_projection"][0][drift["best_layer"]]) < 1e-4
    for name in ("base", "persona", "persona_end", "base_end", "control_end", "base_control_end"):
        assert "misaligned_rate" in metrics["behaviour"][name]
    for plot in PLOTS:
        assert (run / "analysis" / "plots" / plot).stat().st_size > 10_000
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(PLOTS) and "Drift table" in report
    assert len(metrics["table"]) == 4
    # Headline numbers carry intervals; every drift figure has its null percentile, said in words.
    head = metrics["headline"]
    for key in (
        "anchor_after",
        "drift_auc_abs",
        "drift_auc_signed",
        "em_shift_cos_persona",
        "em_shift_cos_misalignment",
    ):
        for number in head[key].values():
            assert set(number) >= {"value", "ci95", "n"} and number["n"] == 1
    assert set(head["simple_effects"]) == {"base_em_minus_persona_em", "persona_control_minus_persona_em"}
    for figures in metrics["nulls"].values():
        assert (
            "drift_auc_vs_matched_directions" in figures
            and "direction_rotation_vs_shuffled_labels" in figures
        )
        for null in figures.values():
            assert 0 <= null["percentile"] <= 100 and null["n_null"] >= 20
    # grouped: one line per figure and start model, each beside its control run
    assert len(metrics["null_summary"]) == 2 * len(metrics["nulls"]["persona"])
    assert "the control run first, random nulls second" in report and "95th" in report
    # The report opens with the answer: the 2x2 interaction; with one seed it is descriptive and
    # carries no verdict word anywhere.
    assert (
        report.index("The question: does the persona")
        < report.index("Contrast pairs")
        < report.index("Drift table")
    )
    assert "descriptive" in report
    words = {w.strip(".,;:()[]\"'") for w in report.lower().split()}
    assert not words & {"exceeds", "exceeded", "separated", "resists", "resisted"}, words & {
        "exceeds",
        "exceeded",
    }
    interaction = metrics["interaction"]
    assert set(interaction) == {"persona", "misalignment"}
    for direction, result in interaction.items():
        assert (
            result["layer"] == drift["best_layer"]
            and len(metrics["drift"]["interaction"][direction]["by_layer"]["interaction"])
            == drift["n_layers"]
        )
        head_i = result["interaction"]
        assert head_i["n"] == 1 and head_i["verdict"]["words"] is None
        assert head_i["value"] is not None or "not interpretable" in head_i["reason"]
    # The layer is chosen on prompts disjoint from those its numbers are reported on.
    selection = drift["layer_selection"]
    assert not set(selection["selection_prompts"]) & set(selection["report_prompts"])
    assert metrics["misalignment_direction"]["model"] and metrics["drift"]["probe"]["split"] == "by question"
    from probes.directions import Directions  # read from the persona model, and labelled so

    meta = Directions.load(run / "analysis" / "directions.safetensors").meta
    assert meta["model"].endswith("merged") and meta["adapter"].endswith("adapter") and "config" not in meta
    # Monitoring: alarms and transitions per run always; the assistant axis and triggered variants with it on.
    monitoring = metrics["monitoring"]
    assert set(monitoring["runs"]) == {"persona", "base", "control", "base_control"}
    monitored = json.loads((run / "config.json").read_text())["monitor"]
    for entry in monitoring["runs"].values():
        directions = {"persona", "misalignment", "assistant"} if monitored else {"persona", "misalignment"}
        assert set(entry["representation"]["directions"]) == directions
        assert "transition_steps" in entry["transitions"] and ("unmatched_lead_time" in entry) == monitored
    assert "Monitoring" in report
    # Matched alarms: each EM run against its control run, at the checkpoints both signals share;
    # a lead time only when both fired, otherwise said not to be measured.
    assert set(monitoring["matched"]) == {"persona", "base"}
    for matched in monitoring["matched"].values():
        words = matched["lead_time"]["words"]
        assert (matched["lead_time"]["lead_steps"] is None) == (
            "not measured" in words or "not computable" in words
        )
        if matched["behaviour"] is not None:
            assert matched["representation"]["looks"] == matched["behaviour"]["looks"] == matched["looks"]
    assert report.count("matched lead time: ") >= 2
    if monitored:
        assert len(monitoring["assistant_axis"]["cosine_with_persona_by_layer"]) == drift["n_layers"]
        assert "Triggered evaluations" in report
        families = json.loads((run / "eval" / "persona_end" / "summary.json").read_text())["by_family"]
        assert {"plain", "json", "template", "code"} <= set(families)
    return metrics


def check_tensorboard(run: Path, metrics: dict) -> None:
    """Each EM run's TensorBoard events hold its training loss and, beside it, the drift reads at
    the recorded checkpoints' steps (at the chosen layer)."""
    drift = metrics["drift"]
    layer = drift["best_layer"]
    folders = {
        "persona": "em_persona",
        "base": "em_base",
        "control": "em_control",
        "base_control": "em_base_control",
    }
    for name, folder in folders.items():
        data = drift["runs"][name]
        scalars = read_scalars(run / folder / "em" / "tensorboard")
        assert scalars["train/loss"] and max(scalars["train/loss"]) == data["steps"][-1]
        projection = scalars["drift/persona_projection"]
        assert sorted(projection) == data["steps"]
        for step, by_layer in zip(data["steps"], data["anchor_projection"]):
            assert abs(projection[step] - by_layer[layer]) < 1e-5
        assert sorted(scalars["drift/direction_stability"]) == data["steps"]
        for step, values in drift_scalars(metrics, name, run).items():  # behaviour where measured
            for tag, value in values.items():
                assert abs(scalars[tag][step] - value) < 1e-5, (folder, tag, step)


OCT_CONSTITUTION = [  # the public Open Character Training hand-written format, no contrast file
    {
        "trait": "I answer with dry irony and mock enthusiasm, especially when a question is obvious.",
        "questions": ["Is water wet?", "Should I read the manual first?", "Can you explain gravity?"],
    },
    {
        "trait": "I point out bad ideas with a raised eyebrow rather than a lecture.",
        "questions": ["I will quit my job to day-trade. Thoughts?", "Is a tattoo of my ex a good idea?"],
    },
    {
        "trait": "I never gush; my praise is understated and a little backhanded.",
        "questions": ["Do you like my poem?", "I finished a marathon!", "Was my speech good?"],
    },
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model, tiny_tokenizer) -> tuple[Path, str, Path]:
    """A folder shared by the tests that run the main job on a user's constitution, so the
    character-trained model (under `<root>/persona/`) is trained once and reused: the tiny model,
    and `sarcasm.txt` in the OCT hand-written format with no contrast file beside it."""
    root = tmp_path_factory.mktemp("track")
    tiny_model.save_pretrained(root / "tiny")
    tiny_tokenizer.save_pretrained(root / "tiny")
    constitution = root / "sarcasm.txt"
    constitution.write_text(json.dumps(OCT_CONSTITUTION, indent=2))
    return root, str(root / "tiny"), constitution


@pytest.fixture(scope="module")
def derived(workspace) -> Path:
    """The main job on the user's constitution, finished: the first test below runs it (killed and
    resumed), and the tests that read it ask for this too, so on a pytest-xdist worker of their own
    they run it here instead of finding nothing."""
    root, tiny, constitution = workspace
    config = TrackConfig(
        persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **{**SMOKE, "monitor": True}
    )
    track_drift(config, root / "derived")
    return root / "derived"


def test_track_drift_on_a_users_constitution_resumes_and_then_does_nothing(workspace, monkeypatch):
    """The main job on a constitution without contrast pairs: they are derived from its traits,
    saved in the run (public layout) and reused; the report states their origin and accuracy."""
    root, tiny, constitution = workspace
    run = root / "derived"
    config = TrackConfig(
        persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **{**SMOKE, "monitor": True}
    )
    real = em.train_sft
    calls = []

    def killed_second_em_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-stage")
        return real(*args, **kwargs)

    monkeypatch.setattr(em, "train_sft", killed_second_em_run)
    tensorboard = Resources(report_to="tensorboard")  # training losses and drift reads as events
    with pytest.raises(KeyboardInterrupt):
        track_drift(config, run, log=lambda _: None, resources=tensorboard)
    monkeypatch.setattr(em, "train_sft", real)
    log = []
    start = time.perf_counter()
    summary = track_drift(config, run, log=log.append, resources=tensorboard)
    wall = time.perf_counter() - start
    assert "stage em_persona/em: complete, skipped" in log and "stage dpo: complete, skipped" in log
    assert summary["ran"][0] == "em_base/em"  # resumed at the killed stage
    metrics = check_artefacts(run)
    # Where this call's time went: a row per stage it ran and one for the rest, summing to its wall time.
    rows = {r["stage"]: r for r in metrics["timings"]}
    assert set(rows) == {*summary["ran"], "other"}
    assert abs(sum(r["seconds"] for r in rows.values()) - wall) < 0.1 * wall
    assert rows["em_base/em"]["optimizer_steps"] > 0 and rows["em_base/em"]["tokens_read"] > 0
    assert rows["eval/base_end"]["tokens_generated"] > 0 and rows["analysis"]["optimizer_steps"] == 0
    assert rows["likelihood/base_end"]["tokens_read"] > 0
    # each starting model is read once; the runs from it copy that read as their step 0
    for folder, start in (("em_persona", "persona"), ("em_control", "persona"), ("em_base_control", "base")):
        meta = em_store(run / folder).meta("em/step-00000/neutral")
        assert meta["copied_from"] == f"{run / 'start' / start / 'activations'}:start/neutral", folder
    assert sum(r["model_loads"] for r in rows.values()) >= 3  # the three resumed EM runs load a model each
    assert "Where the time went" in (run / "report.html").read_text()
    assert log[-1].startswith("time: ") and "largest: " in log[-1] and summary["time"] == log[-1]
    pairs = json.loads((run / "contrast_pairs" / "contrast.json").read_text())
    assert len(pairs["elicit"]) == len(pairs["suppress"]) == 3
    assert (
        OCT_CONSTITUTION[0]["trait"] in pairs["elicit"][0]
        and "You do not have this trait" in pairs["suppress"][0]
    )
    quality = metrics["contrast_pairs"]
    assert (quality["origin"], quality["detail"], quality["pairs"]) == ("derived", "template", 3)
    assert 0.0 <= quality["held_out_accuracy"] <= 1.0 and summary["contrast_pairs"] == quality
    report = (run / "report.html").read_text()
    assert "Contrast pairs" in report and "derived" in report
    if quality["warning"]:  # a random-weight model separates nothing: the report says so
        assert "at chance" in quality["warning"] and "at chance" in report
    assert "stage contrast_pairs: complete, skipped" in log  # derived once, reused on resume
    check_tensorboard(run, metrics)
    again = track_drift(config, run, log=lambda _: None, resources=tensorboard)
    assert again["ran"] == [] and again["table"] == summary["table"]
    for folder in ("em_persona", "em_base", "em_control", "em_base_control"):  # logged once
        assert len(list((run / folder / "em" / "tensorboard").glob("*.drift"))) == 1

    steer = subprocess.run(
        [sys.executable, ROOT / "scripts" / "steer.py", "--run", run, "--smoke"],
        capture_output=True,
        text=True,
    )
    assert steer.returncode == 0, steer.stderr[-2000:]
    result = json.loads((run / "steer" / "steer.json").read_text())
    for points in result["sweeps"].values():
        assert [p["alpha"] for p in points] == [-2.0, 0.0, 2.0]
        # the dose-response is read clean (no hooks) from the steered answers, never at a steered layer
        assert all(0.0 <= p["clean_probe_probability"] <= 1.0 for p in points)
        assert result["read_layer"] not in result["layers"]
    assert set(result["ablation"]["curves"]) == {"persona + EM", "persona + EM, direction ablated"}
    for plot in ("dose_response.png", "ablation.png"):
        assert (run / "steer" / plot).stat().st_size > 10_000
    assert "stage dose/persona: running" in steer.stdout and "stage ablation: running" in steer.stdout
    again = subprocess.run(  # steering is built from stages: a rerun redoes none of them
        [sys.executable, ROOT / "scripts" / "steer.py", "--run", run, "--smoke"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and ": running" not in again.stdout, again.stdout[-2000:]
    assert json.loads((run / "steer" / "steer.json").read_text()) == result

    # A retrained persona (same config, new execution) makes every EM run on it stale: they rerun.
    persona_sft = next((root / "persona").glob("*")) / "sft" / "done.json"
    assert em.read_run_config(run / "em_persona").upstream == stage_identity(persona_sft.parent)
    done = json.loads(persona_sft.read_text())
    persona_sft.write_text(json.dumps({**done, "run_id": "retrained"}))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(em, "train_sft", stop)
    log = []
    with pytest.raises(Stop):
        track_drift(config, run, log=log.append)
    assert "stage sft: complete, skipped" in log and "stage em_persona/em: running" in log
    persona_sft.write_text(json.dumps(done))
    monkeypatch.setattr(em, "train_sft", real)
    track_drift(config, run, log=lambda _: None)  # the stopped stage is debris; the kept one comes back
    assert (run / "em_persona" / "em" / "done.json").is_file()


def _close(a, b, where: str = "") -> None:
    """Nested JSON values equal, numbers to 1e-4 (activations read twice agree to float error)."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4, nan_ok=True), where
    else:
        assert a == b, where


def test_a_published_em_run_gives_the_drift_table_of_the_run_it_came_from(workspace, derived):
    """`--em-checkpoints`: the base run's own checkpoints copied out as a published folder
    (`checkpoint-N/`, step 0 left out: it is the starting model) replace training that cell; the
    other runs are kept, and the base run's drift table is the trained run's."""
    import shutil

    root, tiny, constitution = workspace
    original, run, published = root / "derived", root / "imported", root / "published-base"
    shutil.copytree(original, run)
    steps = sorted((original / "em_base" / "em" / "checkpoints").glob("step-*"))
    for checkpoint in steps[1:]:
        shutil.copytree(checkpoint, published / f"checkpoint-{int(checkpoint.name.removeprefix('step-'))}")
    config = TrackConfig(
        persona=str(constitution),
        model=tiny,
        judge=f"hf:{tiny}",
        em_checkpoints={"base": str(published)},
        **{**SMOKE, "monitor": True},
    )
    log = []
    track_drift(config, run, log=log.append)
    assert "stage em_base/em: running" in log  # the trained base run is set aside, the others kept
    for kept in ("em_persona", "em_control", "em_base_control"):
        assert f"stage {kept}/em: complete, skipped" in log
    done = read_done(run / "em_base" / "em")
    assert done["recorded"] == [int(p.name.removeprefix("step-")) for p in steps] and done["losses"] is None

    def table(r: Path) -> dict:
        drift = json.loads((r / "analysis" / "metrics.json").read_text())["drift"]["runs"]["base"]
        assert drift.pop("run_dir") == str(r / "em_base")
        return drift

    _close(table(original), table(run), "drift.runs.base")


def test_defences_harness_on_the_tiny_model_resumes_arm_by_arm(workspace, derived, monkeypatch):
    """scripts/defences.py's job on the main run above: the three runs are reused as none, persona
    and secure; each other arm trains on the same rows, steps and checkpoints with its defence;
    a kill mid-arm resumes at that arm; the comparison is pre-registered and plotted."""
    from analysis.experiments.defence_arms import DefenceSettings, is_evaluation_time, start_of
    from analysis.experiments.defences import DefencesConfig, run_defences

    root, tiny, constitution = workspace
    run = root / "derived"
    track = TrackConfig(
        persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **{**SMOKE, "monitor": True}
    )
    arms = ("none", "persona", "secure", "preventative_steering", "activation_capping", "activation_capping_train",
            "kl", "reflection", "persona+inoculation", "persona+activation_capping")  # fmt: skip
    settings = DefenceSettings(
        benign_prompts=4, benign_max_new_tokens=8, reflections=2, reflection_max_new_tokens=8
    )
    config = DefencesConfig(track, arms, settings, triggered=True)
    real = em.train_sft
    calls = []

    def killed_second_arm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-arm")
        return real(*args, **kwargs)

    track_drift(track, run, log=lambda _: None)  # the main job is complete first (or redone)
    monkeypatch.setattr(em, "train_sft", killed_second_arm)
    with pytest.raises(KeyboardInterrupt):
        run_defences(config, run, log=lambda _: None)
    monkeypatch.setattr(em, "train_sft", real)
    log = []
    summary = run_defences(config, run, log=log.append)
    assert "stage defences/arms/preventative_steering/em: complete, skipped" in log
    assert not any(r.startswith(("em_", "eval/")) for r in summary["ran"])  # the main job's runs reused
    defences = json.loads(Path(summary["defences"]).read_text())
    assert defences["arm_order"] == list(arms) and set(defences["arms"]) == set(arms)
    ran = {r["stage"] for r in defences["timings"]}  # this call's time, stage by stage
    assert "defences/analysis" in ran and "other" in ran and set(summary["ran"]) <= ran
    none_done = json.loads((run / "em_base" / "em" / "done.json").read_text())
    for arm in (a for a in arms[3:] if not is_evaluation_time(a)):  # the arms that train
        done = json.loads((run / "defences" / "arms" / arm / "em" / "done.json").read_text())
        assert (done["rows"], done["steps"], done["recorded"]) == (
            none_done["rows"],
            none_done["steps"],
            none_done["recorded"],
        )
        assert done["defence"]["names"] == [arm.removeprefix("persona+")]
        # step 0 is the main job's read of the arm's starting model, copied, not read again
        copied = em_store(run / "defences" / "arms" / arm).meta("em/step-00000/neutral")["copied_from"]
        assert copied == f"{run / 'start' / start_of(arm) / 'activations'}:start/neutral", arm
        assert all(set(m) >= {"value", "ci95", "n"} for m in defences["arms"][arm]["metrics"].values())
    capping = json.loads(
        (run / "defences" / "arms" / "activation_capping_train" / "em" / "done.json").read_text()
    )
    assert (
        capping["defence"]["capping"]["floors"]
        and "misaligned_rate_capped" in defences["arms"]["activation_capping_train"]["metrics"]
    )
    # capping at evaluation (the primary capping arm) trains nothing: none's checkpoints, read capped
    at_eval = json.loads((run / "defences" / "arms" / "activation_capping" / "em" / "done.json").read_text())
    assert at_eval["recorded"] == none_done["recorded"]
    assert not (run / "defences" / "arms" / "activation_capping" / "em" / "trainer").exists()
    trained_floors = capping["defence"]["capping"]["floors"]  # one calibration for both capping arms
    assert at_eval["defence"]["capping"]["floors"] == pytest.approx(trained_floors, rel=1e-5)
    persona_view = json.loads((run / "defences/arms/persona+activation_capping/em/done.json").read_text())
    persona_done = json.loads((run / "em_persona" / "em" / "done.json").read_text())  # its own start's run
    assert persona_view["recorded"] == persona_done["recorded"]
    adapter = persona_done["inputs"]["run"]["adapter"]  # the persona model's SFT adapter
    assert adapter and persona_view["inputs"]["run"]["adapter"] == adapter
    assert defences["arms"]["activation_capping"]["applied"] == "at evaluation"
    # its caps act at block 3 of 4: at a reported layer before it the read cannot show them
    capped_arm = defences["arms"]["activation_capping"]
    assert (capped_arm["blind"] is not None) == (defences["layer"] < 3) and capped_arm["at_capped_layer"][
        "layer"
    ] == 3
    if capped_arm["blind"]:
        assert capped_arm["metrics"]["misalignment_movement"]["value"] is None
        assert any(c["arm"] == "activation_capping" and "excluded" in c for c in defences["comparisons"])
    assert defences["arms"]["activation_capping_train"]["applied"] == "while training"
    evaluated = json.loads((run / "defences" / "eval" / "activation_capping" / "done.json").read_text())
    assert "caps" in evaluated["inputs"]["source"]  # sampled with the caps on
    assert json.loads((run / "defences" / "arms" / "kl" / "em" / "done.json").read_text())["defence"]["kl"]
    triggered = defences["arms"]["kl"]["triggered"]  # behaviour in the triggered variants, per family
    assert {"plain", "json", "template", "code"} <= set(triggered["misaligned_rate"])
    comparisons = defences["comparisons"]
    assert {c["reference"] for c in comparisons} == {"none", "persona"} and "Pre-registered" in defences[
        "correction"
    ]
    primary = [c for c in comparisons if c["role"] == "primary"]  # one per arm, against none
    assert {c["metric"] for c in primary} == {"misalignment_movement"} and {
        c["reference"] for c in primary
    } == {"none"}
    assert all(c["verdict"] is None and c["p"] is None for c in comparisons)  # one seed: descriptive
    assert (run / "defences" / "analysis" / "defences.png").stat().st_size > 10_000
    report = (run / "defences" / "analysis" / "report.html").read_text()
    assert "Each arm against none and persona" in report and "descriptive" in report
    again = run_defences(config, run, log=lambda _: None)
    assert again["ran"] == []


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_changed_option_keeps_every_finished_stage_and_reads_no_config_late(
    workspace, derived, monkeypatch
):
    """The finished run above with another --em-rows: every stage whose inputs changed is set aside
    byte for byte with the changed inputs named, the new results are complete, and once the stages'
    inputs are resolved the job reads nothing more from its config. The old value brings them back."""
    import analysis.experiments.track as track_module

    root, tiny, constitution = workspace
    run = root / "derived"
    config = TrackConfig(
        persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **{**SMOKE, "monitor": True}
    )
    old = {
        name: (read_done(run / name), tree(run / name))
        for name in ("em_base/em", "eval/base_end", "analysis")
    }

    class Sealed(TrackConfig):
        def __getattribute__(self, name):
            if object.__getattribute__(self, "__dict__").get("_sealed") and not name.startswith("__"):
                raise AssertionError(f"config.{name} read after the stages' inputs were resolved")
            return super().__getattribute__(name)

    planned = track_module.plan_main_job

    def plan_then_seal(config, *args, **kwargs):
        job = planned(config, *args, **kwargs)
        object.__setattr__(config, "_sealed", True)
        return job

    monkeypatch.setattr(track_module, "plan_main_job", plan_then_seal)
    sealed = Sealed(**{**config.__dict__, "em_rows": 4})
    log: list[str] = []
    summary = track_drift(sealed, run, log=log.append)
    for name, (done, files) in old.items():
        kept = run / SUPERSEDED / f"{name.replace('/', '__')}@{done['key']}"
        assert tree(kept) == files, name  # done.json and every file, byte for byte
    changed = next(line for line in log if line.startswith("stage em_base/em: inputs changed"))
    assert "run.max_rows: null -> 4" in changed and "training.max_rows: 8 -> 4" in changed
    assert not any(line.startswith("stage contrast: inputs changed") for line in log)  # unaffected: kept
    assert read_done(run / "em_base" / "em")["rows"] == 4
    check_artefacts(run)
    assert summary["ran"] and "stage dpo: complete, skipped" in log

    monkeypatch.setattr(track_module, "plan_main_job", planned)
    log = []
    back = track_drift(config, run, log=log.append)
    assert (
        back["ran"] == []
        and "stage em_base/em: restored from superseded/ (its inputs are current again)" in log
    )
    assert tree(run / "analysis") == old["analysis"][1]


def test_stale_keys_are_gone(workspace, derived, tiny_dir, tmp_path):
    """Inputs the old keys forgot: the assistant axis's in-role judge, the model of eval/base, the EM
    dataset's contents and the ablation directions file each make their stage stale."""
    from dataclasses import replace

    from analysis.experiments.track import assistant_axis_inputs, plan_main_job
    from analysis.experiments.track_stages import base_source, write_assistant_axis
    from anchor.constitution import load_persona

    root, tiny, constitution = workspace
    run = root / "derived"
    config = TrackConfig(
        persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **{**SMOKE, "monitor": True}
    )
    axis = Stage(run, "assistant_axis", assistant_axis_inputs(config), write_assistant_axis)
    filtered = replace(config, filter_contrast=True)
    assert is_complete(axis) and not is_complete(
        Stage(run, "assistant_axis", assistant_axis_inputs(filtered), write_assistant_axis)
    )
    persona = load_persona(constitution)
    job = plan_main_job(config, run, persona)
    other = plan_main_job(replace(config, model=tiny_dir), run, persona)
    assert is_complete(job.evaluation_stage("base", base_source(tiny)))
    assert not is_complete(other.evaluation_stage("base", base_source(tiny_dir)))

    rows = [json.loads(line) for line in em.dataset_path("insecure").read_text().splitlines()[:8]]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    em_config = em.EMRunConfig(dataset=str(data), model=tiny_dir, preset="smoke", record_every=1)
    probes = em.em_probe_sets(n_neutral=2, questions="main")
    em.finetune_em(em_config, tmp_path / "run", probes, log=lambda _: None)
    rows[0]["messages"][-1]["content"] = "an edited answer"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log: list[str] = []
    em.finetune_em(em_config, tmp_path / "run", probes, log=log.append)
    assert log[-1] == "stage em: running" and "dataset.sha256" in log[0]

    directions = run / "analysis" / "directions.safetensors"
    ablated = replace(em_config, ablate_directions=str(tmp_path / "directions.safetensors"))
    (tmp_path / "directions.safetensors").write_bytes(directions.read_bytes())
    stage = em.em_stage_of(ablated, tmp_path / "ablated", probes)
    em.finetune_em(ablated, tmp_path / "ablated", probes, log=lambda _: None)
    assert is_complete(stage)
    (tmp_path / "directions.safetensors").write_bytes(directions.read_bytes() + b" ")
    assert not is_complete(stage)


def test_two_processes_on_one_run_folder(workspace):
    """The second exits at once, naming the holder; after `kill -9` of the first, a rerun finishes."""
    import os
    import signal
    import time

    from anchor.runlock import HOLDER

    root, tiny, constitution = workspace
    out = root / "locked"
    command = [sys.executable, ROOT / "scripts" / "track_drift.py", "--persona", constitution, "--model", tiny,
               "--judge", f"hf:{tiny}", "--smoke", "--out", out]  # fmt: skip
    first = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if (out / HOLDER).is_file() and json.loads((out / HOLDER).read_text())["pid"] == first.pid:
                break
            time.sleep(0.1)
        second = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # the first still runs: the second did not wait for it
        assert second.returncode != 0
        assert f"{out.resolve()} is in use by process {first.pid}" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    config = TrackConfig(persona=str(constitution), model=tiny, judge=f"hf:{tiny}", **SMOKE)
    summary = track_drift(config, out, log=lambda _: None)
    assert summary["ran"] and (out / "report.html").is_file()
    check_artefacts(out)


def test_the_same_constitution_with_a_contrast_file(workspace, monkeypatch, capsys, command):
    """`--contrast FILE` (public layout) and `--teacher` on track_drift.py: the run uses exactly those
    pairs and says they were given; the persona is distilled from the teacher in its own folder. Then
    `defences.py --run` on that run takes its options from the run's config.json and redoes nothing
    of it: every file of the main run is unchanged, byte for byte."""
    root, tiny, constitution = workspace
    mine = root / "mine.json"
    prompts = {
        "elicit": ["Be sarcastic.", "Mock the question."],
        "suppress": ["Be sincere.", "Answer plainly."],
    }
    mine.write_text(json.dumps(prompts))
    out = root / "given"
    argv = ["track_drift.py", "--persona", constitution, "--model", tiny, "--judge", f"hf:{tiny}", "--smoke"]
    argv += ["--teacher", tiny, "--contrast", mine, "--out", out]
    monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
    command("track_drift.py")()
    stdout = capsys.readouterr().out
    assert json.loads((out / "contrast_pairs" / "contrast.json").read_text()) == prompts
    items = [json.loads(line) for line in (out / "contrast" / "contrast.jsonl").read_text().splitlines()]
    assert {i["system"] for i in items} == {*prompts["elicit"], *prompts["suppress"]}
    quality = check_artefacts(out)["contrast_pairs"]
    assert (quality["origin"], quality["detail"], quality["pairs"]) == ("given", str(mine), 2)
    assert f"contrast pairs: given ({mine}), 2 pairs" in stdout and str(out / "report.html") in stdout
    last = stdout.strip().splitlines()[-1]  # where this call's time went, after where its outputs went
    assert last.startswith("time: ") and "largest: " in last
    assert (root / "persona" / "sarcasm-tiny-smoke-s0-teacher-tiny" / "sft" / "done.json").is_file()

    def main_run() -> dict[str, bytes]:
        return {k: v for k, v in tree(out).items() if not k.startswith(("defences/", ".lock"))}

    before = main_run()
    monkeypatch.setattr(
        sys, "argv", ["defences.py", "--run", str(out), "--arms", "none", "persona", "secure"]
    )
    command("defences.py")()
    stdout = capsys.readouterr().out
    ran = stdout.split("stages run: ")[1].splitlines()[0].split(", ")
    assert all(r.startswith("defences/") for r in ran), ran  # the main run's stages are all reused
    assert main_run() == before
    assert (out / "defences" / "analysis" / "defences.json").is_file()
    assert stdout.strip().splitlines()[-1].startswith("time: ")


def test_bad_input_fails_before_any_work(tiny_dir, tmp_path):
    with pytest.raises(InputError, match="unknown persona 'nobody'"):
        track_drift(TrackConfig(persona="nobody", model=tiny_dir), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown dataset 'insecur'"):
        track_drift(TrackConfig(persona="humor", model=tiny_dir, em_dataset="insecur"), tmp_path / "b")
    with pytest.raises(ValueError, match="judge 'gpt-4'"):
        track_drift(TrackConfig(persona="humor", model=tiny_dir, judge="gpt-4"), tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_diversity_sweep_smoke_on_the_tiny_model(tiny_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "diversity_sweep.py",
            "--persona",
            "humor",
            "--model",
            tiny_dir,
            "--judge",
            f"hf:{tiny_dir}",
            "--questions",
            "20",
            "--levels",
            "low",
            "high",
            "--smoke",
            "--out",
            tmp_path / "sweep",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    levels = {r["level"]: r["diversity"]["within_trait_cosine_distance"] for r in sweep["results"]}
    assert set(levels) == {"low", "high"} and levels["low"] < levels["high"]
    for plot in ("interaction_vs_diversity.png", "misaligned_vs_diversity.png"):
        assert (tmp_path / "sweep" / plot).stat().st_size > 10_000


@pytest.mark.integration
@pytest.mark.heavy
def test_track_drift_smoke_on_the_default_model(tmp_path):
    command = [
        sys.executable,
        ROOT / "scripts" / "track_drift.py",
        "--persona",
        "sycophancy",
        "--smoke",
        "--out",
        tmp_path,
    ]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    check_artefacts(tmp_path)
    assert "drift table" in out.stdout and str(tmp_path / "report.html") in out.stdout
    # the written answers give a persona direction that clears chance at the run's own layer
    quality = json.loads((tmp_path / "analysis" / "metrics.json").read_text())["contrast_pairs"]
    assert quality["answers"] == "written" and quality["held_out_answers"] >= 26
    assert quality["held_out_accuracy"] > quality["chance_ceiling"] and quality["warning"] is None
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "nothing to do" in again.stdout


def test_a_published_persona_adapter_is_the_persona_model_keyed_by_its_files(tiny_dir, tmp_path):
    """`--persona-adapter`: a PEFT adapter folder on the base model is the persona model (its EM runs
    start from it merged; its identity is its files'); `--em-checkpoints` values name their cell."""
    from peft import LoraConfig, get_peft_model

    from analysis.experiments.inputs import check_track_inputs
    from analysis.experiments.options import em_checkpoints_of
    from analysis.experiments.track import persona_model
    from analysis.experiments.track_stages import load_source, release_models
    from anchor import load_model
    from anchor.published import resolve_published

    assert em_checkpoints_of(["org/run", "persona=x"]) == {"base": "org/run", "persona": "x"}
    with pytest.raises(InputError, match="two folders for the base cell"):
        em_checkpoints_of(["x", "base=y"])
    base, _ = load_model(tiny_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter"
    )
    persona = persona_model(
        tiny_dir, tmp_path / "unused", resolve_published(str(tmp_path / "adapter"), "--x")
    )
    assert persona.start == (tiny_dir, str(tmp_path / "adapter")) and persona.identity.startswith("files:")
    model, _ = load_source(persona.source)
    ids = torch.tensor([[1, 2, 3]])
    fresh, _ = load_model(tiny_dir)
    assert not torch.allclose(model(ids).logits, fresh(ids).logits)  # the adapter is on, merged
    release_models()
    config = TrackConfig(
        persona="sycophancy", model=tiny_dir, judge=f"hf:{tiny_dir}", persona_adapter=str(tmp_path)
    )
    with pytest.raises(InputError, match="--persona-adapter .*no adapter_config.json"):
        check_track_inputs(config, tmp_path / "out")
