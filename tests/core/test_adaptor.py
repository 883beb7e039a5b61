"""The numpy query-side linear adaptor: it finds a known map, keeps the identity without signal,
and is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag.core import Adaptor, AdaptorConfig, QuerySet, fit_adaptor, ndcg_at_k
from nudge_rag.errors import ConfigError, DimensionMismatchError, ShapeError


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rotated_problem(seed: int = 0, n_docs: int = 120, dim: int = 16, noise: float = 0.3):
    """Queries live in a rotated copy of the document space: q_j = R (d_a + noise).

    At the identity most queries miss their answer; the map R^T puts them back.
    """
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(n_docs, dim)))
    rot, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    answers = np.concatenate([np.arange(n_docs), np.arange(n_docs)])
    q = _unit((docs[answers] + noise * rng.normal(size=(answers.size, dim)) / np.sqrt(dim)) @ rot.T)
    pairs = [(j, [int(a)]) for j, a in enumerate(answers)]
    # train on the first question of each document, validate on half of the second ones, test
    # on the other half
    train = pairs[:n_docs]
    val = pairs[n_docs : n_docs + n_docs // 2]
    test = pairs[n_docs + n_docs // 2 :]
    return docs, q, train, val, test


def _test_ndcg(ad: Adaptor, docs, q, pairs) -> float:
    qs = QuerySet(q[[j for j, _ in pairs]], [a for _, a in pairs])
    return float(ndcg_at_k(ad.transform(qs.embeddings), docs, qs).mean())


def test_recovers_a_known_rotation():
    docs, q, train, val, test = rotated_problem()
    ad = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=60)
    before = _test_ndcg(Adaptor.identity(docs.shape[1]), docs, q, test)
    after = _test_ndcg(ad, docs, q, test)
    assert before < 0.3
    assert after > before + 0.4
    assert ad.epochs > 0 and not ad.is_identity
    assert ad.val_after > ad.val_before
    assert ad.curve[0] == pytest.approx(ad.val_before)
    out = ad.transform(q[:5])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("negatives", ["corpus", "batch"])
def test_both_kinds_of_negatives_learn(negatives):
    docs, q, train, val, test = rotated_problem(seed=1)
    ad = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=60, negatives=negatives)
    assert _test_ndcg(ad, docs, q, test) > _test_ndcg(Adaptor.identity(16), docs, q, test) + 0.3


def test_identity_when_nothing_to_gain():
    # queries are their answers: the identity is already perfect on validation
    rng = np.random.default_rng(3)
    docs = _unit(rng.normal(size=(60, 12)))
    q = docs.copy()
    pairs = [(j, [j]) for j in range(60)]
    ad = fit_adaptor(q, docs, pairs[:40], pairs[40:], lr=1e-2, max_epochs=10)
    assert ad.is_identity and ad.epochs == 0
    np.testing.assert_array_equal(ad.transform(q), _unit(q))


def test_identity_kept_on_random_labels_with_a_margin():
    rng = np.random.default_rng(4)
    docs = _unit(rng.normal(size=(80, 12)))
    q = _unit(rng.normal(size=(160, 12)))
    pairs = [(j, [int(rng.integers(80))]) for j in range(160)]
    ad = fit_adaptor(q, docs, pairs[:120], pairs[120:], lr=1e-2, max_epochs=30, min_gain=0.05)
    assert ad.val_after >= ad.val_before
    assert ad.is_identity


def test_deterministic_with_a_seed():
    docs, q, train, val, _ = rotated_problem(seed=2)
    a = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=8, seed=7)
    b = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=8, seed=7)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.curve == b.curve
    c = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=8, seed=8)
    assert not np.array_equal(a.weight, c.weight)


def test_weight_decay_keeps_w_near_identity():
    docs, q, train, val, _ = rotated_problem(seed=5)
    free = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=20, patience=100)
    tied = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=20, patience=100, weight_decay=10.0)
    eye = np.eye(16)
    assert np.linalg.norm(tied.weight - eye) < np.linalg.norm(free.weight - eye)


def test_graded_answers_and_held_out_split():
    docs, q, train, _, test = rotated_problem(seed=6)
    graded = [(j, {a[0]: 2.0, (a[0] + 1) % len(docs): 1.0}) for j, a in train]
    ad = fit_adaptor(q, docs, graded, None, lr=1e-2, max_epochs=40)
    assert _test_ndcg(ad, docs, q, test) > _test_ndcg(Adaptor.identity(16), docs, q, test)


def test_mix_interpolates():
    docs, q, train, val, _ = rotated_problem(seed=0)
    ad = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=10)
    np.testing.assert_allclose(ad.mix(0.0).weight, np.eye(16), atol=1e-7)
    np.testing.assert_allclose(ad.mix(1.0).weight, ad.weight, atol=1e-7)
    half = ad.mix(0.5).weight
    np.testing.assert_allclose(half, (np.eye(16) + ad.weight) / 2, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    docs, q, train, val, _ = rotated_problem(seed=0)
    ad = fit_adaptor(q, docs, train, val, lr=1e-2, max_epochs=5)
    ad.save(tmp_path / "ad")
    back = Adaptor.load(tmp_path / "ad")
    np.testing.assert_array_equal(back.weight, ad.weight)
    assert back.to_dict() == ad.to_dict()
    assert not list((tmp_path / "ad").glob(".*.tmp"))


def test_single_vector_transform_and_errors():
    ad = Adaptor.identity(4)
    v = ad.transform(np.array([3.0, 0, 0, 4.0]))
    np.testing.assert_allclose(v, [0.6, 0, 0, 0.8], atol=1e-6)
    with pytest.raises(DimensionMismatchError):
        ad.transform(np.ones((2, 3)))
    docs = np.eye(4, dtype=np.float32)
    with pytest.raises(DimensionMismatchError):
        fit_adaptor(np.ones((2, 3), np.float32), docs, [(0, [0])], [(1, [1])])
    with pytest.raises(ShapeError):
        fit_adaptor(np.eye(4, dtype=np.float32), docs, [(9, [0])], [(1, [1])])
    with pytest.raises(ConfigError):
        AdaptorConfig(negatives="hard")
    with pytest.raises(ConfigError):
        AdaptorConfig(lr=0)


def test_ndcg_at_k_matches_hand_computation():
    docs = np.eye(3, dtype=np.float32)
    q = np.array([[0.9, 0.5, 0.1], [0.1, 0.2, 0.9]], np.float32)
    qs = QuerySet(q, [[1], {0: 2.0, 2: 1.0}])
    out = ndcg_at_k(q, docs, qs, k=2)
    assert out[0] == pytest.approx(1 / np.log2(3))
    # query 1 ranks 2 (grade 1) then 1 (grade 0); ideal: grade 2 then grade 1
    assert out[1] == pytest.approx(1.0 / (2 + 1 / np.log2(3)))


def test_no_validation_trains_exactly_max_epochs():
    docs, q, train, _, test = rotated_problem(seed=0)
    seen: list[int] = []
    ad = fit_adaptor(
        q, docs, train, [], lr=1e-2, max_epochs=7, on_epoch=lambda e, w: seen.append(e)
    )
    assert ad.epochs == 7 and seen == list(range(1, 8))
    assert _test_ndcg(ad, docs, q, test) > _test_ndcg(Adaptor.identity(16), docs, q, test)


def test_covered_negatives_leave_records_without_queries_alone():
    # Training queries point only to the first 60 records. With "covered" negatives the other
    # records take no part in training: replacing them changes nothing; with corpus-wide
    # negatives they are negatives of every query, and the map depends on them.
    docs, q, train, _, _ = rotated_problem(seed=3, n_docs=120)
    first_half = [(j, a) for j, a in train if a[0] < 60]
    other = docs.copy()
    other[60:] = _unit(np.random.default_rng(9).normal(size=(60, docs.shape[1])))
    kw = {"lr": 1e-2, "max_epochs": 5}
    a = fit_adaptor(q, docs, first_half, [], negatives="covered", **kw)
    b = fit_adaptor(q, other, first_half, [], negatives="covered", **kw)
    np.testing.assert_array_equal(a.weight, b.weight)
    c = fit_adaptor(q, docs, first_half, [], negatives="corpus", **kw)
    d = fit_adaptor(q, other, first_half, [], negatives="corpus", **kw)
    assert not np.array_equal(c.weight, d.weight)


def test_anchors_keep_the_map_closer_to_the_identity():
    docs, q, train, _, _ = rotated_problem(seed=4)
    kw = {"lr": 1e-2, "max_epochs": 15, "patience": 100}
    free = fit_adaptor(q, docs, train, [], **kw)
    anchored = fit_adaptor(q, docs, train, [], anchors=docs, anchor_weight=20.0, **kw)
    eye = np.eye(16)
    assert anchored.config["n_anchors"] == len(docs)
    assert np.linalg.norm(anchored.weight - eye) < np.linalg.norm(free.weight - eye)
    with pytest.raises(DimensionMismatchError):
        fit_adaptor(q, docs, train, [], anchors=np.ones((3, 5)), **kw)
