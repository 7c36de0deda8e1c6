"""Super-resolves one image file with a trained model.

    python -m enlcn_jax.upscale in.png out.png --checkpoint DIR [--which best] [--self_ensemble]
        [--tile 256 --tile_overlap 16] [--bucket 1] [--trust_code]

Any size and any image PIL reads: grayscale and palette images are converted to RGB and an
alpha channel is dropped, with a warning (`image_io.load_image`). The output is RGB, `scale`
times larger, written in the format of its suffix (checked before the model is loaded) and
atomically: a failed write (a full disk) leaves what was at the output path before.
Inference as `inference.ModelUpscaler` (bucket padding, tiling, self-ensemble).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from enlcn_jax.data import image_io

from enlcn_jax.evaluation import inference

from enlcn_jax.nn import precision

from enlcn_jax.storage import checkpoints, files


def upscale_file(src: str | Path, dst: str | Path, upscaler: inference.ModelUpscaler) -> np.ndarray:
    """Reads `src`, writes its SR image to `dst` and returns it (uint8 `[H s, W s, 3]`)."""
    sr = upscaler(image_io.load_image(src))
    image_io.save_image(dst, sr)
    return sr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.upscale',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('input', help='image to super-resolve')
    parser.add_argument('output', help='where to write the SR image (format from the suffix)')
    parser.add_argument('--checkpoint', required=True, help='model directory or training workdir')
    parser.add_argument('--which', choices=('latest', 'best'), default='latest',
                        help='checkpoint of a training workdir')
    parser.add_argument('--self_ensemble', action='store_true',
                        help='average the 8 dihedral transforms')
    parser.add_argument('--tile', type=int, default=None, help='LR tile side (default: whole image)')
    parser.add_argument('--tile_overlap', type=int, default=inference.AUTO_TILE_OVERLAP,
                        help='LR overlap between tiles')
    parser.add_argument('--bucket', type=int, default=inference.DEFAULT_BUCKET,
                        help='pad LR sides to a multiple of this (the padding is masked: same '
                             'numbers; 1: no padding)')
    parser.add_argument('--dtype', choices=precision.NAMES, default=None,
                        help='compute precision (default: the one the model was trained in)')
    parser.add_argument('--trust_code', action='store_true', help=checkpoints.TRUST_CODE_HELP)
    parser.add_argument('--allow_changed_code', action='store_true',
                        help=checkpoints.ALLOW_CHANGED_CODE_HELP)
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    args = parser.parse_args(argv)
    if Path(args.output).exists() and Path(args.input).exists() and \
            Path(args.output).resolve() == Path(args.input).resolve():
        parser.error(f'the output {args.output} is the input: choose another output path')
    if Path(args.output).is_dir():
        parser.error(f'the output {args.output} is a directory: give an image file name')
    if image_io.save_format(args.output) is None:
        parser.error(f'the output {args.output} does not end in a suffix of an image format PIL '
                     'writes (.png, .bmp, .tif, ...)')
    if Path(args.output).exists() and not args.overwrite:
        parser.error(f'the output {args.output} exists: pass --overwrite to replace it')
    try:
        inference.ModelUpscaler.check_options(args.bucket, args.tile, args.tile_overlap)
    except ValueError as e:
        parser.error(f'--{e}')
    try:
        upscaler = inference.load_upscaler(args.checkpoint, args.which, dtype=args.dtype,
                                          bucket=args.bucket,
                                          tile=args.tile, tile_overlap=args.tile_overlap,
                                          self_ensemble=args.self_ensemble,
                                          trust_code=args.trust_code,
                                          allow_changed_code=args.allow_changed_code)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f'--checkpoint {args.checkpoint}: {e}')
    start = time.perf_counter()
    try:
        sr = upscale_file(args.input, args.output, upscaler)
    except (FileNotFoundError, image_io.ImageError, files.WriteError) as e:
        sys.exit(f'upscale: {e}')
    print(f'wrote {args.output}: {sr.shape[1]}x{sr.shape[0]} (x{upscaler.scale}) '
          f'in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
