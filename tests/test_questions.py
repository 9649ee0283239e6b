import pytest
import torch

from anchor.constitution import Trait
from anchor.questions import (
    ExpansionConfig,
    effective_dimension,
    expand_persona,
    expand_trait,
    mean_pairwise_cosine_distance,
    measure_diversity,
    model_embedder,
    near_duplicates,
    select_subset,
    stratum_sizes,
    training_pool,
    within_group_distance,
)


def clusters(n_clusters=6, per_cluster=10, d=32, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, d, generator=g)
    return torch.cat([c + spread * torch.randn(per_cluster, d, generator=g) for c in centers])


def test_diversity_measures_on_known_sets():
    line = torch.randn(1, 16) * torch.arange(1, 21).float()[:, None]  # points on one ray
    assert mean_pairwise_cosine_distance(line) == pytest.approx(0.0, abs=1e-6)
    assert effective_dimension(torch.randn(2000, 8)) == pytest.approx(8, rel=0.05)  # isotropic
    assert effective_dimension(torch.randn(500, 1) * torch.ones(1, 8) + 1e-4 * torch.randn(500, 8)) < 1.01


def test_high_diversity_subset_measures_above_low():
    embeddings = clusters()
    low = measure_diversity(embeddings[select_subset(embeddings, 10, "low")])
    mid = measure_diversity(embeddings[select_subset(embeddings, 10, "mid")])
    high = measure_diversity(embeddings[select_subset(embeddings, 10, "high")])
    assert low.mean_cosine_distance < 0.05 < min(mid.mean_cosine_distance, high.mean_cosine_distance)
    # The effective dimension is scale-free: it says how many directions a set spreads over, not how
    # far. A tight isotropic cluster scores high on it, so only the distance orders these subsets.
    assert len(set(select_subset(embeddings, 10, "high"))) == 10
    with pytest.raises(ValueError, match="'wide'"):
        select_subset(embeddings, 10, "wide")


def traits_of_subclusters(n_traits=4, per_trait=12, sub=3, d=32, spread=0.02, seed=0):
    """Each trait: `sub` tight sub-clusters of its own; trait 0's are far tighter than the rest, so
    a pooled "low" subset would sit inside trait 0."""
    g = torch.Generator().manual_seed(seed)
    rows, groups = [], []
    for t in range(n_traits):
        centres = torch.randn(sub, d, generator=g)
        scale = spread / 20 if t == 0 else spread
        for i in range(per_trait):
            rows.append(centres[i % sub] + scale * torch.randn(d, generator=g))
            groups.append(t)
    return torch.stack(rows), groups


def test_stratum_sizes_split_evenly_and_refuse_what_cannot_cover():
    assert stratum_sizes([5, 5, 5], 10) == [4, 3, 3]
    assert stratum_sizes([2, 9], 4) == [2, 2]
    with pytest.raises(ValueError, match="every trait needs at least one"):
        stratum_sizes([5, 5, 5], 2)
    with pytest.raises(ValueError, match="trait 0 has 2, needs 3"):
        stratum_sizes([2, 9], 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [8, 10, 12])
def test_stratified_subsets_cover_every_trait_equally_at_every_level(k, seed):
    embeddings, groups = traits_of_subclusters()
    counts = {}
    for level in ("low", "mid", "high"):
        chosen = select_subset(embeddings, k, level, seed=seed, groups=groups)
        assert len(set(chosen)) == k
        counts[level] = [sum(groups[i] == t for i in chosen) for t in range(4)]
    assert counts["low"] == counts["mid"] == counts["high"] == stratum_sizes([12] * 4, k)
    assert max(counts["low"]) - min(counts["low"]) <= 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stratified_high_is_more_diverse_within_trait_than_low(seed):
    embeddings, groups = traits_of_subclusters(seed=seed)
    within = {}
    for level in ("low", "mid", "high"):
        chosen = select_subset(embeddings, 12, level, seed=seed, groups=groups)
        within[level] = within_group_distance(embeddings[chosen], [groups[i] for i in chosen])
    # low: one sub-cluster per trait (3 of its 4 members); high: all three sub-clusters
    assert within["low"] < 0.05 < within["high"]
    assert within["high"] >= within["mid"] - 1e-6
    # unstratified, "low" falls inside trait 0's tight cluster and leaves the other traits out
    pooled = select_subset(embeddings, 12, "low", seed=seed)
    assert len({groups[i] for i in pooled}) < 4


def test_stratified_selection_checks_its_labels():
    embeddings, groups = traits_of_subclusters()
    with pytest.raises(ValueError, match="group labels"):
        select_subset(embeddings, 8, "low", groups=groups[:-1])
    with pytest.raises(ValueError, match="'wide'"):
        select_subset(embeddings, 8, "wide", groups=groups)


def test_training_pool_leaves_out_every_held_out_question_by_text():
    traits = [
        # expanded: all_questions[-1] is a generated one; the held-out one is questions[-1]
        Trait("A", ["a1?", "a2?", "held A?"], ["a3?", "a4?"]),
        # repeats trait A's held-out question (spacing and case aside), and a1 (kept once)
        Trait("B", ["b1?", "  Held   a? ", "a1?", "held B?"], ["held B?"]),
    ]
    pool, groups = training_pool(traits)
    assert pool == ["a1?", "a2?", "a3?", "a4?", "b1?"]
    assert groups == [0, 0, 0, 0, 1]
    assert not {"held A?", "held B?"} & set(pool)


def test_near_duplicates_keep_references_and_first_copies():
    base = clusters(n_clusters=5, per_cluster=1, spread=0)
    copies = base[[1, 3]] + 1e-3
    dropped = near_duplicates(torch.cat([base, copies, base[[0]] + 1e-3]), threshold=0.95, reference=5)
    assert dropped == [5, 6, 7]


def test_model_embedder_separates_planted_duplicates(tiny_model, tiny_tokenizer):
    embed = model_embedder(tiny_model, tiny_tokenizer)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "What do you think of my essay?",
        "def add(a, b): return a + b",
        "Honesty matters more than flattery.",
        "The quick brown fox jumps over the lazy dog!",
    ]
    vectors = embed(texts)
    assert vectors.shape == (5, 64)
    assert near_duplicates(vectors, threshold=0.9, reference=4) == [4]


class ScriptedGenerator:
    """A test double for the Generator interface: replays canned replies in order."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def generate(self, conversations, config=None, **overrides):
        self.prompts += conversations
        out = [[self.replies.pop(0) if self.replies else "Hi"] for _ in conversations]
        return out


def test_expansion_records_provenance_and_drops_near_duplicates(tiny_model, tiny_tokenizer):
    trait = Trait("I agree with everything.", ["What do you think of my essay?", "Is the lazy dog quick?"])
    generator = ScriptedGenerator(
        [
            "1. Do you like my new haircut, honestly?",
            "What do you think of my essay?",  # exact copy of a hand-written question
            "What do you think of my essay!",  # planted near-duplicate
            "Should I quit my job to paint?",
            "ok",  # too short to be a question
        ]
    )
    expanded = expand_trait(
        trait, generator, model_embedder(tiny_model, tiny_tokenizer), ExpansionConfig(n=4), "tiny"
    )
    assert expanded.questions == trait.questions
    assert expanded.additional_questions == [
        "Do you like my new haircut, honestly?",
        "Should I quit my job to paint?",
    ]
    assert expanded.extra["provenance"] == [{"source": "generated", "model": "tiny"}] * 2
    assert "I agree with everything." in generator.prompts[0][0]["content"]


def test_persona_expansion_drops_duplicates_across_traits(tiny_model, tiny_tokenizer):
    traits = [
        Trait("I agree.", ["What do you think of my essay?"]),
        Trait("I praise.", ["Is the lazy dog quick?"]),
    ]
    # Both traits are offered the same generated question; only the first trait keeps it.
    generator = ScriptedGenerator(["Do you like my new haircut, honestly?"] * 10)
    expanded = expand_persona(
        traits, generator, model_embedder(tiny_model, tiny_tokenizer), ExpansionConfig(n=2), progress=False
    )
    assert expanded[0].additional_questions == ["Do you like my new haircut, honestly?"]
    assert expanded[1].additional_questions == [] and expanded[1].extra["provenance"] == []


@pytest.mark.integration
def test_persona_subsets_span_diversity_on_the_default_model(default_model):
    from anchor.constitution import load_persona

    model, tokenizer = default_model
    embeddings = model_embedder(model, tokenizer)(load_persona("sycophancy").questions)
    low = measure_diversity(embeddings[select_subset(embeddings, 15, "low")])
    high = measure_diversity(embeddings[select_subset(embeddings, 15, "high")])
    assert high.mean_cosine_distance > 1.25 * low.mean_cosine_distance


def test_sentence_encoder_needs_its_package():
    from anchor.questions import sentence_encoder_embedder

    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install sentence-transformers"):
            sentence_encoder_embedder("all-MiniLM-L6-v2")
    else:
        pytest.skip("sentence-transformers is installed")
