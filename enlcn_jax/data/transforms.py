"""The dihedral group of the square on images: training augmentation and self-ensemble."""

import numpy as np


def _flip(x, axis: int):
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    return x[tuple(index)]


def dihedral(x, k: int, axes: tuple[int, int] = (-3, -2)):
    """One of the 8 symmetries of the square applied to the two spatial axes.

    ``k`` (a Python int in ``0..7``) is read as bits: 4 transposes the axes
    (applied first), 1 flips the first axis, 2 flips the second. Works on
    NumPy and JAX arrays alike (only slicing and ``swapaxes``).

    Args:
      x: ``[H, W, C]`` or ``[B, H, W, C]`` with the default ``axes=(-3, -2)``;
        any layout with ``axes`` naming the two spatial axes.
      k: transform index.

    Returns:
      Array of the same kind; H and W are exchanged when ``k & 4``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k not in range(8):
        raise ValueError(f"dihedral index must be an int in 0..7, got {k!r}")
    row, col = axes
    if k & 4:
        x = x.swapaxes(row, col)
    if k & 1:
        x = _flip(x, row)
    if k & 2:
        x = _flip(x, col)
    return x


def inverse_dihedral(x, k: int, axes: tuple[int, int] = (-3, -2)):
    """Undo ``dihedral(·, k, axes)``.

    Flips are their own inverse; with a transpose, undoing "transpose, flip
    rows, flip cols" equals "transpose, flip the other axes", i.e. the index
    with bits 1 and 2 exchanged.
    """
    if k & 4:
        k = 4 | ((k & 1) << 1) | ((k & 2) >> 1)
    return dihedral(x, k, axes)
