"""pycma runs with single-threaded BLAS for the calling thread only, and 512-d searches use diagonal covariance."""

import numpy as np

from beautyrt.runtime.strategies import cma as search
from beautyrt.runtime.strategies.cma import CMAStrategy, single_threaded_blas


def test_single_threaded_blas_restores_the_thread_setting():
    fn = search._openblas_set_threads_local()
    if fn is None:
        with single_threaded_blas():  # no OpenBLAS: a no-op
            np.linalg.eigh(np.eye(4))
        return
    before = fn(3)
    try:
        with single_threaded_blas():
            assert fn(1) == 1  # inside: one thread
        assert fn(3) == 3  # restored to what it was
    finally:
        fn(before)


def test_w_space_of_a_512_wide_generator_is_diagonal_and_small_spaces_are_full():
    assert CMAStrategy(512, seed=0).diagonal
    assert not CMAStrategy(32, seed=0).diagonal
