"""enlcn-jax: Efficient Non-Local Contrastive Attention (ENLCA / ENLCN) for image super-resolution in JAX/Flax."""

__version__ = "0.1.0"
