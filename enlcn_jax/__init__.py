"""enlcn-jax: Efficient Non-Local Contrastive Attention (ENLCA / ENLCN) for image
super-resolution in JAX/Flax.

Subpackages are layers; each imports only the ones before it:

    nn          the network and its math (no I/O)
    storage     what is written and read back: atomic files, models, checkpoints
    data        images in: files, resizing, sources, transforms, the input pipeline
    evaluation  scoring by the published protocol
    train       the recipe, the config checks, the loop, saving, the workdir
    bench       benchmarks
    research    comparing attention: variants, tasks, the leaderboard, the Table-2 ablation

The top-level modules are the commands (`python -m enlcn_jax.<command>`): `upscale`,
`convert`, `visualize`, `leaderboard`, `ablation`; `train.py` and `eval.py` sit at the
repository root.
"""

__version__ = "0.1.0"
