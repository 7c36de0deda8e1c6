"""research/cost.py: one attention module's time, memory estimate, FLOPs and parameters, checked
against closed-form counts (the [N, N] score matrix, 2 N^2 (d + c) FLOPs of exact NLA, the three
1x1 convolutions' parameters)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import pytest

from enlcn_jax.nn import attention, models
from enlcn_jax.research import cost

SIDES = (16, 32)  # N = 1024 at 32: the N^2 term clearly above ENLA's N (m + c)
C = 64
D = C // models.ENLCAConfig().reduction
M = 8  # few random features: ENLA's O(N (m + c)) memory is then clearly below N^2


def scaled_values(q, k, v, projection, feature_map, scale=1.0):
    """A researcher's attention without any position mixing: `scale v`."""
    del q, k, projection, feature_map
    return scale * v


class ValueBlock(nn.Module):
    """A researcher's block: one 1x1 convolution C -> C added back; q = k = the input (sown with
    the convolution's output as v, as the block contract asks)."""
    config: models.ENLCAConfig = models.ENLCAConfig()
    res_scale: float = 0.1
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        b, h, w, c = x.shape
        y = nn.Conv(c, (1, 1), name='conv')(x)
        flat = x.reshape(b, h * w, c)
        self.sow('intermediates', 'embeddings', (flat, flat, y.reshape(b, h * w, c)))
        return x + self.res_scale * y, (flat, flat)


@pytest.fixture(scope='module')
def costs():
    return {kind: cost.attention_cost({'attention': kind, 'num_random_features': M},
                                      sizes=SIDES, channels=C, repeats=1)
            for kind in ('enla', 'exact')}


def test_rows_and_machine(costs):
    for report in costs.values():
        assert report['device'] and report['channels'] == C and report['attention']
        assert [row['side'] for row in report['rows']] == list(SIDES)
        assert [row['positions'] for row in report['rows']] == [s * s for s in SIDES]
        for row in report['rows']:
            assert row['fwd ms'] > 0 and row['fwd MiB'] > 0 and row['GFLOP'] > 0
            assert not row['GFLOP lower bound']  # one query block at these sizes


def test_exact_memory_holds_the_score_matrix_and_enla_grows_linearly(costs):
    assert SIDES[-1] ** 2 <= attention.SOFTMAX_QUERY_BLOCK  # one block: the whole [N, N]
    exact = [row['fwd MiB'] * 2 ** 20 for row in costs['exact']['rows']]
    enla = [row['fwd MiB'] * 2 ** 20 for row in costs['enla']['rows']]
    scores = [4 * (s * s) ** 2 for s in SIDES]  # float32 [N, N]
    for i in range(1, len(SIDES)):
        # Exact NLA's estimate grows at least by the score matrix's growth ...
        assert exact[i] - exact[i - 1] >= scores[i] - scores[i - 1]
        # ... ENLA's by at most a constant per position (4 x positions: at most 4 x the bytes),
        assert enla[i] <= 4 * enla[i - 1]
    # and at N = 1024 the quadratic term dominates: exact grows ~16x, far above ENLA's ~4x.
    assert exact[-1] / exact[-2] > 8 > enla[-1] / enla[-2]
    assert enla[-1] < exact[-1] / 4


def test_the_estimate_holds_the_score_matrix_at_one_full_query_block():
    # At N = 4096 the CPU's timed program keeps the [N, N] scores inside a library fusion, out
    # of XLA's sight; the estimate must still count them. Compiled only (max_gib: not run).
    side = 64
    assert side ** 2 == attention.SOFTMAX_QUERY_BLOCK
    report = cost.attention_cost({'attention': 'exact'}, sizes=(side,), channels=C, repeats=1,
                                 max_gib=1e-9)
    assert report['rows'][0]['fwd MiB'] * 2 ** 20 >= 4 * side ** 4
    assert report['rows'][0]['fwd ms'] is None and report['memory estimate']


def test_exact_flops_match_the_closed_form(costs):
    for side, row in zip(SIDES, costs['exact']['rows']):
        n = side * side
        scores_and_mix = 2 * n * n * (D + C)   # q k^T: 2 N^2 d; weights v: 2 N^2 c
        convs = 2 * n * C * (2 * D + C)        # the three 1x1 convolutions as one matmul
        assert row['GFLOP'] * 1e9 == pytest.approx(scores_and_mix + convs, rel=0.08)


def test_parameter_count_is_the_three_pointwise_convs(costs):
    hand = (C * D + D) + (C * D + D) + (C * C + C)  # conv_match1, conv_match2, conv_assembly
    assert costs['enla']['params'] == costs['exact']['params'] == hand
    wide = cost.attention_cost({'reduction': 2}, sizes=(8,), channels=16, repeats=1)
    assert wide['params'] == 2 * (16 * 8 + 8) + 16 * 16 + 16


def test_a_researchers_attention_and_block_are_measured():
    side, n = 8, 64
    report = cost.attention_cost({'attention': f'{__name__}:scaled_values(scale=2.0)'},
                                 sizes=(side,), channels=C, repeats=1)
    (row,) = report['rows']
    convs = 2 * n * C * (2 * D + C)
    # No N x N term: the module costs its convolutions (plus O(N C) elementwise work).
    assert convs <= row['GFLOP'] * 1e9 < convs + 2 * n * n * (D + C) / 4
    assert row['fwd ms'] > 0 and report['params'] == (C * D + D) * 2 + C * C + C
    block = cost.attention_cost({'block': f'{__name__}:ValueBlock'}, sizes=(side,), channels=C,
                                repeats=1)
    assert block['params'] == C * C + C
    assert block['rows'][0]['GFLOP'] * 1e9 >= 2 * n * C * C


def test_plain_edsr_costs_nothing():
    report = cost.attention_cost({'attention': 'none'}, sizes=(32, 64), repeats=1)
    assert not report['attention'] and report['params'] == 0 and 'no attention' in report['note']
    assert [(r['side'], r['fwd ms'], r['fwd MiB'], r['GFLOP']) for r in report['rows']] == [
        (32, 0.0, 0.0, 0.0), (64, 0.0, 0.0, 0.0)]


def test_programs_above_the_memory_limit_are_not_run():
    report = cost.attention_cost({'attention': 'exact'}, sizes=(8,), channels=C, repeats=1,
                                 max_gib=1e-9)
    (row,) = report['rows']
    assert row['fwd ms'] is None and row['fwd MiB'] > 0 and row['GFLOP'] > 0


def test_a_bad_config_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match='model.attention'):
        cost.attention_cost({'attention': 'no_such_attention'}, sizes=(8,))
    with pytest.raises(ValueError, match='unknown model config key'):
        cost.attention_cost({'attentoin': 'exact'}, sizes=(8,))
