"""PSNR and SSIM against known values and scikit-image."""

import numpy as np
import pytest

from mineworld.metrics import frame_scores, psnr, ssim

metrics = pytest.importorskip("skimage.metrics")


def test_identical_images():
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert psnr(image, image) == float("inf")
    assert ssim(image, image) == pytest.approx(1.0)


def test_known_noise_level():
    """A uniform error of 16 levels has MSE 256: PSNR = 10 log10(255^2 / 256) = 24.0484 dB."""
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    assert psnr(image, image + 16) == pytest.approx(24.0484, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_scikit_image(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 5 + 10 * seed, truth.shape), 0, 255).astype(np.uint8)
    expected_psnr = metrics.peak_signal_noise_ratio(truth, noisy, data_range=255)
    expected_ssim = metrics.structural_similarity(truth, noisy, channel_axis=-1, data_range=255)
    assert psnr(noisy, truth) == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(noisy, truth) == pytest.approx(expected_ssim, abs=1e-9)
    scores = frame_scores(noisy, truth)
    assert scores["psnr"] == pytest.approx(expected_psnr) and scores["ssim"] < 1


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
