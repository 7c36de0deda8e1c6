"""The research tools' command line: what the attention does, and how good its random-feature
approximation is.

    python -m enlcn_jax.visualize maps --image IMG --pixel X,Y [--checkpoint DIR] [--module 0]
    python -m enlcn_jax.visualize variance [--image IMG] [--checkpoint DIR] [--draws 64]
        [--feature_map softmax_kernel,relu] [--projection iid,orthogonal]

`maps`: per-query attention maps of one attention module (`research.attention_maps`);
`variance`: the random-feature approximation study (`research.kernel_study`). Both read the
`(q, k, v)` the module sows (the block contract, `models.check_block`), so they work on any
`model.block`, and write PNG + JSON. `python -m enlcn_jax.visualize maps --help` describes each.
Without `--checkpoint` a freshly initialised quickstart-sized ENLCN is used; a checkpoint that
names functions outside enlcn_jax (`MODULE:NAME`) loads only with `--trust_code`
(`checkpoints.load_model`).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import numpy as np

from enlcn_jax.data import image_io
from enlcn_jax.nn import features, models, registry
from enlcn_jax.research import attention_maps, kernel_study
from enlcn_jax.research.embeddings import attention_modules, module_embeddings
from enlcn_jax.storage import checkpoints, files


def _load_model(args: argparse.Namespace) -> tuple[models.ENLCN, dict]:
    """The model of `--checkpoint` (`checkpoints.load_model` with `--trust_code` and
    `--allow_changed_code`), or an untrained one."""
    if args.checkpoint:
        model, variables, _ = checkpoints.load_model(
            args.checkpoint, trust_code=args.trust_code,
            allow_changed_code=args.allow_changed_code)
        return model, variables
    model = models.ENLCN(scale=2, n_resblocks=8, n_feats=32, attention_every=4)
    init = jax.jit(functools.partial(models.init_variables, model),
                   compiler_options=kernel_study.RUN_ONCE_COMPILE)
    return model, init(jax.random.key(0))


def _load_image(path: str | None, max_side: int) -> np.ndarray:
    if path:
        image = image_io.load_image(path)
    else:
        from skimage import data as skdata  # pylint: disable=import-outside-toplevel
        image = skdata.astronaut()
    step = max(1, -(-max(image.shape[:2]) // max_side))
    return np.ascontiguousarray(image[::step, ::step])


def _pixel(text: str) -> tuple[int, int]:
    """`--pixel X,Y` as `(x, y)`."""
    try:
        x, y = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected X,Y (two integers), got {text!r}') from None
    return x, y


def _check_positions(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     model: models.ENLCN, image: np.ndarray) -> None:
    """`parser.error` (one line naming the option and its valid range) for a `--module` the model
    does not have or a `--pixel` outside the (subsampled) image."""
    count = len(attention_modules(model))
    if count == 0:
        parser.error(f"--checkpoint {args.checkpoint}: the model has no attention module "
                     "(attention='none')")
    if not 0 <= args.module < count:
        parser.error(f'--module {args.module}: the model has {count} attention modules; '
                     f'choose 0 to {count - 1}')
    if args.command == 'maps':
        (x, y), (h, w) = args.pixel, image.shape[:2]
        if not (0 <= x < w and 0 <= y < h):
            parser.error(f'--pixel {x},{y}: outside the {w}x{h} image (after --max_side '
                         f'{args.max_side}); choose X 0 to {w - 1} and Y 0 to {h - 1}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.visualize', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, tool in (('maps', attention_maps), ('variance', kernel_study)):
        p = sub.add_parser(name, description=tool.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument('--checkpoint', help='training workdir or model directory (default: untrained)')
        p.add_argument('--trust_code', action='store_true', help=checkpoints.TRUST_CODE_HELP)
        p.add_argument('--allow_changed_code', action='store_true',
                       help=checkpoints.ALLOW_CHANGED_CODE_HELP)
        p.add_argument('--image', help='input image (default: skimage astronaut)')
        p.add_argument('--module', type=int, default=0, help='which ENLCA module (0 = first)')
        p.add_argument('--max_side', type=int, default=128,
                       help='subsample the image so its longer side is at most this')
        p.add_argument('--out', default=f'results/{name}', help='output path without extension')
    sub.choices['maps'].add_argument('--pixel', required=True, type=_pixel,
                                     help='query position X,Y in the (subsampled) image')
    sub.choices['variance'].add_argument('--draws', type=int, default=64,
                                         help='projections per (sampler, m), at least 2')
    sub.choices['variance'].add_argument('--ks', default='1,2,3,4,5,6,7,8,9,10')
    sub.choices['variance'].add_argument('--ms', default='2,4,8,16,32,64,128,256')
    sub.choices['variance'].add_argument(
        '--feature_map', default='softmax_kernel',
        help='comma-separated feature maps to compare: names or MODULE:NAME, with options')
    sub.choices['variance'].add_argument(
        '--projection', default='iid,orthogonal',
        help='comma-separated projection samplers to compare: names or MODULE:NAME, with options')
    args = parser.parse_args(argv)

    if args.command == 'variance':
        if args.draws < 2:
            parser.error(f'--draws must be >= 2, got {args.draws}')
        feature_maps = registry.split_specs(args.feature_map)
        projections = registry.split_specs(args.projection)
        for flag, specs, resolve in (('--feature_map', feature_maps, kernel_study.study_feature_map),
                                     ('--projection', projections, features.get_projection)):
            try:
                for spec in specs:
                    resolve(spec)
            except ValueError as e:
                parser.error(f'{flag}: {e}')
    try:
        model, variables = _load_model(args)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f'--checkpoint {args.checkpoint}: {e}')
    image = _load_image(args.image, args.max_side)
    _check_positions(parser, args, model, image)
    out = Path(args.out)
    if args.command == 'maps':
        pixel = args.pixel
        maps = attention_maps.query_attention_maps(model, variables, image, pixel, args.module)
        png = attention_maps.plot_maps(image, maps, pixel, out.with_suffix('.png'),
                                       f'module {args.module}, query {pixel}')
        summary = {kind: {'max': float(m.max()), 'entropy': float(-(m * np.log(m + 1e-30)).sum())}
                   for kind, m in maps.items()}
    else:
        q, k, value, _ = module_embeddings(model, variables, image, args.module)
        summary = kernel_study.approximation_study(
            q, k, value, [float(v) for v in args.ks.split(',')],
            [int(v) for v in args.ms.split(',')], args.draws, feature_maps=feature_maps,
            projections=projections)
        print('\n'.join(kernel_study.describe_estimates(summary)))
        png = kernel_study.plot_study(summary, out.with_suffix('.png'))
    files.write_text(out.with_suffix('.json'), json.dumps(summary, indent=2))
    print(f'wrote {png} and {out.with_suffix(".json")}')


if __name__ == '__main__':
    main()
