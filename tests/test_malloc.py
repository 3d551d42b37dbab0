"""tune_malloc: freed temporaries are reused instead of faulting their pages in again."""

import resource

import numpy as np
import pytest

from fastsac import tune_malloc


def _faults_per_round(rounds: int = 30) -> float:
    def one_round():  # an update's worth of 512 KiB temporaries, allocated then freed
        xs = [np.ones(1 << 17, np.float32) for _ in range(24)]
        del xs
    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def test_tune_malloc_keeps_temporaries_resident():
    if not tune_malloc():
        pytest.skip("not glibc: tune_malloc is a documented no-op")
    # untuned, each round faults ~24 * 128 pages in again (see fastsac/_malloc.py)
    assert _faults_per_round() < 10
