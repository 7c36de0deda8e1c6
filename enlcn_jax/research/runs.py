"""Train one variant on one task, once per seed, and score each run: the one implementation the
leaderboard (and through it every comparison of variants on the synthetic tasks) uses.

    config = runs.base_config(task, steps=400)
    trainer = runs.VariantTrainer(variant_config, task)
    result = trainer.run(seed=0, steps=400)   # {'psnr': mean dB, 'psnr_images': [...], ...}

Each run trains the same small ENLCN (`base_config`: 4 residual blocks x 16 features, two
attention modules) for the same steps on the task's stream of the seed (`tasks.training_batches`)
and is scored by PSNR-Y on the task's fixed held-out images (`tasks.held_out_set`), whole images,
no padding, with the evaluator every other score in the package uses.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import models
from enlcn_jax.research import tasks as tasks_lib
from enlcn_jax.train import default_config, recipe

STEPS_PER_EPOCH = 50  # the random features are redrawn at every epoch start


# LR pixels per training batch: 8 images of 16^2, 2 of 32^2.
BATCH_PIXELS = 8 * 16 * 16


def batch_size(task: tasks_lib.Task) -> int:
    """Images per training batch on `task`: `BATCH_PIXELS` LR pixels (at least one image), so
    a step costs about the same on every task."""
    return max(1, BATCH_PIXELS // task.lr_size ** 2)


def base_config(task: tasks_lib.Task, steps: int) -> ml_collections.ConfigDict:
    """The training config of every run on `task`: `train.default_config` with a small ENLCN.

    x`task.scale`, 4 residual blocks x 16 features, an attention module first and one after the
    4th block (2 modules, embeddings of 16 / 4 = 4 dimensions, m = 64 random features); `steps`
    steps of `batch_size(task)` whole images; Adam at 2e-3, halved from the epoch that holds
    three quarters of the steps; the contrastive loss (where a variant has it) from the epoch
    that holds half of them; random features redrawn every `STEPS_PER_EPOCH` steps (an epoch).
    """
    half, three_quarters = (int(fraction * steps) // STEPS_PER_EPOCH for fraction in (0.5, 0.75))
    config = default_config.get_config()
    config.update_from_flattened_dict({
        'model.scale': task.scale, 'model.n_resblocks': 4, 'model.n_feats': 16,
        'model.attention_every': 4, 'model.num_random_features': 64,
        'data.lr_patch': task.lr_size, 'data.batch_size': batch_size(task),
        'train.epochs': math.ceil(steps / STEPS_PER_EPOCH),
        'train.steps_per_epoch': STEPS_PER_EPOCH, 'train.lr': 2e-3,
        'train.lr_decay_epochs': (three_quarters,), 'train.contrastive.start_epoch': half,
    })
    return config


class VariantTrainer:
    """Trains and scores one variant's network on one task, once per seed.

    The train step, the redraw and the scoring forward compile once and serve every seed.

    Args:
      config: the variant's config (`variants.check_variant` of `base_config`).
      task: the task its data come from.
    """

    def __init__(self, config: ml_collections.ConfigDict, task: tasks_lib.Task):
        self.config, self.task = config, task
        self.test_images = tasks_lib.held_out_set(task)
        self.model = recipe.create_model(config)
        self.mesh = recipe.create_mesh()
        self.train_step = recipe.compile_train_step(config, self.mesh)
        self.redraw = recipe.compile_redraw(config, self.mesh)
        self._template: recipe.TrainState | None = None
        self._upscaler: inference.ModelUpscaler | None = None

    def initial_state(self, seed: int) -> recipe.TrainState:
        """The state training starts from: parameters and random features from `seed`."""
        state = recipe.create_train_state(self.config, self.model, jax.random.PRNGKey(seed))
        # Every seed's state keeps the first one's static fields (the model's apply, the
        # optimiser), so the compiled step recognises it and is not compiled again.
        if self._template is None:
            self._template = state
        state = self._template.replace(step=state.step, params=state.params,
                                       opt_state=state.opt_state,
                                       random_features=state.random_features, rng=state.rng)
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))

    def train(self, seed: int, steps: int) -> recipe.TrainState:
        """`steps` train steps from `initial_state(seed)` on the task's stream of `seed`, with
        the random features redrawn on the config's schedule.

        Raises:
          FloatingPointError: the parameters are not finite after the last step.
        """
        state = self.initial_state(seed)
        batches = tasks_lib.training_batches(self.task, seed, self.config.data.batch_size)
        for step in range(steps):
            index = recipe.redraw_index(step, self.config)
            if index is not None:
                state = self.redraw(state, index)
            state, _ = self.train_step(state, recipe.shard_batch(next(batches), self.mesh))
        if not all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(state.params)):
            raise FloatingPointError(f'the parameters are not finite after {steps} steps of '
                                     f'seed {seed}: training diverged')
        return state

    def score(self, state: recipe.TrainState) -> list[float]:
        """PSNR-Y (dB, `scale` pixels shaved) of `state`'s network on each held-out image, in
        the held-out set's order (`evaluator.evaluate_in_memory`)."""
        variables = jax.tree.map(lambda x: x.addressable_data(0), state.variables)
        if self._upscaler is None:
            self._upscaler = inference.ModelUpscaler(self.model, variables, bucket=1)
        upscaler = self._upscaler.with_variables(variables)
        result = evaluator.evaluate_in_memory(self.test_images, upscaler)
        return [image['psnr'] for image in result.images]

    def run(self, seed: int, steps: int) -> dict:
        """One run: `train` then `score`.

        Returns:
          `{'psnr': mean dB or None, 'psnr_images': per image or None, 'diverged': bool,
          'params': trainable scalars, 'seconds': wall time}`; a run whose parameters are not
          finite is `diverged` with no scores.
        """
        start = time.perf_counter()
        try:
            state = self.train(seed, steps)
        except FloatingPointError:
            return {'psnr': None, 'psnr_images': None, 'diverged': True,
                    'params': self.params, 'seconds': time.perf_counter() - start}
        psnrs = self.score(state)
        return {'psnr': float(np.mean(psnrs)), 'psnr_images': psnrs, 'diverged': False,
                'params': self.params, 'seconds': time.perf_counter() - start}

    @functools.cached_property
    def params(self) -> int:
        """Trainable scalars of the variant's network (its shapes traced once per trainer)."""
        shapes = jax.eval_shape(lambda: models.init_variables(
            self.model, jax.random.key(0), (self.task.lr_size, self.task.lr_size)))
        return models.count_params(shapes['params'])
