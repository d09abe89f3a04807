"""PSNR and SSIM against known values and scikit-image; the sequence, revisit and motion
measures against known pictures (a shift, a zoom) and scikit-image's phase correlation."""

import numpy as np
import pytest

from mineworld.metrics import (
    frame_scores,
    image_shift,
    moved,
    pooled_psnr,
    psnr,
    revisit_scores,
    sequence_scores,
    ssim,
    zoom,
)

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


@pytest.mark.parametrize("shape", [(48, 64), (7, 7), (7, 9, 3)])
def test_ssim_agrees_with_scikit_image_on_grey_and_the_smallest_images(shape):
    rng = np.random.default_rng(len(shape))
    truth = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
    colour = {"channel_axis": -1} if len(shape) == 3 else {}
    expected = metrics.structural_similarity(truth, noisy, data_range=255, **colour)
    assert ssim(noisy, truth) == pytest.approx(expected, abs=1e-9)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))


def textured(seed: int = 0, shape=(48, 64)) -> np.ndarray:
    """A smooth random picture (blurred noise) that phase correlation and optical flow can
    follow: pure per-pixel noise has no structure between neighbours."""
    import cv2

    noise = np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2) * 3 - 256, 0, 255).astype(np.uint8)


def test_pooled_psnr_is_the_psnr_of_all_frames_together():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 10, truth.shape), 0, 255).astype(np.uint8)
    noisy[1] = truth[1]  # an identical frame adds no error: its PSNR is inf
    per_frame = [psnr(n, t) for n, t in zip(noisy, truth, strict=True)]
    assert per_frame[1] == float("inf")
    assert pooled_psnr(per_frame) == pytest.approx(psnr(noisy, truth), abs=1e-9)
    assert pooled_psnr([24.0484, 24.0484]) == pytest.approx(24.0484)
    assert pooled_psnr([float("inf")] * 2) == float("inf")
    assert np.isnan(pooled_psnr([]))


def test_sequence_scores():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 8, truth.shape), 0, 255).astype(np.uint8)
    scores = sequence_scores(noisy, truth)
    assert scores["frames"] == 4
    assert scores["psnr"] == [psnr(n, t) for n, t in zip(noisy, truth, strict=True)]
    assert scores["ssim"] == [ssim(n, t) for n, t in zip(noisy, truth, strict=True)]
    assert scores["pooled_psnr"] == pytest.approx(psnr(noisy, truth), abs=1e-9)
    assert scores["mean_ssim"] == pytest.approx(np.mean(scores["ssim"]))
    tiny = sequence_scores(noisy[:, :4, :6], truth[:, :4, :6])  # below SSIM's window
    assert set(tiny) == {"frames", "psnr", "pooled_psnr"}
    one_exact = sequence_scores(np.concatenate([truth[:1], noisy[1:]]), truth)
    assert one_exact["psnr"][0] == float("inf") and np.isfinite(one_exact["pooled_psnr"])
    with pytest.raises(ValueError, match="same length"):
        sequence_scores(noisy[:3], truth)


def test_revisit_scores():
    view = textured(0)
    elsewhere = textured(1)
    perfect = revisit_scores(before=view, returned=view, true_returned=view)
    assert perfect == {"psnr_self": float("inf"), "ssim_self": pytest.approx(1.0),
                       "psnr_truth": float("inf"), "ssim_truth": pytest.approx(1.0)}
    forgot = revisit_scores(before=view, returned=elsewhere, true_returned=view)
    assert forgot["psnr_self"] == forgot["psnr_truth"] == psnr(elsewhere, view)
    assert forgot["ssim_self"] < 0.5


@pytest.mark.parametrize("dx, dy", [(3, 0), (-5, 0), (0, 2), (4, -3)])
def test_image_shift_finds_a_known_translation(dx, dy):
    """The picture moved right by dx and down by dy; scikit-image's phase correlation (which
    reports the shift that registers the moved picture back, so the opposite sign) agrees."""
    registration = pytest.importorskip("skimage.registration")
    before = textured(2, (64, 96))
    after = np.roll(before, (dy, dx), axis=(0, 1))
    inner = (slice(8, -8), slice(8, -8))  # the rolled-in border is not part of the move
    found = image_shift(before[inner], after[inner])
    assert np.round(found).tolist() == [dx, dy]  # sub-pixel peaks are rough; whole pixels exact
    reference, _, _ = registration.phase_cross_correlation(
        before[inner].mean(-1), after[inner].mean(-1), upsample_factor=10)
    assert np.round(-reference[::-1]).tolist() == [dx, dy]
    assert found == pytest.approx(-reference[::-1], abs=0.6)
    assert image_shift(before, before) == pytest.approx((0, 0), abs=1e-6)


def test_zoom_sign_follows_expansion():
    import cv2

    before = textured(3)
    height, width = before.shape[:2]
    closer = cv2.resize(before, None, fx=1.1, fy=1.1, interpolation=cv2.INTER_LINEAR)
    top, left = (closer.shape[0] - height) // 2, (closer.shape[1] - width) // 2
    closer = closer[top : top + height, left : left + width]  # the middle, 10 % larger
    assert zoom(before, closer) > 0.5  # walking forward: the picture expands
    assert zoom(closer, before) < -0.5  # walking back
    assert abs(zoom(before, before)) < 1e-3
    sideways = np.roll(before, 3, axis=1)
    assert abs(zoom(before, sideways)) < 0.5 * zoom(before, closer)  # a turn is not a zoom


def test_moved():
    assert moved(-2.0, direction=-13.6, threshold=0.5)  # content left, camera turned right
    assert not moved(2.0, direction=-13.6, threshold=0.5)
    assert not moved(-0.2, direction=-1, threshold=0.5)  # too small to count
    assert moved(0.3, direction=1, threshold=0.25) and not moved(0.0, direction=0, threshold=0.1)


def test_ssim_of_grey_images_agrees_with_scikit_image():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    expected = metrics.structural_similarity(truth, noisy, data_range=255)
    assert ssim(noisy, truth) == pytest.approx(expected, abs=1e-9)
