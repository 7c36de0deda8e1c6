"""EDSR and ENLCN super-resolution networks (Flax linen, NHWC).

Variables of an initialised ENLCN:
  * `params`: every convolution, named after the PyTorch modules (`head`, `body_<i>`,
    `tail_upsample`, `tail_conv`) so `convert.py` maps the authors' state_dict one to one.
  * `random_features`: one `projection [m, d]` per ENLCA module. Not trained: drawn from the
    `random_features` rng at init and redrawn with `model.redraw(variables, key)`.

The network takes images in [0, 1] and returns images in [0, 1] (unclipped); `rgb_range`
reproduces PyTorch EDSR's internal scale, so weights trained with `rgb_range=255` import as is.

The hyper-parameters of the attention modules are described once, by `ENLCAConfig`; a model
config (the flat `config.model` of the training configs, `model_config.json` of a checkpoint) is
turned into a network by `from_config`, which gives each key to the class that owns it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from enlcn_jax.nn import attention as attention_lib
from enlcn_jax.nn import features, precision, registry

Array = jax.Array
Embeddings = tuple[Array, Array]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
RANDOM_FEATURES = 'random_features'


def pixel_shuffle(x: Array, r: int) -> Array:
    """PyTorch `PixelShuffle(r)` in NHWC: `[B, H, W, C r r] -> [B, H r, W r, C]`.

    Output channel c at sub-pixel (i, j) comes from input channel `c r r + i r + j`.
    """
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


def l2_normalize(x: Array, eps: float) -> Array:
    """`x / max(||x||, eps)` over the last axis (PyTorch `F.normalize`)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def conv3x3(features_out: int, name: str, dtype: Any) -> nn.Conv:
    return nn.Conv(features_out, (3, 3), padding='SAME', name=name, dtype=dtype)


class ResBlock(nn.Module):
    """EDSR residual block `x + res_scale * conv(relu(conv(x)))`. `[B, H, W, C] -> same`."""
    res_scale: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        y = _masked(conv3x3(c, 'conv1', self.dtype)(x), mask)
        y = _masked(conv3x3(c, 'conv2', self.dtype)(nn.relu(y)), mask)
        return x + self.res_scale * y


def _masked(x: Array, mask: Array | None) -> Array:
    """`x * mask` (`mask [B, H, W, 1]`, 1 on real pixels), or `x` without a mask."""
    return x if mask is None else x * mask.astype(x.dtype)


def upsampling_factors(scale: int) -> list[int]:
    """The pixel-shuffle factors of the upsampler for an SR scale: [3], or [2] * log2(scale) for a
    power of 2.

    Raises:
      ValueError: any other scale.
    """
    if isinstance(scale, int) and scale == 3:
        return [3]
    if isinstance(scale, int) and scale >= 2 and scale & (scale - 1) == 0:
        return [2] * (scale.bit_length() - 1)
    raise ValueError(f'scale must be 3 or a power of 2 (2, 4, 8, ...), got {scale}')


class Upsampler(nn.Module):
    """EDSR upsampler: log2(s) x (conv C->4C, shuffle 2) for s = 2^n; conv C->9C, shuffle 3 for s = 3.

    `[B, H, W, C] -> [B, H s, W s, C]`.
    """
    scale: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        for i, r in enumerate(upsampling_factors(self.scale)):
            x = pixel_shuffle(_masked(conv3x3(c * r * r, f'conv_{i}', self.dtype)(x), mask), r)
            if mask is not None:
                mask = jnp.repeat(jnp.repeat(mask, r, axis=1), r, axis=2)
        return x


class PointwiseConvParams(nn.Module):
    """The parameters of a 1x1 `nn.Conv` (same names, shapes and initialisers), returned as a
    matrix so several can be applied as one matmul: `in_features -> (kernel [in, features],
    bias [features])`."""
    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array]:
        kernel = self.param('kernel', nn.linear.default_kernel_init,
                            (1, 1, in_features, self.features))
        bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
        return kernel[0, 0], bias


@dataclasses.dataclass(frozen=True)
class ENLCAConfig:
    """Hyper-parameters of every ENLCA module of a network: add a new one here, and only here.

    Attributes:
      attention: `'enla'` (linear, random features), `'exact'` (softmax NLA, O(N^2)), or
        `MODULE:NAME` (see `attention`, `registry`).
      reduction: the embedding width d is C / reduction.
      num_random_features: m, rows of the random projection.
      amplification: k; Q and K are scaled to norm sqrt(k) each.
      feature_map: `'softmax_kernel'`, `'softmax_kernel_stable'`, `'relu'` or `MODULE:NAME`.
      projection: `'orthogonal'`, `'iid'` or `MODULE:NAME`: the random-feature sampler.
      norm_eps: Q and K norms are clamped at this before dividing (PyTorch `F.normalize`).
      kernel_eps: the feature map's `eps` option (None: the map's own default, the released
        1e-4 for the softmax kernel; the paper's 0.0).

    The three functions are specs (`registry`): a name or `MODULE:NAME`, with options
    (`'softmax_kernel(eps=0.0)'`), or in code the function itself. `from_config` resolves them
    (checking each function as the model runs it, at the model's m and d: `check_functions`),
    so a bad choice fails before anything is compiled.
    """
    attention: registry.Spec = 'enla'
    reduction: int = 4
    num_random_features: int = 128
    amplification: float = 6.0
    feature_map: registry.Spec = 'softmax_kernel'
    projection: registry.Spec = 'orthogonal'
    norm_eps: float = 5e-5
    kernel_eps: float | None = None

    def __post_init__(self):
        for key in ('reduction', 'num_random_features'):
            if getattr(self, key) < 1:
                raise ValueError(f'model.{key} must be >= 1, got {getattr(self, key)}')
        if self.amplification <= 0:
            raise ValueError(f'model.amplification must be > 0, got {self.amplification}')

    def attention_fn(self, **sizes: int) -> attention_lib.AttentionFn:
        """The attention function, checked (`registry.Registry.get`) at `sizes` (`m`, `d`)."""
        return attention_lib.get_attention(self.attention, **sizes)

    def feature_map_fn(self, **sizes: int) -> features.FeatureMap:
        """The feature map with `kernel_eps` bound, checked at `sizes` (`m`, `d`)."""
        return features.get_feature_map(self.feature_map, self.kernel_eps, **sizes)

    def projection_fn(self, **sizes: int) -> features.ProjectionSampler:
        """The projection sampler, checked at `sizes` (`m`, `d`)."""
        return features.get_projection(self.projection, **sizes)

    def check_functions(self, d: int) -> None:
        """Resolves the three functions and checks each as the model runs it, at the model's
        sizes: m = `num_random_features` random features of width d (the embedding width,
        `n_feats // reduction`), so that a function that misbehaves only at some sizes (a map
        negative for m > 8) fails here, not in training. Later calls without sizes reuse these.

        Raises:
          ValueError: one line naming the config key, the value and the sizes at fault.
        """
        for resolve in (self.attention_fn, self.feature_map_fn, self.projection_fn):
            resolve(m=self.num_random_features, d=d)

    def attend(self, q: Array, k: Array, v: Array, projection: Array, *,
               spatial_shape: tuple[int, int], mask: Array | None = None,
               layer: int = 0) -> Array:
        """The configured attention with the configured feature map, as the ENLCA module runs it.

        Args:
          q, k: `[B, N, d]` normalised, amplified queries and keys; v: `[B, N, c]`.
          projection: `[m, d]` random features.
          spatial_shape: `(H, W)`, N = H W positions in row-major order; passed to an attention
            function that takes `spatial_shape`.
          mask: optional `[B, N, 1]`, 1 on real positions; passed to a function that takes
            `mask` (a model whose attention takes none is not given padded images:
            `ENLCN.masks_padding`).
          layer: the ordinal of the attention module among the network's (0 first); passed to a
            function that takes `layer` (`swin` shifts its windows on odd modules).
        Returns:
          `[B, N, c]`.
        Raises:
          ValueError: a mask for an attention function that takes none.
        """
        fn = self.attention_fn()
        keywords = {}
        if registry.accepts(fn, 'spatial_shape'):
            keywords['spatial_shape'] = tuple(spatial_shape)
        if registry.accepts(fn, 'layer'):
            keywords['layer'] = layer
        if mask is not None:
            if not registry.accepts(fn, 'mask'):
                raise ValueError(f'model.attention={registry.describe(self.attention)!r} '
                                 'takes no mask: evaluate this model without padding '
                                 '(bucket 1)')
            keywords['mask'] = mask
        return fn(q, k, v, projection, self.feature_map_fn(), **keywords)


class ENLCA(nn.Module):
    """Efficient non-local contrastive attention block. `[B, H, W, C] -> ([B, H, W, C], (q, k))`.

    `embed` makes Q, K, V with 1x1 convs; Q and K (C / reduction channels) are L2-normalised over
    channels (norm clamped at `norm_eps`) and multiplied by sqrt(amplification) each; the
    configured attention (`ENLCAConfig.attend`) runs on them and its output is added back as
    `out * res_scale + x`. Also returns q and k, `[B, H W, C / reduction]` each, which is what the
    contrastive loss needs, and sows `(q, k, v)` as `('intermediates', 'embeddings')` for the
    research tools (the block contract: `check_block`). Hyper-parameters: `config` (see
    `ENLCAConfig`). `layer` is the module's ordinal among the network's attention modules, which
    ENLCN sets for a block with a `layer` field and `ENLCAConfig.attend` passes on.

    A block that changes one thing subclasses ENLCA and overrides `embed` (it may create
    parameters there, as `examples/temperature_block.py` does).
    """
    config: ENLCAConfig = ENLCAConfig()
    res_scale: float = 0.1
    dtype: Any = jnp.float32
    layer: int = 0

    def embed(self, x: Array) -> tuple[Array, Array, Array]:
        """The attention's inputs at N positions: `x [B, N, C] -> (q, k [B, N, d], v [B, N, C])`,
        float32, d = C / reduction.

        The three 1x1 convolutions (`conv_match1`, `conv_match2`, `conv_assembly`) run as one
        matmul in `dtype`, O(N C (2 d + C)); q and k are L2-normalised (norm clamped at
        `norm_eps`) and scaled by sqrt(amplification). Called from `__call__`, so an override
        may create parameters and submodules as a compact method does.
        """
        c = x.shape[-1]
        cfg = self.config
        d = c // cfg.reduction
        convs = [PointwiseConvParams(width, name=name)(c) for name, width in
                 (('conv_match1', d), ('conv_match2', d), ('conv_assembly', c))]
        kernel = jnp.concatenate([kernel for kernel, _ in convs], axis=1).astype(self.dtype)
        bias = jnp.concatenate([bias for _, bias in convs]).astype(self.dtype)
        embedded = (x.astype(self.dtype) @ kernel + bias).astype(jnp.float32)
        scale = jnp.sqrt(jnp.float32(cfg.amplification))
        q = l2_normalize(embedded[..., :d], cfg.norm_eps) * scale
        k = l2_normalize(embedded[..., d:2 * d], cfg.norm_eps) * scale
        return q, k, embedded[..., 2 * d:]

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, Embeddings]:
        if x.ndim != 4:
            raise ValueError(f'ENLCA expects [B, H, W, C] input, got shape {x.shape}')
        b, h, w, c = x.shape
        cfg = self.config
        if c // cfg.reduction < 1:
            raise ValueError(f'ENLCA: {c} channels / reduction {cfg.reduction} leaves no embedding')
        q, k, v = self.embed(x.reshape(b, h * w, c))
        self.sow('intermediates', 'embeddings', (q, k, v))
        d = q.shape[-1]
        sampler = cfg.projection_fn()
        projection = self.variable(
            RANDOM_FEATURES, 'projection',
            lambda: sampler(self.make_rng(RANDOM_FEATURES), cfg.num_random_features, d))
        if projection.value.shape[-1] != d:
            raise ValueError(f'ENLCA: random features have {projection.value.shape[-1]} columns, '
                             f'the embedding has {d}')
        y = cfg.attend(q, k, v, projection.value, spatial_shape=(h, w),
                       mask=None if mask is None else mask.reshape(b, h * w, 1), layer=self.layer)
        y = _masked(y.reshape(b, h, w, c).astype(x.dtype), mask)
        return y * self.res_scale + x, (q, k)


def check_block(block: type[nn.Module]) -> None:
    """Raises unless `block` keeps the attention-block contract, which `model.block` relies on.

    The contract:
      * a Flax module class with fields `config: ENLCAConfig`, `res_scale: float` and `dtype`
        (and optionally `layer: int`, the module's ordinal among the network's attention modules,
        which ENLCN then sets), built as `block(config, res_scale, dtype)`; its variables are made
        from the `params` and `random_features` rngs (random features in the `random_features`
        collection, so `ENLCN.redraw` redraws them);
      * called `(x [B, H, W, C], mask [B, H, W, 1] | None) -> (y [B, H, W, C], (q, k))`, q and
        k `[B, H W, d]` being what the contrastive loss sees;
      * it honours `mask` (1 on real positions, 0 on padding): y at real positions does not
        depend on the content of padded positions, so padded evaluation is exact at any
        `--bucket`;
      * it sows `('intermediates', 'embeddings')` = `(q, k, v)` exactly as its attention receives
        them: q, k `[B, H W, d]` (normalised and amplified) and v `[B, H W, c]`, which the
        research tools (`python -m enlcn_jax.visualize`) read.
    Subclassing `ENLCA` and overriding its `embed` keeps all of it.

    The check runs the block (under `jit`, `x [2, 3, 4, 8]`, 4 random features) once without a
    mask and twice with the last column masked, filled with two different contents; each failure
    is one line naming what is missing.
    """
    with jax.ensure_compile_time_eval():  # concrete even when first used inside a jit trace
        _check_block_values(block)


def _check_block_values(block: type[nn.Module]) -> None:
    b, h, w, c = 2, 3, 4, 8
    x = jnp.linspace(-1.0, 1.0, b * h * w * c, dtype=jnp.float32).reshape(b, h, w, c)
    mask = jnp.ones((b, h, w, 1), jnp.float32).at[:, :, -1].set(0.0)
    module = block(ENLCAConfig(num_random_features=4), 1.0, jnp.float32)
    rngs = {'params': jax.random.key(0), RANDOM_FEATURES: jax.random.key(1)}
    run = jax.jit(lambda x, *masks: module.init_with_output(rngs, x, *masks, mutable=True))
    expected = (f'block(x [{b}, {h}, {w}, {c}], mask [{b}, {h}, {w}, 1] | None) should return '
                f'(y [{b}, {h}, {w}, {c}], (q, k [{b}, {h * w}, d]))')
    for masks in ((), (mask,)):
        try:
            y, (q, k) = jax.eval_shape(run, x, *masks)[0]
        except (TypeError, ValueError) as e:
            raise ValueError(f'a block returns (y, (q, k)): {expected}') from e
        if y.shape != x.shape or q.shape[:2] != (b, h * w) or k.shape != q.shape:
            raise ValueError(f'{expected}, got y {list(y.shape)}, q {list(q.shape)}, '
                             f'k {list(k.shape)}')

    (y, (q, _)), variables = run(x * mask, mask)
    sown = variables.get('intermediates', {}).get('embeddings')
    if sown is None:
        raise ValueError("the block does not sow ('intermediates', 'embeddings'): the research "
                         "tools read its attention's inputs, self.sow('intermediates', "
                         "'embeddings', (q, k, v))")
    shapes = jax.tree_util.tree_map(lambda a: list(jnp.shape(a)), sown)
    if not (isinstance(sown, tuple) and len(sown) == 1 and isinstance(sown[0], tuple)
            and len(sown[0]) == 3 and [jnp.shape(e) for e in sown[0][:2]] == [q.shape] * 2
            and jnp.shape(sown[0][2])[:2] == (b, h * w) and jnp.ndim(sown[0][2]) == 3):
        raise ValueError(f"the block sows ('intermediates', 'embeddings') = {shapes}; expected "
                         f'one tuple (q, k, v) as its attention receives them: q, k '
                         f'{list(q.shape)} as returned, v [{b}, {h * w}, c]')

    filled = x * mask + 10.0 * (1.0 - mask)
    (y_filled, _), _ = run(filled, mask)
    real = lambda y: jnp.where(mask > 0, y - x, 0.0)
    difference = float(jnp.max(jnp.abs(real(y_filled) - real(y))))
    if not difference <= 1e-4 * float(jnp.max(jnp.abs(real(y)))):
        raise ValueError(f'the block ignores its mask: y at real positions (mask 1) changes by '
                         f'{difference:.3g} with the content of masked positions; leave them out '
                         'of the attention (ENLCAConfig.attend with mask) so padded evaluation '
                         'stays exact')


# The attention blocks a network can be built with (`model.block`): Flax module classes that keep
# the contract `check_block` states and checks.
BLOCKS: registry.Registry[type[nn.Module]] = registry.Registry(
    'attention block', 'model.block', check_block)
BLOCKS.register('enlca', ENLCA, trusted=True)


class ENLCN(nn.Module):
    """EDSR backbone with ENLCA modules: one first, then one after every `attention_every` blocks.

    Every attention module is a `block` (`'enlca'`, or a Flax module of a researcher's with
    ENLCA's fields and call signature, `MODULE:NAME`: see `BLOCKS`) built from `enlca`; with
    `enlca=None` this is plain EDSR. Input
    `[B, H, W, 3]` in [0, 1]; output `[B, H s, W s, 3]` in [0, 1] (unclipped), plus the (q, k)
    of every ENLCA module in body order when `return_embeddings=True`.

    The mean shifts are PyTorch EDSR's `MeanShift` convolutions (weight `eye(3) / rgb_std`): the
    head sees `(x rgb_range - rgb_range rgb_mean) / rgb_std` and the tail's output `y` becomes
    `(y + rgb_range rgb_mean) / rgb_std / rgb_range`, so `rgb_std` divides at both ends.

    `mask` (`[B, H, W, 1]`, 1 on real pixels, 0 on padding) makes a padded input give the
    unpadded output on its real pixels, up to float rounding: padded positions are kept at
    exactly zero after every convolution (as zero 'SAME' padding sees them) and are left out of
    the attention's keys and normaliser. Evaluation pads images to shared shapes with it.

    `dtype` is the name of the compute precision (`precision.PRECISIONS`) of the convolutions,
    except the last one, which writes the image in float32. Parameters stay float32 (cast per
    convolution), and so does everything else: the residual stream between modules, ENLCA's
    q, k, v, random features, normaliser and output, and the returned image and embeddings (so
    the losses are float32 too).
    """
    scale: int = 2
    n_resblocks: int = 32
    n_feats: int = 256
    res_scale: float = 0.1
    attention_every: int = 8
    enlca: ENLCAConfig | None = ENLCAConfig()
    rgb_range: float = 1.0
    rgb_mean: Sequence[float] = DIV2K_RGB_MEAN
    rgb_std: Sequence[float] = (1.0, 1.0, 1.0)
    dtype: str = 'float32'
    block: registry.Spec = 'enlca'

    def __post_init__(self):
        upsampling_factors(self.scale)
        precision.lookup(self.dtype)
        for key in ('n_resblocks', 'n_feats', 'attention_every'):
            if getattr(self, key) < 1:
                raise ValueError(f'model.{key} must be >= 1, got {getattr(self, key)}')
        if self.enlca is not None and self.n_feats // self.enlca.reduction < 1:
            raise ValueError(f'model.n_feats={self.n_feats} / model.reduction='
                             f'{self.enlca.reduction} leaves no attention embedding')
        super().__post_init__()

    def masks_padding(self) -> bool:
        """Whether a padded input with `mask` gives the unpadded output (else evaluation must
        not pad): always for EDSR; for attention modules, when the attention function takes a
        `mask`."""
        return self.enlca is None or registry.accepts(self.enlca.attention_fn(), 'mask')

    def redraw(self, variables: dict, key: Array) -> dict:
        """Returns `variables` with every attention module's random features redrawn from `key`
        by the model's projection sampler (`enlca.projection`).

        Pure: the same key gives the same matrices. Module i (in flattening order) draws from
        `fold_in(key, i)`; shapes are kept.
        """
        if RANDOM_FEATURES not in variables or self.enlca is None:
            return variables
        sampler = self.enlca.projection_fn()
        leaves, treedef = jax.tree_util.tree_flatten(variables[RANDOM_FEATURES])
        new = [sampler(jax.random.fold_in(key, i), *leaf.shape) for i, leaf in enumerate(leaves)]
        return {**variables, RANDOM_FEATURES: jax.tree_util.tree_unflatten(treedef, new)}

    def body_layout(self) -> list[str]:
        """Kind of each body module in order: 'enlca' or 'resblock' (the closing conv excluded)."""
        if self.enlca is None:
            return ['resblock'] * self.n_resblocks
        layout = ['enlca']
        for i in range(self.n_resblocks):
            layout.append('resblock')
            if (i + 1) % self.attention_every == 0:
                layout.append('enlca')
        return layout

    @nn.compact
    def __call__(self, x: Array, return_embeddings: bool = False, mask: Array | None = None):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f'ENLCN expects RGB images [B, H, W, 3], got shape {x.shape}')
        mean = jnp.asarray(self.rgb_mean, jnp.float32) * self.rgb_range
        std = jnp.asarray(self.rgb_std, jnp.float32)
        x = _masked((x.astype(jnp.float32) * self.rgb_range - mean) / std, mask)
        dtype = precision.lookup(self.dtype).dtype
        x = _masked(conv3x3(self.n_feats, 'head', dtype)(x).astype(jnp.float32), mask)

        embeddings = []
        res = x
        for i, kind in enumerate(self.body_layout()):
            if kind == 'enlca':
                res, qk = BLOCKS.get(self.block)(self.enlca, self.res_scale, dtype,
                                                 name=f'body_{i}',
                                                 **_ordinal(self.block, len(embeddings)))(res, mask)
                embeddings.append(qk)
            else:
                res = ResBlock(self.res_scale, dtype, name=f'body_{i}')(res, mask)
        res = _masked(conv3x3(self.n_feats, 'body_conv', dtype)(res), mask) + x

        y = Upsampler(self.scale, dtype, name='tail_upsample')(res, mask)
        y = conv3x3(3, 'tail_conv', jnp.float32)(y.astype(jnp.float32))
        # PyTorch EDSR's add_mean: a 1x1 conv, weight eye(3) / std, bias rgb_range * mean / std.
        sr = (y + mean) / std / self.rgb_range
        return (sr, embeddings) if return_embeddings else sr


def _ordinal(block: registry.Spec, ordinal: int) -> dict[str, int]:
    """`{'layer': ordinal}` for a block class with a `layer` field (ENLCA), else nothing."""
    fields = {f.name for f in dataclasses.fields(BLOCKS.get(block))}
    return {'layer': ordinal} if 'layer' in fields else {}


def EDSR(**kwargs) -> ENLCN:  # pylint: disable=invalid-name
    """Plain EDSR: an ENLCN without attention modules."""
    return ENLCN(enlca=None, **kwargs)


ENLCA_KEYS = tuple(f.name for f in dataclasses.fields(ENLCAConfig))


def from_config(config: Mapping[str, Any]) -> ENLCN:
    """The network of a flat model config (`config.model`, or a checkpoint's `model_config.json`).

    Keys of `ENLCAConfig` configure every ENLCA module; `attention='none'` gives plain EDSR (the
    other ENLCA keys are then unused); the rest are `ENLCN` fields. The attention, feature map
    and projection are checked at the network's sizes (`ENLCAConfig.check_functions`).

    Raises:
      ValueError: an unknown key, or an invalid value (naming the `model.*` key; `ENLCAConfig`
        and `ENLCN` check their own fields), or a function that fails its check (naming the key
        and the sizes).
    """
    config = dict(config)
    network_keys = {f.name for f in dataclasses.fields(ENLCN)} - {'enlca', 'parent', 'name'}
    unknown = sorted(set(config) - network_keys - set(ENLCA_KEYS))
    if unknown:
        raise ValueError(f'unknown model config key(s) {unknown}; known: '
                         f'{sorted(network_keys | set(ENLCA_KEYS))}')
    enlca = {key: config.pop(key) for key in ENLCA_KEYS if key in config}
    if enlca.get('attention') == 'none':
        return ENLCN(enlca=None, **config)
    network = ENLCN(enlca=ENLCAConfig(**enlca), **config)
    # An unknown name or a function failing its check raises here.
    network.enlca.check_functions(d=network.n_feats // network.enlca.reduction)
    BLOCKS.get(network.block)
    return network


SPEC_KEYS = ('attention', 'feature_map', 'projection', 'block')
# Spec names older versions recorded and that no longer resolve, by model config key (old name ->
# today's): `'softmax'` named exact attention and, as a feature map, the softmax kernel.
RENAMED_SPECS = {'attention': {'softmax': 'exact'}, 'feature_map': {'softmax': 'softmax_kernel'}}


def upgrade_recorded_config(config: Any) -> Any:
    """A flat model config recorded by an older version (a checkpoint's `model_config.json`, the
    `model` of a workdir's `config.json`), its spec names read as today's (`RENAMED_SPECS`,
    options kept: `'softmax(eps=0.0)'` -> `'softmax_kernel(eps=0.0)'`), so that what it
    recorded still loads and resumes; a new config is not upgraded, and the old names in it are
    unknown. A value that is not a mapping is returned as is (`from_config` refuses it).
    """
    if not isinstance(config, Mapping):
        return config
    upgraded = dict(config)
    for key, renamed in RENAMED_SPECS.items():
        if isinstance(upgraded.get(key), str):
            target, parenthesis, options = upgraded[key].strip().partition('(')
            if target.strip() in renamed:
                upgraded[key] = renamed[target.strip()] + parenthesis + options
    return upgraded


def recordable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat model config as `model_config.json` records it: functions given in code become the
    `MODULE:NAME(...)` specs that import them again (`registry.spec_string`).

    Raises:
      ValueError: a function that cannot be recorded by name, naming its key.
    """
    recorded = dict(config)
    for key in SPEC_KEYS:
        if key in recorded and recorded[key] is not None:
            try:
                recorded[key] = registry.spec_string(recorded[key])
            except ValueError as e:
                raise ValueError(f'model.{key}: {e}') from e
    return recorded


def init_variables(model: ENLCN, key: Array, lr_size: tuple[int, int] = (16, 16)) -> dict:
    """Initialises `params` and `random_features` from one key, on a `[1, *lr_size, 3]` input."""
    params_key, features_key = jax.random.split(key)
    dummy = jnp.zeros((1, *lr_size, 3), jnp.float32)
    return dict(model.init({'params': params_key, RANDOM_FEATURES: features_key}, dummy))


def count_params(params) -> int:
    """Number of trainable scalars in a params tree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
