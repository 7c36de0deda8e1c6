"""MATLAB-compatible bicubic ``imresize`` in NumPy.

Super-resolution benchmarks (Set5, Set14, B100, Urban100, ...) generate their
low-resolution inputs and bicubic baselines with MATLAB's
``imresize(img, scale, 'bicubic')``.  This module reproduces that function:

* Keys' cubic convolution kernel with ``a = -0.5``;
* antialiasing when downscaling: the kernel is stretched by ``1 / scale`` (and
  scaled by ``scale``), so it covers ``4 / scale`` input pixels;
* symmetric boundary handling by index mirroring (``[1..n, n..1]`` repeated);
* separable resizing, one spatial axis at a time, the axis with the smaller
  scale first (MATLAB sorts the dimensions by scale);
* ``uint8`` input is clipped to ``[0, 255]`` and rounded half away from zero
  after *each* axis, exactly like MATLAB's ``imresizemex``; float input is
  processed in float64 without clipping;
* output size ``ceil(H * scale), ceil(W * scale)``.

The ``[out, P]`` tap weights and mirrored input indices are built once per
axis and applied with vectorised gathers, one per tap.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["imresize", "modcrop", "bicubic_downscale"]

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``).

    Args:
      x: any shape, float.
    Returns:
      kernel values, same shape as ``x``.
    """
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel taps of MATLAB's ``contributions`` (bicubic, antialiased).

    Args:
      in_len: input length along the axis.
      out_len: output length along the axis.
      scale: ``out / in`` scale factor used to place the samples.
    Returns:
      ``(weights, indices)``, both ``[out_len, P]`` with ``P = ceil(kw) + 2``;
      ``weights`` rows sum to 1, ``indices`` are 0-based, already mirrored
      into ``[0, in_len)``.
    """
    kernel_width = _KERNEL_WIDTH
    if scale < 1:
        kernel_width /= scale

    x = np.arange(1, out_len + 1, dtype=np.float64)
    # Output pixel x (1-based) maps to input coordinate u (1-based).
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - indices
    if scale < 1:
        weights = scale * _cubic(scale * dist)
    else:
        weights = _cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)

    # Symmetric padding: 1-based index i maps through aux = [1..n, n..1].
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    idx = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    return weights, idx


def _resize_axis(x: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    """Resample float64 ``x`` along ``axis`` to ``out_len`` samples.

    Accumulates one gathered slab per kernel tap (``P`` of them, 6 when
    upscaling, ``ceil(4 / scale) + 2`` when downscaling), which keeps memory at
    one output-sized buffer and costs ``O(out_len * P * rest)``.

    Args:
      x: ``[..., in_len, ...]`` float64, ``in_len = x.shape[axis]``.
    Returns:
      same shape as ``x`` with ``out_len`` along ``axis``, float64.
    """
    weights, idx = _contributions(x.shape[axis], out_len, scale)
    moved = np.moveaxis(x, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    acc = np.zeros((out_len, flat.shape[1]), dtype=np.float64)
    # One reused scratch buffer: fresh large temporaries per tap cost more in
    # page faults than the arithmetic itself.
    buf = np.empty_like(acc)
    for tap in range(weights.shape[1]):
        np.take(flat, idx[:, tap], axis=0, out=buf)
        buf *= weights[:, tap, None]
        acc += buf
    return np.moveaxis(acc.reshape((out_len,) + moved.shape[1:]), 0, axis)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's cast to uint8: clip to ``[0, 255]``, round half away from zero.

    Returns float64 holding integer values, same shape as ``x``.
    """
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5)


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resize like MATLAB's ``imresize(image, scale, 'bicubic')``.

    Args:
      image: ``[H, W]`` or ``[H, W, C]``, uint8 or floating point.
      scale: positive resize factor applied to both H and W. Exactly one of
        ``scale`` and ``output_shape`` must be given.
      output_shape: ``(H_out, W_out)`` positive target size; the per-axis scale
        is then ``H_out / H`` and ``W_out / W``.
    Returns:
      ``[H_out, W_out]`` or ``[H_out, W_out, C]`` with ``H_out = ceil(H * scale)``
      and ``W_out = ceil(W * scale)`` when ``scale`` is given. uint8 in, uint8 out
      (clipped and rounded after each axis, as MATLAB); float in, float64 out
      (no clipping).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image dtype must be uint8 or floating point, got {image.dtype}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    in_h, in_w = image.shape[:2]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")

    if scale is not None:
        scale = float(scale)
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        scales = (scale, scale)
        # Guard ceil() against float noise such as 0.25 * 256 = 64.00000000001.
        out_shape = tuple(int(math.ceil(round(n * scale, 9))) for n in (in_h, in_w))
    else:
        if len(output_shape) != 2 or any(int(n) != n or n <= 0 for n in output_shape):
            raise ValueError(
                f"output_shape must be two positive integers, got {output_shape}"
            )
        out_shape = (int(output_shape[0]), int(output_shape[1]))
        scales = (out_shape[0] / in_h, out_shape[1] / in_w)

    is_uint8 = image.dtype == np.uint8
    out = image.astype(np.float64)
    # MATLAB resizes the axis with the smaller scale first (stable on ties).
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        out = _resize_axis(out, axis, out_shape[axis], scales[axis])
        if is_uint8:
            out = _round_uint8(out)
    return out.astype(np.uint8) if is_uint8 else out


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W down to multiples of ``scale``, keeping the top-left corner.

    Args:
      image: ``[H, W]`` or ``[H, W, C]``.
      scale: positive integer.
    Returns:
      ``[H - H % scale, W - W % scale(, C)]``, a view of ``image``.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard SR degradation: modcrop, then MATLAB bicubic resize by ``1 / scale``.

    Args:
      hr: ``[H, W, C]`` or ``[H, W]`` uint8 high-resolution image.
      scale: positive integer downscaling factor.
    Returns:
      ``(hr_cropped, lr)``: ``hr_cropped`` is ``[H', W'(, C)]`` with
      ``H' = H - H % scale`` (same for W), ``lr`` is ``[H' / scale, W' / scale(, C)]``
      uint8.
    """
    hr = np.asarray(hr)
    if hr.dtype != np.uint8:
        raise ValueError(f"hr must be uint8, got {hr.dtype}")
    hr_cropped = modcrop(hr, scale)
    return hr_cropped, imresize(hr_cropped, scale=1.0 / scale)
