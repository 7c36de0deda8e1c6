"""ENLCN training recipe: TrainState, schedules, the loss and the train step (the loop that runs
them is `loop`).

Modelled on Flax `examples/imagenet/train.py`. One step (`train_step`, its loss `loss_fn`):

    batch {'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p s, p s, 3]}, sharded over the 'data' axis
      -> ENLCN(lr / 255, return_embeddings=True) -> sr, [(q, k) per ENLCA module]
      -> loss = L1(sr, hr / 255) + w(step) * mean_modules contrastive(q, k)
      -> Adam(lr(step)) update, gradients averaged over the global batch by the compiler

Data parallelism is `jax.jit` over a one-axis `Mesh` of every device ('data'): the batch is split
on its first axis, the state replicated. With `config.distributed`, `train.py` first calls
`jax.distributed.initialize()` and each process feeds its share of the global batch.

Schedules are pure functions of the step, so a run resumed from a checkpoint repeats a straight
run exactly (same batches, same random features, same learning rate, same contrastive weight):

  * learning rate: `train.lr`, times `lr_decay_factor` from the first step of each epoch in
    `lr_decay_epochs` (`optax.piecewise_constant_schedule`);
  * contrastive weight: 0 before epoch `contrastive.start_epoch`, `contrastive.weight` from it;
    a traced scalar, so the step compiles once, and `lax.cond` skips the contrastive loss
    (O(B N^2 d) per module) while it is 0;
  * random features: redrawn from `fold_in(state.rng, i)` at the start of draw period i (epochs,
    every `redraw.steps` steps, or never) and kept in the state, so evaluation and checkpoints
    see the features the parameters were trained with.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from enlcn_jax.nn import losses, models, registry
from enlcn_jax.storage import checkpoints

Array = jax.Array
DATA_AXIS = 'data'


class TrainState(train_state.TrainState):
    """Flax TrainState plus the ENLCA random features and the key they are redrawn from.

    Attributes (besides `step`, `params`, `opt_state`, `apply_fn`, `tx`):
      random_features: `{'body_<i>': {'projection': float32 [m, d]}}`, one per ENLCA module
        (`{}` without attention).
      rng: uint32 [2] base key; draw i of the random features uses `fold_in(rng, i)`.
    """
    random_features: Any
    rng: Array

    @property
    def variables(self) -> dict:
        """`{'params', 'random_features'}`: what `ENLCN.apply` and `checkpoints` take."""
        variables = {'params': self.params}
        if self.random_features:
            variables[models.RANDOM_FEATURES] = self.random_features
        return variables

    def checkpoint_items(self) -> dict:
        """The items of a `checkpoints/` step (`checkpoints.save_checkpoint`):
        `{'variables': {'params', 'random_features'}, 'train': {'step', 'opt_state', 'rng'}}`."""
        return {checkpoints.VARIABLES: self.variables,
                checkpoints.TRAIN: {'step': self.step, 'opt_state': self.opt_state,
                                    'rng': self.rng}}

    def from_checkpoint_items(self, items: dict) -> 'TrainState':
        """This state with everything replaced by `items` (as `checkpoint_items` gives them)."""
        variables, train = items[checkpoints.VARIABLES], items[checkpoints.TRAIN]
        return self.replace(params=variables['params'],
                            random_features=variables.get(models.RANDOM_FEATURES, {}),
                            step=train['step'], opt_state=train['opt_state'], rng=train['rng'])


def create_model(config: ml_collections.ConfigDict) -> models.ENLCN:
    """The network of `config.model` (`models.from_config`)."""
    return models.from_config(config.model.to_dict())


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Step decay: `lr * factor^(number of lr_decay_epochs <= step // steps_per_epoch)`."""
    train = config.train
    boundaries = {int(epoch) * train.steps_per_epoch: train.lr_decay_factor
                  for epoch in train.lr_decay_epochs}
    return optax.piecewise_constant_schedule(train.lr, boundaries)


def create_contrastive_weight_fn(config: ml_collections.ConfigDict) -> Callable[[Any], Array]:
    """`step -> float32 weight`: 0 before epoch `contrastive.start_epoch`, `weight` from it."""
    start = config.train.contrastive.start_epoch * config.train.steps_per_epoch
    weight = config.train.contrastive.weight

    def weight_fn(step):
        return jnp.where(step >= start, jnp.float32(weight), jnp.float32(0.0))

    return weight_fn


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
    """Adam with the step-decay schedule, after global-norm clipping if `grad_clip > 0`."""
    train = config.train
    adam = optax.adam(learning_rate_fn, b1=train.betas[0], b2=train.betas[1], eps=train.eps)
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adam)
    return adam


def create_train_state(config: ml_collections.ConfigDict, model: models.ENLCN,
                       key: Array) -> TrainState:
    """Initial state on the default device: parameters and first random features from `key`."""
    init_key, redraw_key = jax.random.split(key)
    patch = config.data.lr_patch
    variables = models.init_variables(model, init_key, (patch, patch))
    return TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        tx=create_optimizer(config, create_learning_rate_fn(config)),
        random_features=variables.get(models.RANDOM_FEATURES, {}), rng=redraw_key)


def redraw_index(step: int, config: ml_collections.ConfigDict) -> int | None:
    """Index of the random-feature draw that starts at 0-based `step`, or None (keep them).

    `'epoch'`: draw e at the first step of epoch e; `'steps'`: draw i at step `i * redraw.steps`;
    `'never'`: always None (the features drawn at initialisation stay).
    """
    every = config.train.redraw.every
    if every == 'never':
        return None
    period = config.train.steps_per_epoch if every == 'epoch' else config.train.redraw.steps
    return step // period if step % period == 0 else None


def draw_random_features(model: models.ENLCN, random_features: Any, rng: Array,
                         index: Array) -> Any:
    """Draw `index` of every module's features: `model.redraw` with `fold_in(rng, index)`."""
    variables = model.redraw({models.RANDOM_FEATURES: random_features},
                             jax.random.fold_in(rng, index))
    return variables[models.RANDOM_FEATURES]


def contrastive_loss_fn(config: ml_collections.ConfigDict) -> losses.ContrastiveLoss:
    """The per-image contrastive loss of `config.train.contrastive`, `loss(q [N, d], k [N, d])
    -> scalar`: the spec `loss` resolved with the `margin` shorthand
    (`losses.get_contrastive_loss`), given `block_size` if it takes one and its spec does not
    set it.

    Raises:
      ValueError: an unknown or invalid loss, or a margin it cannot take, naming the key.
    """
    contrastive = config.train.contrastive
    loss = losses.get_contrastive_loss(contrastive.loss, contrastive.margin)
    if (registry.accepts(loss, 'block_size')
            and 'block_size' not in getattr(loss, 'keywords', {})):
        return functools.partial(loss, block_size=contrastive.block_size)
    return loss


def contrastive_term(embeddings: list[tuple[Array, Array]],
                     config: ml_collections.ConfigDict) -> Array:
    """Mean over ENLCA modules and images of the contrastive loss of `(q, k)`, each `[B, N, d]`.

    The loss (`contrastive_loss_fn`) is per image, batched with `vmap`: the batch axis stays a
    parallel axis that the compiler can split over devices.
    """
    per_image = jax.vmap(contrastive_loss_fn(config))
    return jnp.mean(jnp.stack([jnp.mean(per_image(q, k)) for q, k in embeddings]))


def batch_images(batch: dict[str, Array]) -> tuple[Array, Array]:
    """`(lr, hr)` float32 images in [0, 1] of a batch `{'lr': uint8 [B, p, p, 3], 'hr': uint8
    [B, p s, p s, 3]}`."""
    return tuple(jnp.asarray(batch[name], jnp.float32) / 255.0 for name in ('lr', 'hr'))


def loss_fn(params: Any, state: TrainState, batch: dict[str, Array], weight: Array,
            contrastive_fn: Callable[[list], Array]) -> tuple[Array, tuple[Array, Array]]:
    """The training loss of `params` on `batch`: `L1 + weight * contrastive`.

    Args:
      params: the parameters differentiated (`state.params` in a step).
      state: gives the model (`apply_fn`) and its random features.
      batch: `{'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p s, p s, 3]}`.
      weight: float32 scalar contrastive weight; the contrastive loss is only computed when > 0.
      contrastive_fn: `[(q, k)] -> scalar`, e.g. `contrastive_term` with the config bound.
    Returns:
      `(loss, (l1, contrastive))`, float32 scalars (`contrastive` is 0 while `weight` is 0).
    """
    lr_images, hr_images = batch_images(batch)
    variables = {'params': params, models.RANDOM_FEATURES: state.random_features}
    sr, embeddings = state.apply_fn(variables, lr_images, return_embeddings=True)
    l1 = losses.l1_loss(sr, hr_images)
    if embeddings:
        cl = jax.lax.cond(weight > 0, lambda: contrastive_fn(embeddings),
                          lambda: jnp.float32(0.0))
    else:
        cl = jnp.float32(0.0)
    return l1 + weight * cl, (l1, cl)


def train_step(state: TrainState, batch: dict[str, Array], *,
               learning_rate_fn: optax.Schedule,
               contrastive_weight_fn: Callable[[Any], Array],
               contrastive_fn: Callable[[list], Array]) -> tuple[TrainState, dict[str, Array]]:
    """One Adam step on `loss_fn`.

    Args:
      state: the current state (replicated).
      batch: `{'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p s, p s, 3]}`.
      learning_rate_fn: `step -> lr`, for the metrics (the optimiser holds its own copy).
      contrastive_weight_fn: `step -> weight`.
      contrastive_fn: `[(q, k)] -> scalar`, e.g. `contrastive_term` with the config bound.
    Returns:
      `(new_state, metrics)` with float32 scalars `loss`, `l1`, `contrastive` (0 while its weight
      is 0), `contrastive_weight`, `lr` and `grad_norm`.
    """
    weight = contrastive_weight_fn(state.step)
    (loss, (l1, cl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, batch, weight, contrastive_fn)
    new_state = state.apply_gradients(grads=grads)
    metrics = {'loss': loss, 'l1': l1, 'contrastive': cl, 'contrastive_weight': weight,
               'lr': learning_rate_fn(state.step), 'grad_norm': optax.tree.norm(grads)}
    return new_state, metrics


def explain_non_finite(config: ml_collections.ConfigDict, state: TrainState,
                       batch: dict[str, Array], step: int) -> str:
    """Which configured function first gives a non-finite value or gradient on `state` and
    `batch`, as a sentence: what to look at when a training loss turns non-finite.

    Runs the network on `batch` as `loss_fn` does, then, module by module in body order, the
    configured pieces on the module's own embeddings as the network runs them: the attention
    (`ENLCAConfig.attend`; where it is not finite, the feature map on the queries, a row block
    per image, and on the keys, with `is_query` for a map that takes it, to tell which of the two
    it is), then the contrastive loss of `(q, k)` (`contrastive_loss_fn`) if its weight at `step`
    is > 0. A gradient is the one of the sum of a piece's outputs with respect to its inputs.

    Args:
      config: the run's config.
      state: a state with finite parameters, e.g. the last checkpoint's.
      batch: `{'lr': uint8 [B, p, p, 3], 'hr': uint8 [B, p s, p s, 3]}`.
      step: the 0-based step `batch` is for (whether the contrastive loss runs).
    Returns:
      e.g. `"module body_0: model.feature_map='research:phi' gives non-finite features for the
      keys."`; where no configured function is to blame, a sentence saying what is non-finite
      (the network's activations or output, or nothing) and suggesting a lower `train.lr`.
    """
    model = create_model(config)
    lr_images, _ = batch_images(batch)
    forward = functools.partial(model.apply, return_embeddings=True, mutable=['intermediates'])
    (sr, embeddings), sown = jax.jit(forward)(state.variables, lr_images)
    names = [f'body_{i}' for i, kind in enumerate(model.body_layout()) if kind == 'enlca']
    with_contrastive = bool(create_contrastive_weight_fn(config)(step) > 0)
    per_image_loss = jax.vmap(contrastive_loss_fn(config)) if with_contrastive else None
    for name, (q, k) in zip(names, embeddings):
        # The module's attention inputs as the block sows them (`models.check_block`).
        _, _, v = sown['intermediates'][name]['embeddings'][0]
        if not _finite((q, k, v)):
            return (f'the embeddings of module {name} are non-finite before any configured '
                    'function runs on them: the network\'s parameters diverged; try a lower '
                    'train.lr.')
        projection = state.random_features[name]['projection']
        attend = functools.partial(model.enlca.attend, projection=projection,
                                   spatial_shape=lr_images.shape[1:3])
        what = _non_finite(attend, q, k, v)
        if what:
            return f'module {name}: {_blame_attention(config, model, q, k, projection, what)}.'
        if with_contrastive:
            what = _non_finite(lambda q, k: jnp.mean(per_image_loss(q, k)), q, k)
            if what:
                return (f'module {name}: train.contrastive.loss='
                        f'{config.train.contrastive.loss!r} gives a non-finite {what}.')
    if not _finite(sr):
        return ('the network\'s output is non-finite although every configured function gives '
                'finite values and gradients: its parameters diverged; try a lower train.lr.')
    return ('nothing is non-finite: every configured function gives finite values and '
            'gradients, and the network a finite output, so the step\'s own update diverged; '
            'try a lower train.lr.')


def explain_non_finite_loss(config: ml_collections.ConfigDict, model: models.ENLCN,
                            manager: ocp.CheckpointManager,
                            batch_of: Callable[[int], dict[str, Array]], step: int) -> str:
    """`explain_non_finite` on the last finite state (the latest checkpoint of `manager`, or the
    initial state if none was saved) and the batch of `step` (1-based, as logged: its loss was
    not finite; `batch_of(step - 1)`), as a sentence for the error that stops training. Never
    raises: a failure to run the functions again is described instead."""
    # As training starts from it (on a device: the checkpoint's arrays have its dtypes).
    state = jax.device_put(create_train_state(config, model, jax.random.PRNGKey(config.train.seed)))
    try:
        restored = checkpoints.restore_latest(manager, state.checkpoint_items())
        if restored is not None:
            state = state.from_checkpoint_items(restored)
        elif (index := redraw_index(0, config)) is not None:  # as the first step has them
            state = state.replace(random_features=draw_random_features(
                model, state.random_features, state.rng, index))
        explanation = explain_non_finite(config, state, batch_of(step - 1), step - 1)
    except Exception as e:  # pylint: disable=broad-except  # never hide the error it explains
        return f'(Running the configured functions again failed: {type(e).__name__}: {e}.)'
    where = (f'the checkpoint of step {int(state.step)}' if restored is not None
             else 'the initial state')
    return (f'Run again on the last finite state ({where}) with the batch of step {step}: '
            f'{explanation}')


def _blame_attention(config: ml_collections.ConfigDict, model: models.ENLCN, q: Array, k: Array,
                     projection: Array, what: str) -> str:
    """Why a module's attention has a non-finite `what` (`_non_finite`): the feature map's
    features of the queries or of the keys, if either is not finite, else the attention function
    itself."""
    feature_map = model.enlca.feature_map_fn()
    takes_is_query = registry.accepts(feature_map, 'is_query')

    def features(x: Array, is_query: bool) -> Array:
        """As ENLA maps them: the queries a row block per image, the keys `[B, N, d]` at once."""
        keywords = {'is_query': is_query} if takes_is_query else {}
        phi = lambda rows: feature_map(rows, projection, **keywords)
        return jax.vmap(phi)(x) if is_query else phi(x)

    for label, x, is_query in (('queries', q, True), ('keys', k, False)):
        found = _non_finite(functools.partial(features, is_query=is_query), x)
        if found:
            shown = 'features' if found == 'value' else 'gradients of its features'
            return (f'model.feature_map={config.model.feature_map!r} gives non-finite {shown} '
                    f'for the {label}')
    return (f'model.attention={config.model.attention!r} gives a non-finite '
            f'{"output" if what == "value" else "gradient"} from the finite features of '
            f'model.feature_map={config.model.feature_map!r}')


def _non_finite(fn: Callable[..., Array], *args: Array) -> str | None:
    """`'value'` if `fn(*args)` is not all finite, else `'gradient'` if the gradient of the sum of
    its outputs with respect to `args` is not, else None."""
    def value_and_gradient(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(jnp.ones_like(out))

    out, gradient = jax.jit(value_and_gradient)(*args)
    if not _finite(out):
        return 'value'
    return None if _finite(gradient) else 'gradient'


def _finite(tree: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def create_mesh(devices: list | None = None) -> Mesh:
    """One-axis mesh ('data') over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def compile_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                       contrastive_fn: Callable[[list], Array] | None = None) -> Callable:
    """`train_step` of `config` jitted over `mesh`: `(state, batch) -> (state, metrics)`, the
    state replicated (and donated), the batch split on 'data'.

    `contrastive_fn` replaces `contrastive_term` (the benchmarks count the FLOPs of the L1-only
    phase with one that costs nothing).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    step_fn = functools.partial(
        train_step, learning_rate_fn=create_learning_rate_fn(config),
        contrastive_weight_fn=create_contrastive_weight_fn(config),
        contrastive_fn=contrastive_fn or functools.partial(contrastive_term, config=config))
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.jit(step_fn, in_shardings=(replicated, batch_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def compile_redraw(config: ml_collections.ConfigDict,
                   mesh: Mesh) -> Callable[[TrainState, int], TrainState]:
    """`(state, index) -> state` with draw `index` of the random features, replicated on `mesh`."""
    draw = jax.jit(functools.partial(draw_random_features, create_model(config)),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))

    def redraw(state: TrainState, index: int) -> TrainState:
        return state.replace(random_features=draw(state.random_features, state.rng, index))

    return redraw


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """This process's rows of the global batch -> global arrays split over `mesh` on 'data'."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
