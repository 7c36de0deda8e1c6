import jax
import jax.numpy as jnp


def relu_squared(x, projection):
    """A kernel feature map: `phi(x [..., d], F [m, d]) -> [..., m]`, non-negative."""
    return jnp.square(jax.nn.relu(x @ projection.T)) / projection.shape[0] ** 0.5 + 1e-6
