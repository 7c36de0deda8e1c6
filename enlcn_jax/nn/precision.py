"""Compute precisions: which exist and what each may do.

A model's precision (`model.dtype`, `ENLCN.dtype`) is the dtype its convolutions compute in.
Parameters, optimizer state, the residual stream between modules, ENLCA's q, k, v, random
features and output, the returned image and the losses stay float32 whatever it is.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Precision:
    """One compute precision.

    Attributes:
      name: its name in configs, flags and results (`'bfloat16'`).
      dtype: the dtype convolutions compute in.
      trains: whether a model may be trained in it; `why_not` says why not.
    """
    name: str
    dtype: jnp.dtype
    trains: bool = True
    why_not: str = ''


PRECISIONS = {p.name: p for p in (
    Precision('float32', jnp.float32),
    Precision('bfloat16', jnp.bfloat16),
    Precision('float16', jnp.float16, trains=False,
              why_not='without loss scaling its gradients underflow (an L1 gradient per pixel '
                      "is ~1e-6); train in 'bfloat16' or 'float32'"),
)}
NAMES = tuple(PRECISIONS)


def lookup(name: str, key: str = 'model.dtype') -> Precision:
    """The precision called `name`; ValueError naming `key` and the choices otherwise."""
    if name not in PRECISIONS:
        raise ValueError(f'{key}={name!r}; choose one of {NAMES}')
    return PRECISIONS[name]


def check_trains(name: str, key: str = 'config.model.dtype') -> Precision:
    """The precision called `name` if a model may be trained in it, else ValueError saying why."""
    precision = lookup(name, key)
    if not precision.trains:
        raise ValueError(f'{key}={name!r} is for evaluation only: {precision.why_not}')
    return precision
