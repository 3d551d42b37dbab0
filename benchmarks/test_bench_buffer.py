"""pytest-benchmark timings of ``sample(256)``: fastsac next to the seed-style baseline.

Run with ``pytest benchmarks --benchmark-only`` (pyproject's addopts skip benchmarks
otherwise). Sizes are moderate so the suite takes a minute or two; ``fastsac bench buffer``
runs the full-size comparison (1M vector steps, 100k image steps) and prints ratios.
"""

from __future__ import annotations

import pytest

from fastsac.bench import _buffer_setup as setup

SIZES = setup.Sizes(vector_capacity=100_100, image_capacity=10_010, seed_image_capacity=2_000,
                    frame_pool=512, memcpy_bytes=0, vector_blocks=0, image_blocks=0)


@pytest.fixture(scope="module")
def vector() -> setup.VectorSetup:
    return setup.VectorSetup(SIZES)


@pytest.fixture(scope="module")
def image() -> setup.ImageSetup:
    return setup.ImageSetup(SIZES)


@pytest.mark.benchmark(group="vector sample(256), 100k x 17 float32")
def test_vector_sample_fastsac(benchmark, vector):
    batch = benchmark(vector.fast.sample, setup.BATCH)
    assert batch.obs.shape == (setup.BATCH, setup.VEC_OBS)


@pytest.mark.benchmark(group="vector sample(256), 100k x 17 float32")
def test_vector_sample_seed(benchmark, vector):
    s, a, r, s_prime, done = benchmark(vector.seed.sample, setup.BATCH)
    assert s.shape == (setup.BATCH, setup.VEC_OBS)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_fastsac(benchmark, image):
    batch = benchmark(image.fast.sample, setup.BATCH)
    assert batch.obs.shape == batch.next_obs.shape == (setup.BATCH, 9, 84, 84)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_seed(benchmark, image):
    s, a, r, s_prime, done = benchmark(image.seed.sample, setup.BATCH)
    assert s.shape == s_prime.shape == (setup.BATCH, 9, 84, 84)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_seed_uint8(benchmark, image):
    s, a, r, s_prime, done = benchmark(image.seed_u8.sample, setup.BATCH)
    assert s.shape == s_prime.shape == (setup.BATCH, 9, 84, 84)
