"""Import the authors' PyTorch ENLCN / EDSR weights into Flax variables.

The architecture is read off the state_dict's own names and shapes (number of residual blocks,
features, attention modules, reduction, random features, upsampler); the user gives only the
scale. Every tensor must be used exactly once and land on a variable of the right shape, else a
`ConversionError` names the offending keys.

CLI (needs the optional `torch` extra for `.pt` files; `.npz` files of a state_dict work without):

    python -m enlcn_jax.convert ENLCAx4.pt --scale 4 --out DIR

writes a checkpoint directory that `checkpoints.load_model` (and so `eval.py`) reads.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
import re
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from enlcn_jax.nn import models

from enlcn_jax.storage import checkpoints

StateDict = Mapping[str, np.ndarray]


class ConversionError(ValueError):
    """A state_dict does not describe a model this package can build."""


def _conv(state: StateDict, prefix: str, used: set[str]) -> dict:
    """PyTorch conv `prefix.weight [O, I, kh, kw]`, `prefix.bias [O]` -> Flax `kernel [kh, kw, I, O]`, `bias`."""
    names = (f'{prefix}.weight', f'{prefix}.bias')
    missing = [n for n in names if n not in state]
    if missing:
        raise ConversionError(f'state_dict is missing {missing}')
    used.update(names)
    weight = np.asarray(state[names[0]], np.float32)
    if weight.ndim != 4:
        raise ConversionError(f'{names[0]} should be a 4-D conv weight, has shape {weight.shape}')
    return {'kernel': weight.transpose(2, 3, 1, 0), 'bias': np.asarray(state[names[1]], np.float32)}


def _enlca(state: StateDict, prefix: str, used: set[str]) -> tuple[dict, dict]:
    """One ENLCA module's `(params, random_features)` from keys starting with `prefix`."""
    params = {name: _conv(state, f'{prefix}{name}.0', used)
              for name in ('conv_match1', 'conv_match2', 'conv_assembly')}
    key = f'{prefix}attn_fn.projection_matrix'
    if key not in state:
        raise ConversionError(f'state_dict is missing {key!r} (the random features)')
    used.add(key)
    return params, {'projection': np.asarray(state[key], np.float32)}


def _check_finite(state: StateDict) -> None:
    """Raises ConversionError naming the first tensor (in state_dict order) with a NaN or inf."""
    bad = checkpoints.first_non_finite(state)
    if bad is not None:
        name, count, size = bad
        raise ConversionError(f'state_dict tensor {name!r} has {count} non-finite value(s) '
                              f'(NaN or inf) of {size}: corrupt weights')


def convert_enlca_state_dict(state: StateDict) -> dict:
    """Variables of a lone `models.ENLCA` from the state_dict of a PyTorch ENLCA module."""
    _check_finite(state)
    used: set[str] = set()
    params, random_features = _enlca(state, '', used)
    unused = sorted(set(state) - used)
    if unused:
        raise ConversionError(f'ENLCA state_dict has keys an ENLCA does not use: {unused}')
    return {'params': params, models.RANDOM_FEATURES: random_features}


def _body_kinds(state: StateDict) -> dict[int, str]:
    kinds = {}
    for name in state:
        match = re.match(r'body\.(\d+)\.(conv_match1|body\.0|weight)', name)
        if match:
            kinds[int(match.group(1))] = {'conv_match1': 'enlca', 'body.0': 'resblock',
                                          'weight': 'conv'}[match.group(2)]
    return kinds


def _infer_model_config(state: StateDict, scale: int, rgb_range: float | None) -> dict:
    if 'head.0.weight' not in state:
        raise ConversionError("state_dict has no 'head.0.weight': not an EDSR/ENLCN state_dict")
    kinds = _body_kinds(state)
    if not kinds or sorted(kinds) != list(range(len(kinds))) or kinds[len(kinds) - 1] != 'conv':
        raise ConversionError(f'cannot read the body layout from the state_dict keys: {kinds}')
    layout = [kinds[i] for i in range(len(kinds) - 1)]
    n_feats = int(state['head.0.weight'].shape[0])
    config = dict(scale=scale, n_resblocks=layout.count('resblock'), n_feats=n_feats,
                  attention='enla' if 'enlca' in layout else 'none')
    if 'enlca' in layout:
        first = layout.index('enlca')
        second = layout.index('enlca', first + 1) if layout.count('enlca') > 1 else len(layout)
        config['attention_every'] = max(second - first - 1, 1)
        embed = state[f'body.{first}.conv_match1.0.weight'].shape[0]
        config['reduction'] = n_feats // embed
        projection = f'body.{first}.attn_fn.projection_matrix'
        if projection not in state:
            raise ConversionError(f'state_dict is missing {projection!r} (the random features)')
        config['num_random_features'] = int(state[projection].shape[0])
    if 'add_mean.bias' in state and 'sub_mean.weight' in state:
        std = 1.0 / np.diag(np.asarray(state['sub_mean.weight']).reshape(3, 3))
        shifted_mean = np.asarray(state['add_mean.bias']) * std
        if rgb_range is None:
            rgb_range = 255.0 if shifted_mean.max() > 1.5 else 1.0
        config.update(rgb_range=float(rgb_range),
                      rgb_mean=tuple(round(float(v), 6) for v in shifted_mean / rgb_range),
                      rgb_std=tuple(round(float(v), 6) for v in std))
    elif rgb_range is not None:
        config['rgb_range'] = float(rgb_range)
    try:
        model = models.from_config(config)
    except ValueError as e:  # e.g. a body without residual blocks: n_resblocks = 0
        raise ConversionError(f'the state_dict describes no model ENLCN builds: {e}') from None
    if model.body_layout() != layout:
        raise ConversionError(f'body layout {layout} is not one ENLCN builds '
                              f'(an ENLCA first, then one every {config.get("attention_every")} blocks)')
    return config


def convert_state_dict(state: StateDict, scale: int,
                       rgb_range: float | None = None) -> tuple[dict, dict]:
    """Maps a PyTorch ENLCN/EDSR state_dict onto Flax variables.

    Args:
      state: PyTorch name -> array (conv weights OIHW).
      scale: the SR scale the weights were trained for (2, 3 or 4).
      rgb_range: PyTorch EDSR's `rgb_range`; inferred from the mean-shift bias (1 or 255) if None.
    Returns:
      `(model_config, variables)`: a flat model config (`models.from_config`) and
      `{'params': ..., 'random_features': ...}` as numpy arrays.
    Raises:
      ConversionError naming missing, unused or mis-shaped keys, or the first tensor holding a
      NaN or inf.
    """
    state = {k.removeprefix('module.'): np.asarray(v) for k, v in state.items()}
    _check_finite(state)
    config = _infer_model_config(state, scale, rgb_range)
    model = models.from_config(config)
    used = {'sub_mean.weight', 'sub_mean.bias', 'add_mean.weight', 'add_mean.bias'} & set(state)
    params = {'head': _conv(state, 'head.0', used)}
    random_features = {}
    layout = model.body_layout()
    for i, kind in enumerate(layout):
        if kind == 'enlca':
            params[f'body_{i}'], random_features[f'body_{i}'] = _enlca(state, f'body.{i}.', used)
        else:
            params[f'body_{i}'] = {'conv1': _conv(state, f'body.{i}.body.0', used),
                                   'conv2': _conv(state, f'body.{i}.body.2', used)}
    params['body_conv'] = _conv(state, f'body.{len(layout)}', used)
    n_upsample = 1 if scale == 3 else scale.bit_length() - 1
    params['tail_upsample'] = {f'conv_{j}': _conv(state, f'tail.0.{2 * j}', used)
                               for j in range(n_upsample)}
    params['tail_conv'] = _conv(state, 'tail.1', used)
    unused = sorted(set(state) - used)
    if unused:
        raise ConversionError(f'state_dict has keys this model does not use: {unused[:10]}'
                              f'{" ..." if len(unused) > 10 else ""} (wrong --scale?)')
    variables = {'params': params}
    if random_features:
        variables[models.RANDOM_FEATURES] = random_features
    _check_shapes(model, variables)
    return config, variables


def _check_shapes(model: models.ENLCN, variables: dict) -> None:
    """Raises ConversionError unless `variables` has exactly the model's variable shapes."""
    expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    want = {jax.tree_util.keystr(p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {jax.tree_util.keystr(p): v.shape
           for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    problems = [f'{k}: missing' for k in want if k not in got]
    problems += [f'{k}: not in the model' for k in got if k not in want]
    problems += [f'{k}: shape {got[k]}, model wants {want[k]}'
                 for k in want if k in got and got[k] != want[k]]
    if problems:
        raise ConversionError('converted variables do not fit the model: ' + '; '.join(problems))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a state_dict from `.pt`/`.pth` (needs torch) or `.npz` (name -> array)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'no such weights file: {path}')
    if path.suffix == '.npz':
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ConversionError(f'{path} is not a readable .npz of a state_dict ({e})') from e
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(f'reading {path} needs PyTorch: pip install torch '
                          '(or save the state_dict as .npz)') from e
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds here
        raise ConversionError(f'{path} is not a readable PyTorch file ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else ""})') from e
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    if not isinstance(state, dict) or not all(hasattr(v, 'detach') for v in state.values()):
        raise ConversionError(f'{path} does not hold a state_dict (name -> tensor)')
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.convert', description=__doc__.split('\n')[0])
    parser.add_argument('weights', help='PyTorch .pt/.pth state_dict, or .npz of one')
    parser.add_argument('--scale', type=int, required=True, help='SR scale the weights were trained for')
    parser.add_argument('--out', required=True, help='output checkpoint directory')
    parser.add_argument('--rgb_range', type=float, default=None,
                        help='PyTorch rgb_range (default: inferred from the mean shift, 1 or 255)')
    args = parser.parse_args(argv)
    try:
        models.upsampling_factors(args.scale)
    except ValueError as e:
        parser.error(f'--scale: {e}')
    if (Path(args.out) / checkpoints.VARIABLES).exists():
        parser.error(f'--out {args.out} already holds a model; choose another directory')
    try:
        state = load_state_dict(args.weights)
        try:
            config, variables = convert_state_dict(state, args.scale, args.rgb_range)
        except ConversionError as e:  # load_state_dict's errors already name the file
            raise ConversionError(f'{args.weights}: {e}') from e
        checkpoints.save_model(args.out, config, variables)
    except (ConversionError, FileNotFoundError, FileExistsError, ImportError) as e:
        sys.exit(f'convert: {e}')
    print(f'wrote {args.out}: {config}')


if __name__ == '__main__':
    main()
