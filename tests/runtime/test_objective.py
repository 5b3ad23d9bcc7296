from __future__ import annotations

import numpy as np
import pytest

from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.objective import INFEASIBLE, LatentSpace, ObjectiveWeights, cosine_to, edit_cost, objective

GROUPS = {"coarse": [0, 1, 2, 3], "middle": [4, 5, 6, 7], "fine": [8, 9]}


def test_w_space_broadcasts_one_vector_to_all_layers():
    std = np.arange(1, 5, dtype=np.float32)
    sp = LatentSpace("w", 10, 4, std, GROUPS)
    assert sp.dim == 4
    off = sp.offsets(np.array([[1, 2, 3, 4]], dtype=np.float64))
    assert off.shape == (1, 10, 4)
    assert np.allclose(off[0], np.tile([1, 4, 9, 16], (10, 1)))


def test_groups_space_keeps_groups_apart():
    sp = LatentSpace("groups", 10, 2, np.ones(2), GROUPS)
    assert sp.dim == 6
    off = sp.offsets(np.array([[1, 1, 2, 2, 3, 3]]))[0]
    assert np.all(off[:4] == 1) and np.all(off[4:8] == 2) and np.all(off[8:] == 3)


def test_wplus_space_is_every_layer():
    sp = LatentSpace("wplus", 10, 2, np.ones(2), GROUPS)
    X = np.random.default_rng(0).normal(size=(3, 20))
    assert sp.dim == 20 and np.allclose(sp.offsets(X), X.reshape(3, 10, 2))


def test_unknown_space():
    with pytest.raises(UsageError):
        LatentSpace("z", 10, 2, np.ones(2), GROUPS)


def test_cosine():
    ref = np.array([1.0, 0.0])
    emb = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert np.allclose(cosine_to(ref, emb), [1, 0, -1])


def test_objective_floor_target_and_latent_terms():
    w = ObjectiveWeights(identity_floor=0.6, identity_target=0.8, identity_weight=5.0, latent_weight=0.1)
    score = np.array([6.0, 6.0, 6.0, 9.0])
    cos = np.array([0.9, 0.7, 0.9, 0.5])
    X = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    J = objective(score, cos, X, w)
    assert J[0] == pytest.approx(6.0)
    assert J[1] == pytest.approx(6.0 - 5.0 * 0.1)
    assert J[2] == pytest.approx(6.0 - 0.1 * 4.0)
    assert J[3] < 9.0 - INFEASIBLE  # below the floor: never better than any feasible candidate
    assert np.argmax(J) == 0


def test_weights_validation():
    with pytest.raises(UsageError):
        ObjectiveWeights(identity_floor=2.0).validate()
    with pytest.raises(UsageError):
        ObjectiveWeights(identity_weight=-1).validate()


def test_unset_weights_take_bundle_defaults_then_builtin():
    w = ObjectiveWeights(identity_weight=2.0).resolved({"identity_floor": 0.9, "identity_target": 0.95})
    assert (w.identity_floor, w.identity_target, w.identity_weight, w.latent_weight) == (0.9, 0.95, 2.0, 0.1)
    w = ObjectiveWeights(identity_floor=0.5).resolved({"identity_floor": 0.9})
    assert w.identity_floor == 0.5
    assert ObjectiveWeights().resolved(None).identity_floor == 0.6


def _blob(n: int = 64, amplitude: float = 10.0) -> np.ndarray:
    """A smooth dark/light patch edit (1, 3, n, n) in [-1, 1] units of ``amplitude`` grey levels at its peak."""
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n
    b = np.exp(-(((xs - 0.45) / 0.12) ** 2 + ((ys - 0.55) / 0.12) ** 2)) * amplitude / 127.5
    return np.repeat(b[None, None].astype(np.float32), 3, axis=1)


def test_edit_cost_is_zero_for_no_edit_and_grows_linearly_with_the_edit():
    e = _blob()
    c = edit_cost(np.concatenate([0 * e, e, 2 * e]))
    assert c[0] == 0.0 and c[1] > 0.0
    assert c[2] == pytest.approx(2 * c[1], rel=1e-5)


def test_edit_cost_counts_only_the_face_mask_and_charges_patches_and_grain_more_than_features():
    e = _blob()
    n = e.shape[-1]
    mask = np.zeros((n, n), np.float32)
    mask[:, n // 2 + 16 :] = 1.0  # a region away from the patch
    assert edit_cost(e, mask)[0] < 0.01 * edit_cost(e)[0]

    def same_rms(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)[None, None].repeat(3, 1)
        return x * np.sqrt((e**2).mean() / (x**2).mean())

    ys, xs = np.indices((n, n))
    feature = same_rms(np.sin(2 * np.pi * xs / 10.0) * np.sin(2 * np.pi * ys / 10.0))  # feature-sized shading
    grain = same_rms(((xs + ys) % 2) * 2.0 - 1.0)  # pixel-level grain
    c_feature, c_patch, c_grain = edit_cost(np.concatenate([feature, e, grain]))
    assert c_patch > 1.25 * c_feature and c_grain > 1.25 * c_feature, (c_feature, c_patch, c_grain)


def test_naturalness_weight_prefers_the_gentler_edit_at_the_same_score():
    score, cos, X = np.array([7.0, 7.0]), np.array([0.9, 0.9]), np.zeros((2, 4))
    cost = np.array([0.5, 2.0])
    on = ObjectiveWeights(0.6, 0.8, 5.0, 0.1, naturalness_weight=0.3)
    off = ObjectiveWeights(0.6, 0.8, 5.0, 0.1, naturalness_weight=0.0)
    J = objective(score, cos, X, on, cost)
    assert J[0] - J[1] == pytest.approx(0.3 * 1.5)
    assert np.all(objective(score, cos, X, off, cost) == objective(score, cos, X, off))
    assert ObjectiveWeights().resolved({"naturalness_weight": 0.25}).naturalness_weight == 0.25
    with pytest.raises(UsageError):
        ObjectiveWeights(naturalness_weight=-1.0).validate()
