"""The network and its math: swappable functions (registry), random features, attention, ENLCA /
ENLCN, losses, precisions.
"""

# Importing the package registers the attention baselines and controls under their names.
from enlcn_jax.nn import controls, linear_baselines  # noqa: F401  pylint: disable=unused-import
from enlcn_jax.nn import local, lsh, nystrom  # noqa: F401  pylint: disable=unused-import
