"""An attention block of one's own: ENLCA with a learned amplification.

    python train.py --config configs/quickstart.py \
        --config.model.block=examples.temperature_block:LearnedAmplificationENLCA

ENLCA scales the unit queries and keys by a fixed sqrt(k). This block learns k per module
(`log_amplification`, starting at `config.amplification`), everything else as ENLCA: a block
is a Flax module with ENLCA's fields (`config`, `res_scale`, `dtype`) and call signature
`(x [B, H, W, C], mask [B, H, W, 1] | None) -> (y [B, H, W, C], (q, k [B, H W, d]))`; the
returned q, k feed the contrastive loss. It runs the configured attention through
`config.attend`, so `model.attention`, `model.feature_map` and `model.projection` still apply,
and keeps its random features in the `random_features` collection, so they are redrawn and
recorded as ENLCA's are.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from enlcn_jax.nn import models


class LearnedAmplificationENLCA(nn.Module):
    """ENLCA whose amplification k is a parameter. `[B, H, W, C] -> ([B, H, W, C], (q, k))`."""
    config: models.ENLCAConfig = models.ENLCAConfig()
    res_scale: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        b, h, w, c = x.shape
        cfg = self.config
        d = c // cfg.reduction
        # theta | delta | value as one 1x1 convolution.
        embedded = nn.Dense(2 * d + c, dtype=self.dtype, name='embed')(
            x.reshape(b, h * w, c)).astype(jnp.float32)
        log_amplification = self.param(
            'log_amplification', lambda _: jnp.log(jnp.float32(cfg.amplification)))
        scale = jnp.exp(0.5 * log_amplification)
        q = models.l2_normalize(embedded[..., :d], cfg.norm_eps) * scale
        k = models.l2_normalize(embedded[..., d:2 * d], cfg.norm_eps) * scale
        projection = self.variable(
            models.RANDOM_FEATURES, 'projection',
            lambda: cfg.projection_fn()(self.make_rng(models.RANDOM_FEATURES),
                                        cfg.num_random_features, d))
        flat_mask = None if mask is None else mask.reshape(b, h * w, 1)
        y = cfg.attend(q, k, embedded[..., 2 * d:], projection.value, spatial_shape=(h, w),
                       mask=flat_mask).reshape(b, h, w, c)
        if mask is not None:
            y = y * mask
        return x + self.res_scale * y.astype(x.dtype), (q, k)
