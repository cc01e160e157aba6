"""recall_subset and top_k against a brute-force statement of the ranking rule.

Embeddings are small integers and the similarity is ``dot``, so every score is an exact
integer in float32 (equal scores are truly equal): the tie rule (lower gallery index
first) is exercised on many ties, and the brute force computes the same exact scores
with Python integers.
"""

from __future__ import annotations

import random

import pytest
import torch

from valfusion.metrics import recall_subset, top_k


def _integer_case(seed: int, num_queries: int = 40, gallery_size: int = 30, dim: int = 3):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (num_queries, dim), generator=gen).float()
    gallery = torch.randint(-2, 3, (gallery_size, dim), generator=gen).float()
    rng = random.Random(seed)
    subsets, targets, exclude = [], [], []
    for _ in range(num_queries):
        members = rng.sample(range(gallery_size), 6)
        subsets.append(members)
        exclude.append(members[rng.randrange(6)])  # the reference
        targets.append(rng.choice([m for m in members if m != exclude[-1]]))
    return queries, gallery, subsets, targets, exclude


def _score(q: torch.Tensor, g: torch.Tensor) -> int:
    return sum(int(a) * int(b) for a, b in zip(q.tolist(), g.tolist()))


def _brute_ranking(q, gallery, candidates):
    """The candidates ordered by score (descending), equal scores by gallery index (ascending)."""
    return sorted(candidates, key=lambda j: (-_score(q, gallery[j]), j))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_subset_matches_a_brute_force_loop(seed):
    queries, gallery, subsets, targets, exclude = _integer_case(seed)
    result = recall_subset(
        queries, gallery, subsets=subsets, targets=targets, exclude=exclude, similarity="dot", chunk_size=7
    )
    expected_ranks = []
    for i in range(len(queries)):
        candidates = [m for m in subsets[i] if m != exclude[i]]
        assert len(candidates) == 5
        expected_ranks.append(_brute_ranking(queries[i], gallery, candidates).index(targets[i]))
    assert result.ranks.tolist() == expected_ranks
    for k in (1, 2, 3):
        assert result.recall[k] == pytest.approx(sum(r < k for r in expected_ranks) / len(queries), abs=1e-12)
    top3 = [_brute_ranking(queries[i], gallery, [m for m in subsets[i] if m != exclude[i]])[:3] for i in range(len(queries))]
    assert result.topk_indices is not None and result.topk_indices.tolist() == top3


def test_ties_are_broken_by_lower_gallery_index_inside_the_subset():
    gallery = torch.ones(6, 2)  # every score equal
    queries = torch.ones(1, 2)
    result = recall_subset(queries, gallery, subsets=[[5, 3, 1, 4, 0, 2]], targets=[3], exclude=[1], similarity="dot")
    # candidates 0, 2, 3, 4, 5 in index order: the target 3 is third
    assert result.ranks.tolist() == [2]
    assert result.recall == {1: 0.0, 2: 0.0, 3: 1.0}
    assert result.topk_indices.tolist() == [[0, 2, 3]]


def test_a_target_outside_the_subset_raises_or_is_a_miss():
    queries, gallery, subsets, targets, exclude = _integer_case(0, num_queries=3)
    outside = next(j for j in range(len(gallery)) if j not in subsets[1])
    targets[1] = outside
    with pytest.raises(ValueError, match="targets: 1 of 3 queries"):
        recall_subset(queries, gallery, subsets=subsets, targets=targets, exclude=exclude)
    result = recall_subset(queries, gallery, subsets=subsets, targets=targets, exclude=exclude, missing="miss")
    assert result.ranks[1] == -1


def test_bad_subsets_name_the_argument():
    queries, gallery, subsets, targets, _ = _integer_case(0, num_queries=3)
    with pytest.raises(ValueError, match="subsets: expected gallery indices in"):
        recall_subset(queries, gallery, subsets=[[0, 99]] * 3, targets=targets)
    with pytest.raises(ValueError, match="subsets: expected one entry per query"):
        recall_subset(queries, gallery, subsets=subsets[:2], targets=targets)


@pytest.mark.parametrize("k", [1, 5, 29, 30, 50])
def test_top_k_over_the_gallery_matches_a_brute_force_sort(k):
    queries, gallery, _, _, exclude = _integer_case(3)
    lists = top_k(queries, gallery, k=k, exclude=exclude, similarity="dot", chunk_size=9)
    width = min(k, len(gallery))
    assert lists.shape == (len(queries), width)
    for i in range(len(queries)):
        ranking = _brute_ranking(queries[i], gallery, [j for j in range(len(gallery)) if j != exclude[i]])
        padded = [*ranking, -1][:width]  # the excluded item leaves one slot past the end
        assert lists[i].tolist() == padded


def test_top_k_of_subsets_is_the_recall_subset_list():
    queries, gallery, subsets, targets, exclude = _integer_case(4)
    lists = top_k(queries, gallery, k=3, exclude=exclude, subsets=subsets)
    result = recall_subset(queries, gallery, subsets=subsets, targets=targets, exclude=exclude)
    assert torch.equal(lists, result.topk_indices)
