"""The similarity module: CKA's defining properties, the debiased estimator's zero mean, undefined cases."""

import numpy as np
import pytest

from compare.similarity import NONFINITE, ZERO_GRAM, debiased_cka, hsic_unbiased, linear_cka


def gram(x):
    xc = x - x.mean(axis=0)
    return xc @ xc.T


@pytest.mark.parametrize("cka", [linear_cka, debiased_cka])
def test_cka_of_a_layer_with_itself_is_one(cka):
    x = np.random.default_rng(0).normal(size=(64, 300))
    assert cka(gram(x), gram(x)).value == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cka", [linear_cka, debiased_cka])
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(cka):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 40))
    y = x @ rng.normal(size=(40, 30)) + 0.5 * rng.normal(size=(128, 30))  # related, not identical
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))  # a random orthogonal matrix
    base = cka(gram(x), gram(y)).value
    assert 0.2 < base < 0.99
    assert cka(gram(x), gram(7.5 * y @ q)).value == pytest.approx(base, abs=1e-10)
    assert cka(gram(x * 1e-6), gram(y)).value == pytest.approx(base, abs=1e-10)
    assert cka(gram(x + 3.0), gram(y)).value == pytest.approx(base, abs=1e-10)  # feature means do not matter


def test_debiased_cka_of_independent_data_averages_zero():
    rng = np.random.default_rng(2)
    values, plain = [], []
    for _ in range(200):
        k, l = gram(rng.normal(size=(128, 500))), gram(rng.normal(size=(128, 700)))
        values.append(debiased_cka(k, l).value)
        plain.append(linear_cka(k, l).value)
    assert abs(np.mean(values)) < 0.01
    assert np.mean(plain) > 0.7  # the plain estimator's bias at n = 128, d >> n, shown for contrast


def test_zero_gram_is_nan_with_a_flag():
    x = np.random.default_rng(3).normal(size=(32, 10))
    dead = np.zeros((32, 32))
    for cka in (linear_cka, debiased_cka):
        s = cka(gram(x), dead)
        assert np.isnan(s.value) and s.flag == ZERO_GRAM and not s.defined
    constant_features = np.ones((32, 5)) * 0.7  # constant across images: centred Gram exactly 0
    assert debiased_cka(gram(constant_features), gram(x)).flag == ZERO_GRAM


def test_a_non_finite_gram_is_nan_flagged_as_non_finite_not_as_dead():
    x = np.random.default_rng(3).normal(size=(32, 10))
    for bad in (np.nan, np.inf):
        k = gram(x)
        k[3, :] = k[:, 3] = bad  # what one image's non-finite feature does to a Gram
        for cka in (linear_cka, debiased_cka):
            s = cka(gram(x), k)
            assert np.isnan(s.value) and s.flag == NONFINITE


def test_unbiased_hsic_needs_four_images():
    with pytest.raises(ValueError, match="at least 4"):
        hsic_unbiased(np.eye(3), np.eye(3))
