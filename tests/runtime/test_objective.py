from __future__ import annotations

import numpy as np
import pytest

from beautyrt.runtime.errors import UsageError
from beautyrt.runtime.objective import INFEASIBLE, LatentSpace, ObjectiveWeights, cosine_to, objective

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
