"""pytest-benchmark timings of ``sample(256)``: fastsac next to the seed-style baseline.

Run with ``pytest benchmarks --benchmark-only`` (pyproject's addopts skip benchmarks
otherwise). Sizes are moderate so the suite takes a minute or two; ``fastsac bench buffer``
runs the full-size comparison (1M vector steps, 100k image steps) and prints ratios.
"""

from __future__ import annotations

import pytest

from fastsac.bench import buffer as bench

SIZES = bench.Sizes(vector_capacity=100_100, image_capacity=10_010, seed_image_capacity=2_000,
                    frame_pool=512, memcpy_bytes=0, vector_blocks=0, image_blocks=0)


@pytest.fixture(scope="module")
def vector() -> bench.VectorSetup:
    return bench.VectorSetup(SIZES)


@pytest.fixture(scope="module")
def image() -> bench.ImageSetup:
    return bench.ImageSetup(SIZES)


@pytest.mark.benchmark(group="vector sample(256), 100k x 17 float32")
def test_vector_sample_fastsac(benchmark, vector):
    batch = benchmark(vector.fast.sample, bench.BATCH)
    assert batch.obs.shape == (bench.BATCH, bench.VEC_OBS)


@pytest.mark.benchmark(group="vector sample(256), 100k x 17 float32")
def test_vector_sample_seed(benchmark, vector):
    s, a, r, s_prime, done = benchmark(vector.seed.sample, bench.BATCH)
    assert s.shape == (bench.BATCH, bench.VEC_OBS)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_fastsac(benchmark, image):
    batch = benchmark(image.fast.sample, bench.BATCH)
    assert batch.obs.shape == batch.next_obs.shape == (bench.BATCH, 9, 84, 84)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_seed(benchmark, image):
    s, a, r, s_prime, done = benchmark(image.seed.sample, bench.BATCH)
    assert s.shape == s_prime.shape == (bench.BATCH, 9, 84, 84)


@pytest.mark.benchmark(group="image sample(256), 3x84x84 frames, stack 3")
def test_image_sample_seed_uint8(benchmark, image):
    s, a, r, s_prime, done = benchmark(image.seed_u8.sample, bench.BATCH)
    assert s.shape == s_prime.shape == (bench.BATCH, 9, 84, 84)
