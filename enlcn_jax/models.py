"""EDSR and ENLCN super-resolution networks (Flax linen, NHWC).

Variables of an initialised ENLCN:
  * `params`: every convolution, named after the PyTorch modules (`head`, `body_<i>`,
    `tail_upsample`, `tail_conv`) so `convert.py` maps the authors' state_dict one to one.
  * `random_features`: one `projection [m, d]` per ENLCA module. Not trained: drawn from the
    `random_features` rng at init and redrawn with `redraw(variables, key)`.

The network takes images in [0, 1] and returns images in [0, 1] (unclipped); `rgb_range`
reproduces PyTorch EDSR's internal scale, so weights trained with `rgb_range=255` import as is.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from enlcn_jax import attention as attention_lib
from enlcn_jax import features

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
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = conv3x3(c, 'conv1', self.dtype)(x)
        y = conv3x3(c, 'conv2', self.dtype)(nn.relu(y))
        return x + self.res_scale * y


class Upsampler(nn.Module):
    """EDSR upsampler: log2(s) x (conv C->4C, shuffle 2) for s = 2^n; conv C->9C, shuffle 3 for s = 3.

    `[B, H, W, C] -> [B, H s, W s, C]`.
    """
    scale: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        if self.scale == 3:
            factors = [3]
        elif self.scale >= 2 and self.scale & (self.scale - 1) == 0:
            factors = [2] * (self.scale.bit_length() - 1)
        else:
            raise ValueError(f'scale must be 3 or a power of 2, got {self.scale}')
        for i, r in enumerate(factors):
            x = pixel_shuffle(conv3x3(c * r * r, f'conv_{i}', self.dtype)(x), r)
        return x


class ENLCA(nn.Module):
    """Efficient non-local contrastive attention block. `[B, H, W, C] -> ([B, H, W, C], (q, k))`.

    Q, K, V are 1x1 convs; Q and K (C / reduction channels) are L2-normalised over channels
    (norm clamped at `norm_eps`) and multiplied by sqrt(amplification) each; the attention output
    is added back as `out * res_scale + x`. `kernel_eps` is passed to the feature map as `eps`
    (None: the feature map's own default, 1e-4 for `softmax` as released). Also returns q and k,
    `[B, H W, C / reduction]` each, which is what the contrastive loss needs.
    """
    reduction: int = 4
    num_random_features: int = 128
    amplification: float = 6.0
    res_scale: float = 0.1
    attention: str = 'enla'
    feature_map: str = 'softmax'
    projection: str = 'orthogonal'
    norm_eps: float = 5e-5
    kernel_eps: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Embeddings]:
        if x.ndim != 4:
            raise ValueError(f'ENLCA expects [B, H, W, C] input, got shape {x.shape}')
        b, h, w, c = x.shape
        d = c // self.reduction
        if d < 1:
            raise ValueError(f'ENLCA: {c} channels / reduction {self.reduction} leaves no embedding')
        attend = attention_lib.get_attention(self.attention)
        feature_map = features.get_feature_map(self.feature_map, self.kernel_eps)
        sampler = features.get_projection(self.projection)

        def embed(name: str, width: int) -> Array:
            y = nn.Conv(width, (1, 1), name=name, dtype=self.dtype)(x)
            return y.astype(jnp.float32).reshape(b, h * w, width)

        scale = jnp.sqrt(jnp.float32(self.amplification))
        q = l2_normalize(embed('conv_match1', d), self.norm_eps) * scale
        k = l2_normalize(embed('conv_match2', d), self.norm_eps) * scale
        v = embed('conv_assembly', c)
        projection = self.variable(
            RANDOM_FEATURES, 'projection',
            lambda: sampler(self.make_rng(RANDOM_FEATURES), self.num_random_features, d))
        if projection.value.shape[-1] != d:
            raise ValueError(f'ENLCA: random features have {projection.value.shape[-1]} columns, '
                             f'the embedding has {d}')
        y = attend(q, k, v, projection.value, feature_map).reshape(b, h, w, c)
        return y.astype(x.dtype) * self.res_scale + x, (q, k)


class ENLCN(nn.Module):
    """EDSR backbone with ENLCA modules: one first, then one after every `attention_every` blocks.

    With `attention='none'` this is plain EDSR. `norm_eps` and `kernel_eps` are passed to every
    ENLCA module (the SPEC's "normalisation eps" and "feature map" rows). Input `[B, H, W, 3]`
    in [0, 1]; output `[B, H s, W s, 3]` in [0, 1] (unclipped), plus the (q, k) of every ENLCA
    module in body order when `return_embeddings=True`.
    """
    scale: int = 2
    n_resblocks: int = 32
    n_feats: int = 256
    res_scale: float = 0.1
    attention: str = 'enla'
    attention_every: int = 8
    reduction: int = 4
    num_random_features: int = 128
    amplification: float = 6.0
    feature_map: str = 'softmax'
    projection: str = 'orthogonal'
    norm_eps: float = 5e-5
    kernel_eps: float | None = None
    rgb_range: float = 1.0
    rgb_mean: Sequence[float] = DIV2K_RGB_MEAN
    rgb_std: Sequence[float] = (1.0, 1.0, 1.0)
    dtype: Any = jnp.float32

    def body_layout(self) -> list[str]:
        """Kind of each body module in order: 'enlca' or 'resblock' (the closing conv excluded)."""
        if self.attention == 'none':
            return ['resblock'] * self.n_resblocks
        layout = ['enlca']
        for i in range(self.n_resblocks):
            layout.append('resblock')
            if (i + 1) % self.attention_every == 0:
                layout.append('enlca')
        return layout

    @nn.compact
    def __call__(self, x: Array, return_embeddings: bool = False):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f'ENLCN expects RGB images [B, H, W, 3], got shape {x.shape}')
        mean = jnp.asarray(self.rgb_mean, jnp.float32) * self.rgb_range
        std = jnp.asarray(self.rgb_std, jnp.float32)
        x = (x.astype(jnp.float32) * self.rgb_range - mean) / std
        x = conv3x3(self.n_feats, 'head', self.dtype)(x.astype(self.dtype))

        enlca = functools.partial(
            ENLCA, reduction=self.reduction, num_random_features=self.num_random_features,
            amplification=self.amplification, res_scale=self.res_scale, attention=self.attention,
            feature_map=self.feature_map, projection=self.projection, norm_eps=self.norm_eps,
            kernel_eps=self.kernel_eps, dtype=self.dtype)
        embeddings = []
        res = x
        for i, kind in enumerate(self.body_layout()):
            if kind == 'enlca':
                res, qk = enlca(name=f'body_{i}')(res)
                embeddings.append(qk)
            else:
                res = ResBlock(self.res_scale, self.dtype, name=f'body_{i}')(res)
        res = conv3x3(self.n_feats, 'body_conv', self.dtype)(res) + x

        y = Upsampler(self.scale, self.dtype, name='tail_upsample')(res)
        y = conv3x3(3, 'tail_conv', self.dtype)(y).astype(jnp.float32)
        sr = (y * std + mean) / self.rgb_range
        return (sr, embeddings) if return_embeddings else sr


def EDSR(**kwargs) -> ENLCN:  # pylint: disable=invalid-name
    """Plain EDSR: an ENLCN without attention modules."""
    return ENLCN(attention='none', **kwargs)


def init_variables(model: ENLCN, key: Array, lr_size: tuple[int, int] = (16, 16)) -> dict:
    """Initialises `params` and `random_features` from one key, on a `[1, *lr_size, 3]` input."""
    params_key, features_key = jax.random.split(key)
    dummy = jnp.zeros((1, *lr_size, 3), jnp.float32)
    return dict(model.init({'params': params_key, RANDOM_FEATURES: features_key}, dummy))


def redraw(variables: dict, key: Array, projection: str = 'orthogonal') -> dict:
    """Returns `variables` with every ENLCA's random features redrawn from `key`.

    Pure: the same key gives the same matrices. Module i (in flattening order) draws from
    `fold_in(key, i)`; shapes are kept.
    """
    if RANDOM_FEATURES not in variables:
        return variables
    sampler = features.get_projection(projection)
    leaves, treedef = jax.tree_util.tree_flatten(variables[RANDOM_FEATURES])
    new = [sampler(jax.random.fold_in(key, i), *leaf.shape) for i, leaf in enumerate(leaves)]
    return {**variables, RANDOM_FEATURES: jax.tree_util.tree_unflatten(treedef, new)}


def count_params(params) -> int:
    """Number of trainable scalars in a params tree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
