import numpy as np
import pytest

from bort_infer.pooling import l2_normalize, pool


def test_cls_takes_first_token():
    h = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(pool(h, np.ones((2, 3)), "cls"), h[:, 0])


def test_mean_is_mask_aware_and_safe_on_empty_rows():
    h = np.ones((2, 3, 2), dtype=np.float32)
    h[0, 2] = 100.0  # padding, must not count
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    out = pool(h, mask, "mean")
    np.testing.assert_allclose(out[0], [1.0, 1.0])
    np.testing.assert_array_equal(out[1], [0.0, 0.0])


def test_unknown_pooling():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(np.zeros((1, 1, 1)), np.ones((1, 1)), "max")


def test_l2_normalize_leaves_zero_rows_finite():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
