"""Picture-quality measures shared by the app, inference.py, training and benchmarks.

PSNR and SSIM of uint8 RGB frames. SSIM follows Wang et al. (2004) with the
settings of scikit-image's defaults (7 x 7 uniform window, K1 0.01, K2 0.03,
sample covariance, the mean over the window positions that fit in the image,
averaged over colour channels), so numbers compare with it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 images ``[H, W]`` or ``[H, W, C]``, in [-1, 1]."""
    a, b = _pair(a, b)
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    samples = SSIM_WINDOW**2
    scores = []
    for channel in range(a.shape[-1]):
        x = sliding_window_view(a[..., channel], (SSIM_WINDOW, SSIM_WINDOW))
        y = sliding_window_view(b[..., channel], (SSIM_WINDOW, SSIM_WINDOW))
        mean_x, mean_y = x.mean((-1, -2)), y.mean((-1, -2))
        unbias = samples / (samples - 1)
        var_x = unbias * ((x * x).mean((-1, -2)) - mean_x**2)
        var_y = unbias * ((y * y).mean((-1, -2)) - mean_y**2)
        cov = unbias * ((x * y).mean((-1, -2)) - mean_x * mean_y)
        numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
        denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
        scores.append(float(np.mean(numerator / denominator)))
    return float(np.mean(scores))


def frame_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of one frame against another."""
    return {"psnr": psnr(prediction, truth), "ssim": ssim(prediction, truth)}
