"""tune_process: freed temporaries stay resident; numpy's BLAS runs on one thread, torch's not."""

import resource

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from fastsac._process import single_thread_numpy_blas, tune_malloc


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
    # untuned, each round faults ~24 * 128 pages in again (see fastsac/_process.py)
    assert _faults_per_round() < 10


def test_numpy_blas_goes_single_threaded_and_torch_keeps_its_threads():
    threads = torch.get_num_threads()
    if not single_thread_numpy_blas():
        pytest.skip("numpy has no BLAS threadpoolctl can see")
    numpy_blas = [i for i in threadpool_info()
                  if i["user_api"] == "blas" and "torch" not in i["filepath"]]
    assert numpy_blas and all(i["num_threads"] == 1 for i in numpy_blas)
    assert torch.get_num_threads() == threads
