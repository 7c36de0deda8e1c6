"""What one attention module of a variant costs: forward time, XLA's memory estimate and FLOPs.

A variant is a flat model config (`models.from_config`): `{'attention': 'exact'}`,
`{'attention': 'enla', 'feature_map': 'my_mod:phi(rho=0.5)'}`, `{'block': 'my_mod:Block'}`.
`attention_cost` builds its attention module as the network does (the `model.block` class from
`models.BLOCKS`, given the variant's `ENLCAConfig`, `res_scale` and compute precision) and
measures the jit-compiled forward `module.apply(variables, x)[0]` on `[1, side, side, channels]`
inputs, the way `bench/attention.py` measures ENLCA against exact NLA:

* `fwd ms`: median wall time over `repeats` runs after one warm-up;
* `fwd MiB`: XLA's estimate of the compiled program (arguments + outputs + temporaries,
  `memory.compiled_bytes`); on a GPU the device memory the program takes;
* `GFLOP`: XLA's cost analysis of the compiled program (`common.compiled_flops`). XLA counts a
  loop's body once, so attention that loops over query blocks (exact NLA above
  `attention.SOFTMAX_QUERY_BLOCK` positions, ENLA above `attention.ENLA_QUERY_BLOCK`) is
  undercounted by the number of blocks: such rows have `GFLOP lower bound` True (the compiled
  program has a `while` loop).

On CPU, XLA hands some fusions to a library (YNNPACK: `kCustom` fusions in the compiled HLO)
whose intermediates are outside XLA's buffer assignment, so the timed program's estimate leaves
them out (exact NLA at 64x64: 5 MiB, below its own 64 MiB [4096, 4096] score matrix). There the
estimate is taken from the same program compiled with those fusions off (`CPU_ESTIMATE_OPTIONS`:
130 MiB), as the report's `memory estimate` says; on a GPU it is the device memory the timed
program takes.

The module's parameter count (`params`) does not depend on the size. Costs are the module's
alone: the rest of the network (EDSR's convolutions) is the same for every variant.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from enlcn_jax.bench.common import compiled_flops, median_time, mib
from enlcn_jax.evaluation.memory import compiled_bytes
from enlcn_jax.nn import models, precision

# XLA options of the CPU program whose memory is estimated: no library (YNNPACK) fusions, whose
# intermediates XLA's buffer assignment does not see.
CPU_ESTIMATE_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}
# The sides of the feature map at which the module is initialised (its variables do not depend
# on the size).
_INIT_SIDE = 8


def attention_module(model_config: Mapping[str, Any]):
    """The first attention module of the network `model_config` gives (`models.from_config`),
    unbound; None for plain EDSR (`attention='none'`).

    Raises:
      ValueError: an invalid model config (from `models.from_config`, naming the key).
    """
    network = models.from_config(model_config)
    if network.enlca is None:
        return None
    block = models.BLOCKS.get(network.block)
    return block(network.enlca, network.res_scale, precision.lookup(network.dtype).dtype)


def _memory_estimate(lowered: jax.stages.Lowered, compiled: jax.stages.Compiled
                     ) -> tuple[int | None, str]:
    """XLA's memory estimate of a program in bytes (`memory.compiled_bytes`) and what it
    counts: on CPU from `lowered` compiled with `CPU_ESTIMATE_OPTIONS` (the timed program's own
    estimate where this jax has no such option), elsewhere from `compiled`."""
    if jax.devices()[0].platform == 'cpu':
        try:
            return (compiled_bytes(lowered.compile(compiler_options=CPU_ESTIMATE_OPTIONS)),
                    'XLA buffers of the program compiled without library fusions')
        except jax.errors.JaxRuntimeError:
            pass
    return compiled_bytes(compiled), 'XLA buffers of the timed program'


def attention_cost(model_config: Mapping[str, Any], sizes: Sequence[int] = (32, 64, 128),
                   channels: int = 64, repeats: int = 5, max_gib: float = 8.0) -> dict:
    """Measures one attention module of a variant on `[1, side, side, channels]` float32 inputs.

    Args:
      model_config: a flat model config (`models.from_config`); its `n_feats` is replaced by
        `channels`.
      sizes: square feature-map sides.
      channels: C of the input; the module's embedding width is C / `model.reduction`.
      repeats: timed forward runs per size (the median is reported).
      max_gib: a program whose memory estimate exceeds this is compiled but not run
        (`fwd ms` None).
    Returns:
      JSON-serialisable `{'device': jax.devices()[0].device_kind, 'platform', 'channels',
      'repeats', 'params', 'attention': bool, 'memory estimate': str, 'rows': [...]}`, one row
      per side: `side`, `positions` (side^2), `fwd ms` (None where not run), `fwd MiB` and
      `GFLOP` (None where the backend gives no estimate), `GFLOP lower bound`. For plain EDSR (`attention='none'`:
      no attention module) `attention` is False, `note` says so and every row is zero cost.
    Raises:
      ValueError: an invalid model config, naming the key.
    """
    module = attention_module({**model_config, 'n_feats': channels})
    device = jax.devices()[0]
    report = {'device': device.device_kind, 'platform': device.platform, 'channels': channels,
              'repeats': repeats, 'attention': module is not None, 'memory estimate': None}
    if module is None:
        report.update(params=0, note='plain EDSR: no attention module')
        report['rows'] = [{'side': side, 'positions': side * side, 'fwd ms': 0.0,
                           'fwd MiB': 0.0, 'GFLOP': 0.0, 'GFLOP lower bound': False}
                          for side in sizes]
        return report
    variables = module.init({'params': jax.random.key(1),
                             models.RANDOM_FEATURES: jax.random.key(2)},
                            jnp.zeros((1, _INIT_SIDE, _INIT_SIDE, channels)))
    report['params'] = models.count_params(variables['params'])
    forward = jax.jit(lambda variables, x: module.apply(variables, x)[0])
    rows = []
    for side in sizes:
        x = jax.random.normal(jax.random.key(0), (1, side, side, channels))
        lowered = forward.lower(variables, x)
        compiled = lowered.compile()
        estimate, report['memory estimate'] = _memory_estimate(lowered, compiled)
        flops = compiled_flops(compiled)
        row = {'side': side, 'positions': side * side, 'fwd MiB': mib(estimate),
               'GFLOP': None if flops is None else flops / 1e9,
               'GFLOP lower bound': ' while(' in compiled.as_text(), 'fwd ms': None}
        if estimate is None or estimate <= max_gib * 2 ** 30:
            row['fwd ms'] = 1e3 * median_time(compiled, (variables, x), repeats)
        rows.append(row)
    report['rows'] = rows
    return report
