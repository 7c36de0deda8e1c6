"""Super-resolution evaluation protocol (NumPy): PSNR / SSIM on the Y channel.

The standard protocol (EDSR, RCAN, NLSN, ENLCN, ...) quantises the network
output to uint8, converts SR and HR to the BT.601 luma channel exactly as
MATLAB's ``rgb2ycbcr`` does, shaves ``scale`` pixels off every border and
then computes PSNR and the Wang et al. SSIM (11x11 Gaussian window,
sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255).

``ssim`` is ``skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)``: the local statistics are filtered with a truncated 11-tap
Gaussian and the SSIM map is averaged after cropping ``(11 - 1) // 2 = 5``
pixels from every side, so only windows lying fully inside the image count
(the 'valid' area of the original MATLAB ``ssim_index``; the tests check it
against explicit 11x11 windows).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["quantize", "rgb_to_y", "shave", "psnr", "ssim", "psnr_y", "ssim_y"]

_SSIM_SIGMA = 1.5
_SSIM_WIN = 11
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def quantize(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8: clip, multiply by 255, round.

    Args:
      img: any shape, float, nominal range [0, 1].
    Returns:
      uint8 array, same shape.
    """
    return np.round(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] as MATLAB's ``rgb2ycbcr`` (first channel).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1].

    Args:
      img: ``[H, W, 3]`` RGB, uint8 (divided by 255) or float in [0, 1].
    Returns:
      ``[H, W]`` float64 Y, not rounded.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    rgb = img.astype(np.float64)
    if img.dtype == np.uint8:
        rgb /= 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Remove ``border`` pixels from each side of H and W.

    Args:
      img: ``[H, W]`` or ``[H, W, C]``.
      border: non-negative integer.
    Returns:
      ``[H - 2 border, W - 2 border(, C)]`` view of ``img``.
    """
    if border < 0:
        raise ValueError(f"border must be non-negative, got {border}")
    if border == 0:
        return img
    h, w = img.shape[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"border {border} leaves nothing of a {h}x{w} image")
    return img[border:-border, border:-border]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
      a, b: arrays of the same shape (any dtype; compared in float64).
      data_range: peak value.
    Returns:
      PSNR in dB; ``inf`` when ``a == b`` everywhere.
    """
    a, b = _check_pair(a, b)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of one channel (Wang et al. 2004, MATLAB ``ssim_index`` settings).

    Args:
      a, b: ``[H, W]`` single-channel images, H and W >= 11.
      data_range: dynamic range L of the pixel values.
    Returns:
      mean of the SSIM map over pixels whose 11x11 window fits in the image.
    """
    a, b = _check_pair(a, b)
    if a.ndim != 2:
        raise ValueError(f"ssim expects single-channel [H, W] images, got shape {a.shape}")
    if min(a.shape) < _SSIM_WIN:
        raise ValueError(f"ssim needs H, W >= {_SSIM_WIN}, got {a.shape}")

    return float(structural_similarity(a, b, gaussian_weights=True, sigma=_SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=data_range,
                                       K1=_SSIM_K1, K2=_SSIM_K2))


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave_border: int) -> float:
    """PSNR on the shaved Y channel of two RGB uint8 images.

    Args:
      sr, hr: ``[H, W, 3]`` uint8 RGB.
      shave_border: pixels removed from each side (usually the SR scale).
    Returns:
      PSNR in dB (data range 255).
    """
    return psnr(shave(rgb_to_y(sr), shave_border), shave(rgb_to_y(hr), shave_border))


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave_border: int) -> float:
    """SSIM on the shaved Y channel of two RGB uint8 images.

    Args:
      sr, hr: ``[H, W, 3]`` uint8 RGB.
      shave_border: pixels removed from each side (usually the SR scale).
    Returns:
      mean SSIM (data range 255).
    """
    return ssim(shave(rgb_to_y(sr), shave_border), shave(rgb_to_y(hr), shave_border))
