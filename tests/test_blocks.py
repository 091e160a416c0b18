"""segmentation.blocks: block reductions equal the 6-D reshape reductions they replace."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.blocks import block_any, block_mean

FACTORS = [(1, 1, 1), (1, 2, 2), (2, 2, 2), (3, 2, 4), (1, 3, 1)]


def _reshaped(a, f):
    z, y, x = a.shape
    return a.reshape(z // f[0], f[0], y // f[1], f[1], x // f[2], f[2])


@pytest.mark.parametrize("f", FACTORS)
def test_block_mean_of_integer_hu_is_the_reshape_mean(f):
    rng = np.random.default_rng(1)
    a = rng.integers(-1024, 3000, (6 * f[0], 8 * f[1], 4 * f[2])).astype(np.int16)
    got = block_mean(a, f)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _reshaped(a, f).mean(axis=(1, 3, 5), dtype=np.float32))


@pytest.mark.parametrize("f", FACTORS)
def test_block_mean_of_real_values_is_the_mean_within_rounding(f):
    a = np.random.default_rng(2).normal(-500, 300, (3 * f[0], 5 * f[1], 7 * f[2])).astype(np.float32)
    np.testing.assert_allclose(block_mean(a, f), _reshaped(a, f).mean(axis=(1, 3, 5)), rtol=1e-5, atol=1e-3)
    assert block_mean(a, (1, 1, 1)) is not a          # a new array, as a reduction gives


@pytest.mark.parametrize("f", FACTORS)
def test_block_any_is_the_reshape_any(f):
    a = np.random.default_rng(3).random((4 * f[0], 6 * f[1], 5 * f[2])) > 0.9
    np.testing.assert_array_equal(block_any(a, f), _reshaped(a, f).any(axis=(1, 3, 5)))


def test_a_shape_not_a_multiple_of_the_block_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        block_mean(np.zeros((5, 4, 4)), (2, 2, 2))


@pytest.mark.parametrize("f", FACTORS)
def test_block_max_pad_and_unblock(f):
    from segmentation.blocks import block_max, pad_to_blocks, unblock

    a = np.random.default_rng(4).integers(0, 6, (4 * f[0] + 1, 3 * f[1], 2 * f[2] + 1)).astype(np.uint8)
    padded = pad_to_blocks(a, f)
    assert all(n % k == 0 for n, k in zip(padded.shape, f))
    np.testing.assert_array_equal(padded[: a.shape[0], : a.shape[1], : a.shape[2]], a)
    np.testing.assert_array_equal(padded[-1], padded[-1 - (padded.shape[0] - a.shape[0])])  # edge
    assert pad_to_blocks(padded, f) is padded
    np.testing.assert_array_equal(block_max(padded, f), _reshaped(padded, f).max(axis=(1, 3, 5)))
    up = unblock(block_max(padded, f), f, a.shape)
    assert up.shape == a.shape and (up >= a).all()
    z, y, x = (np.arange(n) // k for n, k in zip(a.shape, f))
    np.testing.assert_array_equal(up, block_max(padded, f)[np.ix_(z, y, x)])
