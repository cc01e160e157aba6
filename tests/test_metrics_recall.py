"""recall_at_k: equal to a full-sort oracle, to torchmetrics, and strict about bad input.

The oracle below restates the definition independently: scores in plain Python floats,
one full sort per query by (score descending, gallery index ascending) without the
excluded item, rank = position of the first correct target. Integer-valued embeddings
make dot and euclidean scores exact (so ties are real ties in both implementations);
cosine is checked on float64 Gaussian data, where ties have probability zero.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from valfusion.metrics import build_retrieval_setup, recall_at_k
from valfusion.metrics import ranking as ranking_module

# ---------------------------------------------------------------- the oracle


def oracle_scores(queries: torch.Tensor, gallery: torch.Tensor, similarity: str) -> list[list[float]]:
    q_rows, g_rows = queries.double().tolist(), gallery.double().tolist()

    def score(q: list[float], g: list[float]) -> float:
        if similarity == "dot":
            return sum(a * b for a, b in zip(q, g))
        if similarity == "euclidean":
            return -sum((a - b) ** 2 for a, b in zip(q, g))
        norm_q = math.sqrt(sum(a * a for a in q))
        norm_g = math.sqrt(sum(b * b for b in g))
        return sum(a * b for a, b in zip(q, g)) / (norm_q * norm_g)

    return [[score(q, g) for g in g_rows] for q in q_rows]


def oracle_ranking(scores: list[float], excluded: int) -> list[int]:
    """Full sort of one query's gallery: score descending, then lower index first."""
    kept = [j for j in range(len(scores)) if j != excluded]
    return sorted(kept, key=lambda j: (-scores[j], j))


def oracle(queries, gallery, correct, exclude=None, similarity="dot", k=None):
    """Ranks (-1 = no correct target) and the first ``k`` indices (-1 padded to min(k, G))."""
    scores = oracle_scores(queries, gallery, similarity)
    exclude = [-1] * len(scores) if exclude is None else list(exclude)
    ranks, lists = [], []
    for row, targets, excluded in zip(scores, correct, exclude):
        order = oracle_ranking(row, excluded)
        positions = [order.index(t) for t in set(targets) if t != excluded]
        ranks.append(min(positions) if positions else -1)
        if k is not None:
            width = min(k, len(row))
            lists.append((order + [-1] * width)[:width])
    return ranks, lists


def oracle_recall(ranks: list[int], k: int) -> float:
    return sum(0 <= r < k for r in ranks) / len(ranks)


# ---------------------------------------------------------------- data


@st.composite
def problems(draw, integer: bool = True, max_queries: int = 10, max_gallery: int = 40):
    """Sizes chosen by hypothesis; values from a seeded generator (small ints: many ties).

    Float data has D >= 2: in one dimension every cosine is exactly +-1, a tie that the two
    implementations' different rounding would break differently.
    """
    num_queries = draw(st.integers(1, max_queries))
    gallery_size = draw(st.integers(1, max_gallery))
    dim = draw(st.integers(1 if integer else 2, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if integer:
        queries = torch.randint(-2, 3, (num_queries, dim), generator=gen).float()
        gallery = torch.randint(-2, 3, (gallery_size, dim), generator=gen).float()
    else:
        queries = torch.randn(num_queries, dim, generator=gen, dtype=torch.float64)
        gallery = torch.randn(gallery_size, dim, generator=gen, dtype=torch.float64)
    return queries, gallery, gen


def random_targets(gen, num_queries: int, gallery_size: int, max_per_query: int = 1):
    counts = torch.randint(1, max_per_query + 1, (num_queries,), generator=gen).tolist()
    return [torch.randint(0, gallery_size, (c,), generator=gen).tolist() for c in counts]


def random_exclude(gen, num_queries: int, gallery_size: int) -> list[int]:
    return torch.randint(-1, gallery_size, (num_queries,), generator=gen).tolist()


KS = (1, 2, 5, 50)
# Short lists leave most best targets outside the top list, so their ranks come from the
# counting passes rather than from the list position (both paths must equal the oracle).
SHORT_KS = (1, 3)


# ---------------------------------------------------------------- equal to the oracle


@pytest.mark.parametrize("similarity", ["dot", "euclidean"])
@given(problem=problems())
def test_single_target_ranks_equal_full_sort_oracle(similarity, problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    expected, _ = oracle(queries, gallery, targets, similarity=similarity)
    result = recall_at_k(queries, gallery, targets=torch.tensor(targets)[:, 0], ks=SHORT_KS, similarity=similarity)
    assert result.ranks.tolist() == expected


@given(problem=problems(integer=False))
def test_cosine_ranks_equal_full_sort_oracle(problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    expected, _ = oracle(queries, gallery, targets, similarity="cosine")
    result = recall_at_k(queries, gallery, targets=targets, ks=SHORT_KS, similarity="cosine")
    assert result.ranks.tolist() == expected


@given(problem=problems())
def test_recall_is_fraction_of_oracle_ranks_below_k(problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    expected, _ = oracle(queries, gallery, targets)
    result = recall_at_k(queries, gallery, targets=targets, ks=KS, similarity="dot")
    assert result.recall == pytest.approx({k: oracle_recall(expected, k) for k in KS}, abs=1e-12)


@given(problem=problems())
def test_multiple_targets_rank_is_that_of_best_ranked_target(problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=4)
    expected, _ = oracle(queries, gallery, targets)
    result = recall_at_k(queries, gallery, targets=targets, ks=SHORT_KS, similarity="dot")
    assert result.ranks.tolist() == expected


@given(problem=problems())
def test_padded_tensor_targets_equal_list_targets(problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=4)
    padded = torch.full((len(targets), 4), -1)
    for i, row in enumerate(targets):
        padded[i, : len(row)] = torch.tensor(row)
    from_list = recall_at_k(queries, gallery, targets=targets, similarity="dot")
    from_padded = recall_at_k(queries, gallery, targets=padded, similarity="dot")
    assert torch.equal(from_list.ranks, from_padded.ranks)


@given(problem=problems(), num_labels=st.integers(1, 5))
def test_label_targets_rank_equals_oracle_over_same_label_items(problem, num_labels):
    queries, gallery, gen = problem
    query_labels = torch.randint(0, num_labels, (len(queries),), generator=gen)
    gallery_labels = torch.randint(0, num_labels, (len(gallery),), generator=gen)
    correct = [[j for j, g in enumerate(gallery_labels.tolist()) if g == q] for q in query_labels.tolist()]
    expected, _ = oracle(queries, gallery, correct)
    result = recall_at_k(
        queries, gallery, query_labels=query_labels, gallery_labels=gallery_labels,
        similarity="dot", missing="miss", ks=SHORT_KS,
    )
    assert result.ranks.tolist() == expected


@given(problem=problems(), num_labels=st.integers(1, 5))
def test_string_labels_equal_integer_labels(problem, num_labels):
    queries, gallery, gen = problem
    query_labels = torch.randint(0, num_labels + 1, (len(queries),), generator=gen)
    gallery_labels = torch.randint(0, num_labels, (len(gallery),), generator=gen)
    as_ints = recall_at_k(queries, gallery, query_labels=query_labels, gallery_labels=gallery_labels,
                          similarity="dot", missing="miss")
    as_strings = recall_at_k(
        queries, gallery, query_labels=[f"c{x}" for x in query_labels.tolist()],
        gallery_labels=[f"c{x}" for x in gallery_labels.tolist()], similarity="dot", missing="miss",
    )
    assert torch.equal(as_ints.ranks, as_strings.ranks)


@pytest.mark.parametrize("similarity", ["dot", "euclidean"])
@given(problem=problems())
def test_excluded_item_is_removed_from_ranking(similarity, problem):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=3)
    exclude = random_exclude(gen, len(queries), len(gallery))
    expected, _ = oracle(queries, gallery, targets, exclude, similarity=similarity)
    result = recall_at_k(queries, gallery, targets=targets, exclude=torch.tensor(exclude),
                         similarity=similarity, missing="miss", ks=SHORT_KS)
    assert result.ranks.tolist() == expected


@given(problem=problems(), k=st.integers(1, 50), excluding=st.booleans())
def test_topk_indices_equal_oracle_order(problem, k, excluding):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    exclude = random_exclude(gen, len(queries), len(gallery)) if excluding else None
    _, expected = oracle(queries, gallery, targets, exclude, k=k)
    result = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=(k,),
                         similarity="dot", missing="miss")
    assert result.topk_indices.tolist() == expected


@pytest.mark.parametrize("return_topk", [True, False])
@given(gallery_size=st.integers(2, 60), data=st.data())
def test_equal_scores_rank_by_lower_gallery_index(return_topk, gallery_size, data):
    # Every gallery item scores the same: the ranking is the gallery order itself.
    target = data.draw(st.integers(0, gallery_size - 1))
    excluded = data.draw(st.integers(-1, gallery_size - 1).filter(lambda e: e != target))
    gallery = torch.ones(gallery_size, 3)
    result = recall_at_k(torch.ones(1, 3), gallery, targets=[target], exclude=[excluded],
                         ks=(1, 5), return_topk=return_topk)
    assert result.ranks.item() == target - (0 <= excluded < target)


@given(problem=problems(), k=st.integers(1, 50))
def test_ranks_do_not_depend_on_top_list_length_or_presence(problem, k):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=3)
    exclude = random_exclude(gen, len(queries), len(gallery))
    kwargs = dict(targets=targets, exclude=exclude, similarity="dot", missing="miss")
    with_list = recall_at_k(queries, gallery, ks=(k,), **kwargs)
    without_list = recall_at_k(queries, gallery, ks=(k,), return_topk=False, **kwargs)
    assert torch.equal(with_list.ranks, without_list.ranks)


@given(problem=problems(max_gallery=8), extra=st.integers(1, 20))
def test_k_larger_than_gallery_counts_every_query_with_a_target(problem, extra):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    k = len(gallery) + extra
    result = recall_at_k(queries, gallery, targets=targets, ks=(k,), similarity="dot")
    assert result.recall[k] == 1.0


@given(problem=problems(max_gallery=8), extra=st.integers(1, 20))
def test_topk_width_is_clipped_to_gallery_size(problem, extra):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery))
    result = recall_at_k(queries, gallery, targets=targets, ks=(len(gallery) + extra,))
    assert result.topk_indices.shape == (len(queries), len(gallery))


@given(problem=problems(), ks=st.lists(st.integers(1, 60), min_size=1, max_size=6))
def test_recall_is_non_decreasing_in_k(problem, ks):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=2)
    recall = recall_at_k(queries, gallery, targets=targets, ks=ks, similarity="euclidean").recall
    values = [recall[k] for k in sorted(recall)]
    assert all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
@given(problem=problems(max_queries=20), chunk_size=st.integers(1, 25))
def test_chunk_size_never_changes_the_result(similarity, problem, chunk_size):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=3)
    exclude = random_exclude(gen, len(queries), len(gallery))
    kwargs = dict(targets=targets, exclude=exclude, similarity=similarity, missing="miss", ks=(1, 5, 10))
    whole = recall_at_k(queries, gallery, chunk_size=len(queries), **kwargs)
    chunked = recall_at_k(queries, gallery, chunk_size=chunk_size, **kwargs)
    assert torch.equal(whole.ranks, chunked.ranks)
    assert torch.equal(whole.topk_indices, chunked.topk_indices)


@given(problem=problems())
def test_float64_counting_path_gives_same_ranks(problem):
    # Galleries of 2**24 items or more count in float64; force that path on small data.
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=2)
    expected, _ = oracle(queries, gallery, targets)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranking_module, "_EXACT_FLOAT32_COUNT", 1)
        result = recall_at_k(queries, gallery, targets=targets, similarity="dot", ks=SHORT_KS)
    assert result.ranks.tolist() == expected


@given(problem=problems(max_queries=20), block=st.integers(1, 100), excluding=st.booleans())
def test_counting_block_size_never_changes_ranks(problem, block, excluding):
    # The counting passes work on blocks of rows; force blocks of a few rows on small data.
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=2)
    exclude = random_exclude(gen, len(queries), len(gallery)) if excluding else None
    expected, _ = oracle(queries, gallery, targets, exclude)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranking_module, "_BLOCK_ELEMENTS", block)
        result = recall_at_k(queries, gallery, targets=targets, exclude=exclude, similarity="dot",
                             ks=SHORT_KS, missing="miss")
    assert result.ranks.tolist() == expected


# ---------------------------------------------------------------- equal to torchmetrics


def _flattened_for_torchmetrics(queries, gallery, targets, exclude):
    """Cosine scores of every (query, kept gallery item) pair, as torchmetrics expects them.

    Shifted by +2 (a ranking-preserving change): torchmetrics' retrieval_recall only counts
    relevant items whose prediction is positive, and cosine scores can be negative.
    """
    scores = torch.nn.functional.cosine_similarity(queries[:, None, :], gallery[None, :, :], dim=-1) + 2
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(targets):
        relevant[i, row] = True
    keep = torch.ones_like(relevant)
    keep[torch.arange(len(queries)), exclude] = False
    query_id = torch.arange(len(queries))[:, None].expand_as(scores)
    return scores[keep], relevant[keep], query_id[keep]


@given(problem=problems(integer=False, max_gallery=60), k=st.integers(1, 30))
def test_single_target_recall_equals_torchmetrics_retrieval_recall(problem, k):
    queries, gallery, gen = problem
    if len(gallery) < 2:
        gallery = torch.cat([gallery, -gallery])
    targets = torch.randint(0, len(gallery), (len(queries),), generator=gen)
    # Exclude some item other than the target (torchmetrics sees it dropped).
    exclude = (targets + torch.randint(1, len(gallery), (len(queries),), generator=gen)) % len(gallery)
    preds, relevant, query_id = _flattened_for_torchmetrics(queries, gallery, targets[:, None].tolist(), exclude)
    expected = RetrievalRecall(top_k=k)(preds, relevant, indexes=query_id).item()
    result = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=(k,))
    assert result.recall[k] == pytest.approx(expected, abs=1e-6)


@given(problem=problems(integer=False, max_gallery=60), k=st.integers(1, 30))
def test_multiple_target_recall_equals_torchmetrics_hit_rate(problem, k):
    queries, gallery, gen = problem
    targets = random_targets(gen, len(queries), len(gallery), max_per_query=4)
    exclude = torch.full((len(queries),), -1)
    scores = torch.nn.functional.cosine_similarity(queries[:, None, :], gallery[None, :, :], dim=-1)
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(targets):
        relevant[i, row] = True
    query_id = torch.arange(len(queries))[:, None].expand_as(scores)
    expected = RetrievalHitRate(top_k=k)(scores.flatten(), relevant.flatten(), indexes=query_id.flatten())
    result = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=(k,))
    assert result.recall[k] == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------- missing targets


def test_query_without_target_raises_by_default():
    queries, gallery = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="targets: 1 of 3 queries have no correct target"):
        recall_at_k(queries, gallery, targets=[[1], [], [2]])


def test_excluded_target_is_not_a_correct_answer():
    queries, gallery = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="no correct target"):
        recall_at_k(queries, gallery, targets=[1, 3], exclude=[1, -1])


def test_label_without_gallery_match_raises_by_default():
    queries, gallery = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="query_labels: 1 of 2 queries"):
        recall_at_k(queries, gallery, query_labels=["a", "z"], gallery_labels=["a", "b", "a"])


@given(problem=problems())
def test_query_without_target_counts_as_miss_when_asked(problem):
    queries, gallery, gen = problem
    targets = [row if i % 2 else [] for i, row in enumerate(random_targets(gen, len(queries), len(gallery)))]
    expected, _ = oracle(queries, gallery, targets)
    result = recall_at_k(queries, gallery, targets=targets, similarity="dot", missing="miss", ks=SHORT_KS)
    assert result.ranks.tolist() == expected
    assert result.recall == pytest.approx({k: oracle_recall(expected, k) for k in SHORT_KS}, abs=1e-12)


# ---------------------------------------------------------------- setups


def test_setup_supplies_targets_exclusions_and_protocol_fields():
    references = ["a", "b", "c", "a"]
    targets = ["b", "c", ["d", "e"], "e"]
    setup = build_retrieval_setup(references, targets, protocol="val")
    gen = torch.Generator().manual_seed(3)
    queries, gallery = torch.randn(4, 8, generator=gen), torch.randn(5, 8, generator=gen)
    ids = setup.gallery_ids
    explicit = recall_at_k(
        queries, gallery,
        targets=[[ids.index(t) for t in ([t] if isinstance(t, str) else t)] for t in targets],
        exclude=[ids.index(r) for r in references],
    )
    via_setup = recall_at_k(queries, gallery, setup=setup)
    assert torch.equal(via_setup.ranks, explicit.ranks)
    assert (via_setup.protocol, via_setup.gallery_size, via_setup.gallery_hash) == (
        "val", 5, setup.gallery_hash,
    )


def test_result_without_setup_has_no_protocol():
    result = recall_at_k(torch.randn(2, 3), torch.randn(4, 3), targets=[0, 1])
    assert (result.protocol, result.gallery_hash, result.gallery_size) == (None, None, 4)


# ---------------------------------------------------------------- bad input


Q, G, D = 3, 5, 4


def _call(**overrides):
    kwargs = dict(queries=torch.randn(Q, D), gallery=torch.randn(G, D), targets=torch.tensor([0, 1, 2]))
    kwargs.update(overrides)
    return recall_at_k(kwargs.pop("queries"), kwargs.pop("gallery"), **kwargs)


BAD_INPUTS = {
    "dim mismatch": (dict(gallery=torch.randn(G, D + 1)), r"gallery: expected embedding dim D .* = 4"),
    "queries not 2-D": (dict(queries=torch.randn(Q)), r"queries: expected a 2-D tensor \(Q, D\)"),
    "integer gallery": (dict(gallery=torch.ones(G, D, dtype=torch.long)), "gallery: expected a floating"),
    "dtype mismatch": (dict(gallery=torch.randn(G, D, dtype=torch.float64)), r"gallery: expected dtype torch.float32 on cpu \(as queries\), got dtype torch.float64"),
    "empty gallery": (dict(gallery=torch.randn(0, D)), r"gallery: expected at least one item"),
    "no queries": (dict(queries=torch.randn(0, D), targets=torch.zeros(0, dtype=torch.long)), "queries: expected at least one"),
    "target index too large": (dict(targets=torch.tensor([0, 5, 1])), r"targets: expected gallery indices in \[0, 5\).*got 5"),
    "target index below -1": (dict(targets=[[0], [-2], [1]]), r"targets: .*got -2"),
    "targets wrong length": (dict(targets=torch.tensor([0, 1])), r"targets: expected one entry per query \(Q = 3\), got 2"),
    "float targets": (dict(targets=torch.tensor([0.0, 1.0, 2.0])), "targets: expected an integer tensor"),
    "K below 1": (dict(ks=(1, 0)), r"ks: expected integers K >= 1, got 0"),
    "no K": (dict(ks=()), "ks: expected a non-empty sequence"),
    "exclude out of range": (dict(exclude=[0, 7, 1]), r"exclude: expected gallery indices in \[0, 5\).*got 7"),
    "exclude wrong shape": (dict(exclude=torch.tensor([0, 1])), r"exclude: expected shape \(3,\)"),
    "unknown similarity": (dict(similarity="l1"), "similarity: expected one of"),
    "chunk size 0": (dict(chunk_size=0), "chunk_size: expected a positive integer, got 0"),
    "unknown missing policy": (dict(missing="skip"), "missing: expected one of"),
    "nan query": (dict(queries=torch.tensor([[0.0] * D, [float("nan")] * D, [1.0] * D])), "queries: expected finite values.*row 1"),
    "inf in gallery": (dict(gallery=torch.full((G, D), float("inf"))), "gallery: expected finite values"),
    "targets and labels": (dict(query_labels=[0, 1, 2], gallery_labels=[0] * G), "targets: give either"),
    "no target source": (dict(targets=None), "targets: no correct targets given"),
    "one-sided labels": (dict(targets=None, query_labels=[0, 1, 2]), "gallery_labels: labels must be given"),
    "labels wrong length": (dict(targets=None, query_labels=[0, 1], gallery_labels=[0] * G), r"query_labels: expected one label per item, shape \(3,\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    overrides, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_setup_of_other_size_raises():
    setup = build_retrieval_setup(["a", "b"], ["b", "c"])
    with pytest.raises(ValueError, match=r"gallery: the setup's gallery has G = 3 items"):
        recall_at_k(torch.randn(2, 4), torch.randn(4, 4), setup=setup)


def test_setup_with_explicit_targets_raises():
    setup = build_retrieval_setup(["a", "b"], ["b", "c"])
    with pytest.raises(ValueError, match="setup: already defines targets"):
        recall_at_k(torch.randn(2, 4), torch.randn(3, 4), setup=setup, targets=[0, 1])
