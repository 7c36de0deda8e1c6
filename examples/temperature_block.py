"""An attention block of one's own: ENLCA with a learned amplification.

    python train.py --config configs/quickstart.py \
        --config.model.block=examples.temperature_block:LearnedAmplificationENLCA

ENLCA scales the unit queries and keys by a fixed sqrt(k). This block learns k per module
(`log_amplification`, starting at `config.amplification`) and changes nothing else: it
subclasses ENLCA and overrides its `embed` hook, so the projections, the configured attention
(`model.attention`, `model.feature_map`, `model.projection`), the mask, the random features and
the embeddings the research tools read are ENLCA's (the block contract: `models.check_block`).
"""

import jax
import jax.numpy as jnp

from enlcn_jax.nn import models


class LearnedAmplificationENLCA(models.ENLCA):
    """ENLCA whose amplification k is a parameter. `[B, H, W, C] -> ([B, H, W, C], (q, k))`."""

    def embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """ENLCA's `(q, k, v)` of `x [B, N, C]`, q and k rescaled from norm sqrt(config k) to
        norm sqrt(exp(log_amplification))."""
        q, k, v = super().embed(x)
        fixed = jnp.log(jnp.float32(self.config.amplification))
        log_amplification = self.param('log_amplification', lambda _: fixed)
        scale = jnp.exp(0.5 * (log_amplification - fixed))
        return q * scale, k * scale, v
