"""Picture-quality measures shared by the app, inference.py, training and benchmarks.

PSNR and SSIM of uint8 RGB frames, per frame and per sequence; the revisit score (is a view
seen before reproduced on coming back?); and motion estimates between consecutive frames
(horizontal shift by phase correlation, zoom by optical flow) to check that the picture moves
the way the action says; and whether a rollout keeps the scene (its contrast and colours against
the truth's) or collapses into flat colour or haze.

SSIM follows Wang et al. (2004) with the settings of scikit-image's defaults (7 x 7 uniform
window, K1 0.01, K2 0.03, sample covariance, the mean over the window positions that fit in the
image, averaged over colour channels), so numbers compare with it.
"""

from __future__ import annotations

import cv2
import numpy as np

PEAK = 255.0
SSIM_WINDOW = 7


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"frames must have the same shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (``inf`` when identical)."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(PEAK**2 / mse)


def _window_means(image: np.ndarray) -> np.ndarray:
    """Means of every 7 x 7 window that fits in ``image`` ``[H, W, C]`` (float64):
    ``[H - 6, W - 6, C]``. OpenCV's box filter, a tenth of the time of numpy's summed-area
    table, and it leaves the interpreter lock to the model while the app scores frames."""
    half = SSIM_WINDOW // 2
    means = cv2.boxFilter(image, cv2.CV_64F, (SSIM_WINDOW, SSIM_WINDOW),
                          borderType=cv2.BORDER_CONSTANT)[half:-half, half:-half]
    return means.reshape(means.shape[:2] + image.shape[2:])  # one channel comes back as [H, W]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 images ``[H, W]`` or ``[H, W, C]``, in [-1, 1]."""
    a, b = _pair(a, b)
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    samples = SSIM_WINDOW**2
    unbias = samples / (samples - 1)
    mean_x, mean_y = _window_means(a), _window_means(b)
    var_x = unbias * (_window_means(a * a) - mean_x**2)
    var_y = unbias * (_window_means(b * b) - mean_y**2)
    cov = unbias * (_window_means(a * b) - mean_x * mean_y)
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean((numerator / denominator).mean((0, 1))))  # per channel, then over them


def pooled_psnr(values) -> float:
    """One PSNR for many frames: that of the mean squared error behind their per-frame PSNRs.

    Unlike the mean of the PSNRs it stays finite when some frames are identical (they add no
    error); it is ``inf`` only when all are (NaN for no frames). Equals ``psnr`` of the frames
    stacked together."""
    errors = [PEAK**2 / 10 ** (value / 10) for value in values]  # inf dB: no error
    if not errors:
        return float("nan")
    mse = float(np.mean(errors))
    return float("inf") if mse == 0 else 10.0 * np.log10(PEAK**2 / mse)


def frame_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of one frame against another."""
    return {"psnr": psnr(prediction, truth), "ssim": ssim(prediction, truth)}


def sequence_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Per-frame PSNR and SSIM of two frame sequences ``[T, H, W, 3]``, the pooled PSNR (see
    :func:`pooled_psnr`: finite unless every frame is identical) and the mean SSIM.

    An identical frame's own PSNR is infinite. SSIM is left out for frames smaller than its
    7 x 7 window."""
    if len(predicted) != len(truth):
        raise ValueError(f"sequences must have the same length, got {len(predicted)} and "
                         f"{len(truth)}")
    measures = {"psnr": psnr}
    if min(np.shape(truth)[1:3], default=0) >= SSIM_WINDOW:
        measures["ssim"] = ssim
    per_frame = {key: [f(p, t) for p, t in zip(predicted, truth, strict=True)]
                 for key, f in measures.items()}
    summary = {"pooled_psnr": pooled_psnr(per_frame["psnr"])}
    if "ssim" in per_frame:
        summary["mean_ssim"] = float(np.mean(per_frame["ssim"]))
    return {"frames": len(predicted), **summary, **per_frame}


def revisit_scores(before: np.ndarray, returned: np.ndarray, true_returned: np.ndarray) -> dict:
    """How well a view seen before is reproduced after turning (or walking) away and back.

    ``before``: the generated frame just before leaving; ``returned``: the generated frame on
    coming back to the same place and direction; ``true_returned``: what the world shows then.
    ``self``: returned vs before (does the model remember what it showed?); ``truth``: returned
    vs the true view."""
    return {
        **{f"{key}_self": value for key, value in frame_scores(returned, before).items()},
        **{f"{key}_truth": value for key, value in frame_scores(returned, true_returned).items()},
    }


# -- motion: does the picture move the way the action says? ------------------------------------


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def image_shift(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """``(dx, dy)``: how many pixels the picture moved from ``before`` to ``after``, by phase
    correlation (Hann window). Positive dx: the content moved right (the camera turned left)."""
    _pair(before, after)
    a, b = (_gray(image).astype(np.float32) for image in (before, after))
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    return float(dx), float(dy)


def zoom(before: np.ndarray, after: np.ndarray) -> float:
    """Mean outward optical flow (Farneback), in pixels, from the centre of the picture: > 0
    when it expands (the camera moves forward), < 0 when it shrinks (moves back)."""
    _pair(before, after)
    flow = cv2.calcOpticalFlowFarneback(_gray(before), _gray(after), None, pyr_scale=0.5,
                                        levels=2, winsize=9, iterations=3, poly_n=5,
                                        poly_sigma=1.1, flags=0)
    height, width = flow.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x - (width - 1) / 2, y - (height - 1) / 2
    radius = np.hypot(x, y) + 1e-6
    return float(np.mean((flow[..., 0] * x + flow[..., 1] * y) / radius))


def moved(value: float, direction: float, threshold: float) -> bool:
    """Whether a motion estimate shows a move of at least ``threshold`` in ``direction``'s sign."""
    return bool(np.sign(direction) * value >= threshold)


def _per_frame_ratio(measure, generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``measure`` of each generated frame over that of its true frame (kept above 0)."""
    def of(frames):
        return np.array([measure(frame) for frame in frames], dtype=np.float64)

    return of(generated) / np.maximum(of(truth), 1e-6)


def contrast_ratio(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per frame, the generated picture's spatial standard deviation (grey levels) over the true
    one's: near 1 while a rollout keeps the scene's structure, towards 0 as it collapses into
    flat colour. Frames ``[T, H, W, 3]``."""
    return _per_frame_ratio(lambda frame: _gray(frame).std(), generated, truth)


def colourfulness(image: np.ndarray) -> float:
    """How colourful a uint8 RGB picture is (Hasler and Suesstrunk, 2003): the spread and the
    mean of its red-green and yellow-blue opponent channels. 0 for any grey picture, white
    included; a blue sky over green and brown land scores high."""
    r, g, b = (image[..., c].astype(np.float64) for c in range(3))
    red_green, yellow_blue = r - g, (r + g) / 2 - b
    spread = np.hypot(red_green.std(), yellow_blue.std())
    return float(spread + 0.3 * np.hypot(red_green.mean(), yellow_blue.mean()))


def colour_ratio(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per frame, the generated picture's colourfulness over the true one's: near 1 while a
    rollout keeps the scene's colours, towards 0 as it fades into a grey or white haze (which
    ``contrast_ratio`` misses when a dark strip of ground stays under the haze)."""
    return _per_frame_ratio(colourfulness, generated, truth)


def scene_ratio(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per frame, the lower of ``contrast_ratio`` and ``colour_ratio``: a frame keeps the scene
    when it keeps both its structure and its colours."""
    return np.minimum(contrast_ratio(generated, truth), colour_ratio(generated, truth))
