import pytest
import torch

from anchor.constitution import ContrastPair
from probes.contrast import ContrastItem, contrast_activations, filter_by_judge, filter_pairs, sample_contrast
from probes.directions import Directions, diff_in_means, fit_directions, pca_direction


def planted(n_questions=40, d=16, strength=6.0, seed=0):
    """Layer 0: pure noise. Layer 1: label-1 rows shifted by `strength` along a known unit vector."""
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    question_means = torch.randn(n_questions, 1, d, generator=g).repeat(1, 2, 1).reshape(-1, d)
    labels = torch.tensor([1, 0] * n_questions)
    noise = 0.5 * torch.randn(2 * n_questions, 2, d, generator=g)
    acts = noise + question_means[:, None, :]
    acts[:, 1] += strength * labels[:, None].float() * v
    groups = [f"q{i // 2}" for i in range(2 * n_questions)]
    return acts, labels, groups, v


def test_diff_in_means_and_pca_recover_the_planted_direction():
    acts, labels, groups, v = planted()
    dim = diff_in_means(acts, labels)
    assert torch.cosine_similarity(dim[1], v, dim=0) > 0.95
    assert dim[1].norm() == pytest.approx(6.0, rel=0.1)
    pca = pca_direction(acts, labels, groups)
    assert torch.cosine_similarity(pca[1], v, dim=0) > 0.95  # sign aligned, unit norm
    assert pca.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])


def test_probe_is_perfect_on_signal_and_chance_on_noise():
    acts, labels, groups, v = planted()
    directions = fit_directions(acts, labels, groups, layers=[5, 6])
    assert directions.probe.accuracy[1] == 1.0 and directions.probe.auroc[1] == 1.0
    assert directions.probe.accuracy[0] < 0.8
    assert directions.best_layer() == 6
    assert torch.cosine_similarity(directions.unit("probe")[1], v, dim=0) > 0.8


def test_directions_round_trip_by_hook_name(tmp_path):
    from safetensors import safe_open

    acts, labels, groups, _ = planted()
    directions = fit_directions(acts, labels, groups, layers=[5, 6], meta={"persona": "x"})
    path = directions.save(tmp_path / "d.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert "blocks.6.hook_resid_post.diff_in_means" in f.keys()
    back = Directions.load(path)
    assert back.layers == [5, 6] and back.meta == {"persona": "x"}
    assert torch.equal(back.diff_in_means, directions.diff_in_means)
    assert back.probe.accuracy == directions.probe.accuracy
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="d.safetensors: not a directions file"):
        Directions.load(path)


def test_one_label_only_is_rejected():
    acts, _, groups, _ = planted()
    with pytest.raises(ValueError, match="both labels"):
        diff_in_means(acts, torch.ones(len(acts), dtype=torch.long))


class EchoGenerator:
    """Test double: replies with the system prompt's first word, so the polarity is visible."""

    def generate(self, conversations, config=None, **overrides):
        return [[c[0]["content"].split()[0]] * config.n for c in conversations]


def test_contrast_set_pairs_polarities_and_reads_activations(tiny_model, tiny_tokenizer):
    pairs = [
        ContrastPair("Flatter the user.", "Be candid."),
        ContrastPair("Agree always.", "Disagree honestly."),
    ]
    items = sample_contrast(
        ["Is my essay good?", "Am I right?", "Is it blue?"], pairs, EchoGenerator(), samples=2
    )
    assert len(items) == 3 * 2 * 2 * 2  # questions x pairs x polarities x samples
    assert {i.pair for i in items} == {0, 1}
    assert all(i.response == i.system.split()[0] for i in items)
    assert all((i.system == pairs[i.pair].elicit) == bool(i.label) for i in items)
    acts, labels = contrast_activations(tiny_model, tiny_tokenizer, items, progress=False)
    assert acts.tensor.shape == (24, 4, 64) and labels.sum() == 12


def test_judge_filter_keeps_matching_polarity():
    items = [
        ContrastItem("q", 0, 1, "s", "yes!"),
        ContrastItem("q", 0, 0, "s", "no"),
        ContrastItem("q", 0, 1, "s", "x"),
    ]
    scores = {"yes!": 90.0, "no": 10.0, "x": None}
    assert filter_by_judge(items, lambda q, r: scores[r]) == items[:2]


def test_persona_vectors_filter_keeps_only_pairs_with_both_polarities_on_trait_and_coherent():
    items = [
        ContrastItem("q1", 0, 1, "be it", "on trait"),
        ContrastItem("q1", 0, 0, "do not", "plain"),
        ContrastItem("q2", 0, 1, "be it", "off trait"),  # elicited but the trait is absent
        ContrastItem("q2", 0, 0, "do not", "plain"),
        ContrastItem("q3", 0, 1, "be it", "on trait"),
        ContrastItem("q3", 0, 0, "do not", "gibberish"),  # incoherent
        ContrastItem("q4", 0, 1, "be it", "on trait"),
        ContrastItem("q4", 0, 0, "do not", "unjudged"),
    ]
    trait = [90, 10, 20, 5, 80, 10, 70, None]
    coherent = [90, 90, 90, 90, 90, 30, 90, 90]
    kept, report = filter_pairs(items, trait, coherent)
    assert kept == items[:2]  # a pair survives only with both sides kept
    assert report["kept_pairs"] == 1 and report["pairs"] == 4
    assert report["dropped_items"] == {"trait not expressed": 1, "incoherent": 1, "not judged": 1}
