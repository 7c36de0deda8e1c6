"""Variants: what a row of the leaderboard or the ablation changes in a training config.

A variant is written the same way everywhere (`python -m enlcn_jax.leaderboard --variants`,
`python -m enlcn_jax.ablation`'s `ablation.variants`):

* a built-in name of `VARIANTS` (`enla_k_cl`, `nlsn`, `none`, ...): the literature's attention
  and the controls, each a set of config overrides;
* `KEY=SPEC`, with KEY one of `SPEC_SHORTHANDS` (`attention`, `feature_map`, `projection`,
  `block`, `loss`): the spec on the `enla_k` row (`loss=` on `enla_k_cl`); a bare SPEC is
  `attention=SPEC`. SPEC is a registered name or `MODULE:NAME`, with options:
  `feature_map=my_kernels:favor(rho=0.5)`;
* several settings at once, joined by `;` (outside parentheses): `attention=exact;
  model.amplification=1.0`. A setting may also be a dotted config key with a Python literal
  value (`train.contrastive.weight=0.01`, `model.num_random_features=32`).

`variant_config` turns a variant into a config (ml_collections' `update_from_flattened_dict`,
so an unknown key is an error naming it) and `check_variant` validates it as training does, so a
bad variant is one line before anything trains.
"""

from __future__ import annotations

import ast
import dataclasses

import ml_collections

from enlcn_jax.nn import models, registry
from enlcn_jax.train import config_check

# The config key each `KEY=SPEC` shorthand sets (the model's spec keys, `models.SPEC_KEYS`, and
# the contrastive loss), and the built-in variant it is set on.
SPEC_SHORTHANDS = {**{key: f'model.{key}' for key in models.SPEC_KEYS},
                   'loss': 'train.contrastive.loss'}
SPEC_BASE = {'loss': 'enla_k_cl'}   # every other key: 'enla_k'
# The config keys that hold swappable functions (their code is fingerprinted with the results).
FUNCTION_KEYS = tuple(SPEC_SHORTHANDS.values())

# One window the size of the mosaic tasks' cells (4 x 4 LR pixels): the local control.
CELL = 4
# The side of the local windows of `window` and `swin`.
WINDOW = 8
# NLSN's chunk on the tasks' images: 3 chunks of 32 are 96 keys per query round, 37 % of a 16^2
# image and 9 % of a 32^2 one (NLSN's 144 on its 48^2 training patches: 19 %; 144 on 16^2 would
# be every key).
NLSN_CHUNK = 32

NO_CONTRASTIVE = {'train.contrastive.weight': 0.0}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A built-in row: config overrides, a description, and whether it is a control (a row that
    cannot select keys by content, present to show what content selection adds)."""
    overrides: dict
    description: str
    control: bool = False


VARIANTS: dict[str, Variant] = {
    'none': Variant({'model.attention': 'none', **NO_CONTRASTIVE},
                    'EDSR baseline (no attention)', control=True),
    'identity': Variant({'model.attention': 'identity', **NO_CONTRASTIVE},
                        'control: attention block, each position its own value', control=True),
    'global_mean': Variant({'model.attention': 'global_mean', **NO_CONTRASTIVE},
                           'control: mean of the values over the image, ignores q, k',
                           control=True),
    'cell_window': Variant({'model.attention': f'window(window={CELL})', **NO_CONTRASTIVE},
                           f'control: softmax in {CELL}x{CELL} windows (one mosaic cell)',
                           control=True),
    'exact': Variant({'model.attention': 'exact', 'model.amplification': 1.0, **NO_CONTRASTIVE},
                     'exact non-local attention (NLA), k = 1'),
    'exact_k': Variant({'model.attention': 'exact', **NO_CONTRASTIVE},
                       'exact non-local attention (NLA), k = 6'),
    'enla': Variant({'model.attention': 'enla', 'model.amplification': 1.0, **NO_CONTRASTIVE},
                    'ENLA, k = 1'),
    'enla_k': Variant({'model.attention': 'enla', **NO_CONTRASTIVE}, 'ENLA, k = 6'),
    'enla_k_cl': Variant({'model.attention': 'enla'}, 'ENLA, k = 6, contrastive (ENLCA)'),
    'enla_k_haar': Variant({'model.attention': 'enla', 'model.projection': 'orthogonal_haar',
                            **NO_CONTRASTIVE}, 'ENLA, k = 6, Haar-orthogonal features'),
    'favor': Variant({'model.attention': 'enla', 'model.feature_map': 'favor_hyperbolic',
                      **NO_CONTRASTIVE}, 'FAVOR+ hyperbolic features, k = 6'),
    'linear_elu': Variant({'model.attention': 'enla', 'model.feature_map': 'elu_plus_one',
                           **NO_CONTRASTIVE}, 'linear attention, elu + 1 (Katharopoulos)'),
    'efficient': Variant({'model.attention': 'efficient', **NO_CONTRASTIVE},
                         'Efficient Attention (Shen)'),
    'cosformer': Variant({'model.attention': 'cosformer', **NO_CONTRASTIVE},
                         'cosFormer, 2-D cos re-weighting (Qin)'),
    'nystrom': Variant({'model.attention': 'nystrom', **NO_CONTRASTIVE},
                       'Nystromformer (Xiong)'),
    'nlsn': Variant({'model.attention': f'nlsn(chunk_size={NLSN_CHUNK})', **NO_CONTRASTIVE},
                    f'Non-Local Sparse Attention, LSH, chunks of {NLSN_CHUNK} (Mei)'),
    'window': Variant({'model.attention': f'window(window={WINDOW})', **NO_CONTRASTIVE},
                      f'softmax in {WINDOW}x{WINDOW} windows'),
    'swin': Variant({'model.attention': f'swin(window={WINDOW})', **NO_CONTRASTIVE},
                    f'Swin: {WINDOW}x{WINDOW} windows, shifted on alternate modules (Liu)'),
}
# The paper's Table 2, in its order (the ablation's rows).
TABLE2 = ('none', 'enla', 'enla_k', 'enla_k_cl', 'exact')


class VariantError(ValueError):
    """A variant that cannot be run; the one-line message names it."""


def split_settings(variant: str) -> list[str]:
    """`'attention=exact; model.amplification=1.0'` -> `['attention=exact',
    'model.amplification=1.0']`: split at `;` outside parentheses."""
    return registry.split_specs(variant, separator=';')


def parse_setting(setting: str) -> tuple[str | None, str]:
    """`(None, name)` for a name of `VARIANTS`, else `(KEY, VALUE)`: `KEY=VALUE`, or a bare SPEC
    read as `('attention', SPEC)`. Only an `=` before any `(` separates a KEY (an option string
    such as `my_kernels:favor(rho=0.5)` has its own)."""
    setting = setting.strip()
    if setting in VARIANTS:
        return None, setting
    if '=' in setting.split('(', 1)[0]:
        key, value = setting.split('=', 1)
        return key.strip(), value.strip()
    return 'attention', setting


def literal(text: str):
    """A dotted key's value: a Python literal where it reads as one, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def update_locked(config: ml_collections.ConfigDict, updates: dict) -> None:
    """`config.update_from_flattened_dict(updates)` that adds no key: a key `config` does not
    have raises KeyError naming it (and the fields that exist)."""
    config.lock()
    try:
        config.update_from_flattened_dict(updates)
    finally:
        config.unlock()


def variant_config(base: ml_collections.ConfigDict,
                   variant: str) -> tuple[ml_collections.ConfigDict, str]:
    """The config and description of one variant (see the module docstring).

    `base` is left as it was. A built-in name may stand first, followed by settings on it
    (`exact; model.num_random_features=32`); without one, the settings apply on `enla_k`
    (`enla_k_cl` when one is a `loss=`).

    Raises:
      VariantError: an unknown shorthand or config key, an empty variant, or a built-in name
        that is not first.
    """
    settings = [parse_setting(s) for s in split_settings(variant)]
    if not settings:
        raise VariantError(f'empty variant {variant!r}')
    named = [i for i, (key, _) in enumerate(settings) if key is None]
    if named and named != [0]:
        raise VariantError(f'variant {variant!r}: a built-in name ({settings[named[-1]][1]}) '
                           'may only stand first, once')
    if named:
        on = settings.pop(0)[1]
    else:
        on = SPEC_BASE['loss'] if any(key == 'loss' for key, _ in settings) else 'enla_k'
    config = ml_collections.ConfigDict(base.to_dict())
    updates = dict(VARIANTS[on].overrides)
    for key, value in settings:
        if key in SPEC_SHORTHANDS:
            updates[SPEC_SHORTHANDS[key]] = value
        elif '.' in key:
            updates[key] = literal(value)
        else:
            raise VariantError(f'unknown variant key {key!r} in {variant!r}; known keys: '
                               f'{list(SPEC_SHORTHANDS)} (KEY=SPEC), a dotted config key '
                               f'(model.amplification=1.0), or a variant of {list(VARIANTS)}')
    try:
        update_locked(config, updates)
    except (KeyError, AttributeError, TypeError) as e:
        raise VariantError(f'variant {variant!r}: {e}') from None
    if not settings:
        return config, VARIANTS[on].description
    return config, f'{on} with ' + ', '.join(f'{SPEC_SHORTHANDS.get(k, k)}={v}'
                                             for k, v in settings)


def check_variant(base: ml_collections.ConfigDict,
                  variant: str) -> tuple[ml_collections.ConfigDict, str]:
    """`variant_config`, validated as training validates a config (`config_check.validate_config`:
    every function resolved and checked), so a bad variant fails before anything trains.

    Raises:
      VariantError: a one-line message naming the variant; for a plain name that is neither a
        built-in variant nor an attention, also the known variants.
    """
    config, description = variant_config(base, variant)
    try:
        config_check.validate_config(config)
    except ValueError as e:
        message = (str(e).strip().splitlines() or [''])[0]
        if variant.strip().isidentifier():  # a bare name, read as an attention
            raise VariantError(f'unknown variant {variant!r}: not one of {list(VARIANTS)}, and '
                               f'as an attention: {message}') from None
        raise VariantError(f'variant {variant!r}: {message}') from None
    return config, description


def is_control(variant: str) -> bool:
    """Whether `variant` is a built-in control (`Variant.control`)."""
    return variant.strip() in VARIANTS and VARIANTS[variant.strip()].control
