"""The benchmark command runs and writes its table as JSON (timings themselves are not tested):
what is derived from the timings (FLOP rates, the share of the matmul peak) and what is not
(XLA's FLOP counts, sizes, dtypes, device counts) is.

The commands run with XLA's optimizations off, which compiles faster and leaves XLA's FLOP
counts as they are. `gpu` needs two devices, so a process of its own: it starts with the module
(`START_EARLY`) and runs beside the tests in this process; the tests that read it come last.
It and `profile` are slow tests (`-m slow`), outside the default run's 6 minutes.
"""

import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from conftest import Started
from enlcn_jax.bench import __main__ as bench_main, common as bench_lib, train as bench_train

# `gpu` shrunk to seconds on a CPU, on 2 host devices so that '1,all' gives two device counts.
TINY_GPU = ('--config', 'quickstart', '--batch_size', '2', '--lr_patch', '24', '--steps', '1',
            '--attention_sizes', '16', '--eval_size', '32x24', '--repeats', '1',
            '--matmul_n', '256')
TWO_CPU_DEVICES = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=2']).strip()}
START_EARLY = ('gpu_process',)


def bench(command: str, out_dir, *args: str, capsys, json_name: str | None = None
          ) -> tuple[str, dict]:
    """Runs `python -m enlcn_jax.bench COMMAND ARGS --out OUT_DIR` in this process:
    `(stdout, the JSON written, <json_name or command>.json)`."""
    bench_main.main([command, *args, '--out', str(out_dir)])
    report = json.loads((out_dir / f'{json_name or command}.json').read_text())
    return capsys.readouterr().out, report


@pytest.fixture(autouse=True)
def unoptimized():
    """XLA's optimizations off for the test (see the module docstring)."""
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    yield
    jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def gpu_process(tmp_path_factory):
    """`(the tiny gpu command on two CPU devices, started (START_EARLY), its out_dir)`."""
    out_dir = tmp_path_factory.mktemp('gpu_bench')
    process = Started(['-m', 'enlcn_jax.bench', 'gpu', *TINY_GPU, '--out', str(out_dir)],
                      {**os.environ, **TWO_CPU_DEVICES, 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'})
    yield process, out_dir
    process.kill()


@pytest.fixture(scope='module')
def gpu_run(gpu_process):
    """`(stdout, gpu.json, out_dir)` of the tiny `gpu` command on two CPU devices."""
    process, out_dir = gpu_process
    stdout = process.finish().stdout
    return stdout, json.loads((out_dir / 'gpu.json').read_text()), out_dir


def quickstart_conv_gflop(batch: int, lr_patch: int) -> float:
    """Forward GFLOP of the 3x3 convolutions of configs/quickstart.py (x2, 4 blocks x 32
    features), 2 H W 9 Cin Cout each: head, two per block, body_conv and the upsampler's conv at
    LR, the tail at HR (ENLCA's 1x1 convolutions and attention left out)."""
    c, blocks, lr_pixels = 32, 4, batch * lr_patch ** 2
    lr_macs = 3 * c + 2 * blocks * c * c + c * c + c * 4 * c
    hr_macs = 4 * c * 3
    return 2 * 9 * lr_pixels * (lr_macs + hr_macs) / 1e9


def test_attention_bench_writes_rows_for_both_attentions_and_the_growth(tmp_path, capsys):
    stdout, report = bench('attention', tmp_path, '--sizes', '8,12', '--channels', '16', '--m',
                           '8', '--repeats', '1', capsys=capsys)
    # ENLA at every size first: each row's memory above the earlier rows' (see `peak MiB`).
    assert [(r['size'], r['attention']) for r in report['rows']] == [
        ('8x8', 'enla'), ('12x12', 'enla'), ('8x8', 'exact'), ('12x12', 'exact')]
    assert all(r['fwd ms'] > 0 and r['fwd+bwd ms'] > 0 for r in report['rows'])
    assert all(r['peak MiB'] is None for r in report['rows'])  # CPU: no memory statistics
    assert report['growth']['positions ratio'] == 144 / 64
    assert '| 12x12 | exact |' in stdout


def test_contrastive_bench_writes_forward_and_backward_times(tmp_path, capsys):
    _, report = bench('contrastive', tmp_path, '--sizes', '12', '--batch', '2', '--d', '8',
                      '--repeats', '1', capsys=capsys)
    (row,) = report['rows']
    assert row['size'] == '12x12' and row['batch'] == 2 and row['fwd+bwd ms'] > 0


def test_train_bench_refuses_float16_before_timing_anything(tmp_path):
    with pytest.raises(ValueError, match='float16'):
        bench_train.train_throughput_bench(['quickstart'], [1], 2, 24, dtypes=['float16'],
                                           out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_parse_size_reads_width_x_height_or_one_side():
    assert bench_lib.parse_size('512x384') == (512, 384)
    assert bench_lib.parse_size('256') == (256, 256)
    for bad in ('512x', '1x2x3', '0x4'):
        with pytest.raises(ValueError):
            bench_lib.parse_size(bad)


def test_compiled_flops_counts_a_matmul_and_reads_every_cost_analysis_form():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    assert bench_lib.compiled_flops(compiled) == 2 * 64 * 32 * 16
    as_list = SimpleNamespace(cost_analysis=lambda: [{'flops': 7.0}])
    assert bench_lib.compiled_flops(as_list) == 7.0

    def unavailable():
        raise NotImplementedError
    assert bench_lib.compiled_flops(SimpleNamespace(cost_analysis=unavailable)) is None
    assert bench_lib.compiled_flops(SimpleNamespace(cost_analysis=lambda: None)) is None


@pytest.mark.slow  # 16 s: the benchmark's plumbing, outside the default run's 6 minutes
def test_profile_splits_the_train_step_into_parts_that_add_up(tmp_path, capsys):
    """`bench profile`: the split is the differences of the timed programs, so it adds up to the
    step; each part's FLOPs are XLA's count (the forward about a third of the L1 step's, the
    contrastive loss adding FLOPs), and the rates are FLOPs over times."""
    _, report = bench('profile', tmp_path, '--n_resblocks', '2', '--n_feats', '16',
                      '--batch_size', '2', '--lr_patch', '16', '--repeats', '1',
                      '--matmul_n', '256', capsys=capsys, json_name='train_profile')
    rows = {r['part']: r for r in report['rows']}
    split = [r for name, r in rows.items() if name.startswith('split: ')]
    assert len(split) == 6
    assert sum(r['ms'] for r in split) == pytest.approx(rows['train step']['ms'], rel=1e-9)
    assert sum(r['% of step'] for r in split) == pytest.approx(100, rel=1e-9)
    gflop = {name: r['GFLOP'] for name, r in rows.items() if 'GFLOP' in r}
    assert 2 < gflop['forward + backward, L1'] / gflop['forward'] < 4
    assert gflop['EDSR forward'] < gflop['forward']
    assert (gflop['forward + backward, L1'] < gflop['forward + backward, L1 + contrastive']
            <= gflop['train step'])
    for row in rows.values():
        if row.get('GFLOP') is not None:
            assert row['GFLOP/s'] == pytest.approx(row['GFLOP'] / row['ms'] * 1e3)
            assert row['% of matmul peak'] == pytest.approx(
                100 * row['GFLOP/s'] / report['matmul peak GFLOP/s'])
    assert report['model']['n_resblocks'] == 2 and report['batch_size'] == 2


# --- the gpu command, last: its process runs beside the tests above --------------------------

@pytest.mark.slow  # the gpu command's run (a process of its own, 20 s)
def test_gpu_bench_writes_every_part_in_one_json_and_each_table(gpu_run):
    stdout, report, out_dir = gpu_run
    assert {'machine', 'train', 'attention', 'eval', 'peak MiB'} <= set(report)
    for part, name in (('train', 'train_throughput'), ('attention', 'attention'),
                       ('eval', 'eval_throughput')):
        written = json.loads((out_dir / f'{name}.json').read_text())
        assert written['rows'] == report[part]['rows']
    train_rows = [r for r in report['train']['rows'] if r['model'] != 'input pipeline']
    assert sorted((r['dtype'], r['devices'], r['phase']) for r in train_rows) == sorted(
        (dtype, devices, phase) for dtype in ('float32', 'bfloat16') for devices in (1, 2)
        for phase in ('L1 only', 'L1 + contrastive'))
    assert all(r['model'] == 'quickstart (4x32)' and r['images/s'] > 0 for r in train_rows)
    assert report['attention']['paper fwd ms (2080Ti)'] == {
        '100x100 enla': 0.9, '150x150 enla': 1.6, '100x100 exact': 42.8, '150x150 exact': 107.2}
    assert [(r['size'], r['attention']) for r in report['attention']['rows']] == [
        ('16x16', 'enla'), ('16x16', 'exact')]
    assert [(r['lr size'], r['sr size'], r['dtype']) for r in report['eval']['rows']] == [
        ('32x24', '64x48', 'float32'), ('32x24', '64x48', 'bfloat16')]
    assert '| 32x24 | 64x48 | bfloat16 |' in stdout
    # CPU: no device memory statistics, XLA's estimate instead.
    assert report['peak MiB'] is None
    for row in report['attention']['rows']:
        assert row['peak MiB'] is None and row['fwd MiB'] > 0 and row['fwd+bwd MiB'] > 0
    for row in train_rows + report['eval']['rows']:
        assert row['peak MiB'] is None and row['MiB'] > 0


@pytest.mark.slow  # the gpu command's run (a process of its own, 20 s)
def test_train_flops_match_a_hand_count_of_the_convolutions(gpu_run):
    _, report, _ = gpu_run
    rows = {(r['dtype'], r['devices'], r['phase']): r for r in report['train']['rows']
            if 'dtype' in r}
    # Backward: input and weight gradients, twice the forward; the step is ~3x the forward.
    hand_count = 3 * quickstart_conv_gflop(batch=2, lr_patch=24)
    for (dtype, devices, phase), row in rows.items():
        assert 1 / 1.5 < row['GFLOP/step'] / hand_count < 1.5, (dtype, devices, phase)
        # The whole step's count, whatever the devices it is split over.
        one_device = rows[(dtype, 1, phase)]['GFLOP/step']
        assert row['GFLOP/step'] == pytest.approx(one_device, rel=0.1)
        if phase == 'L1 only':
            # The step compiled for timing counts the contrastive branch that this phase skips.
            assert row['GFLOP/step'] < rows[(dtype, devices, 'L1 + contrastive')]['GFLOP/step']


@pytest.mark.slow  # the gpu command's run (a process of its own, 20 s)
def test_train_flop_rate_and_share_of_the_matmul_peak(gpu_run):
    _, report, _ = gpu_run
    peaks = report['train']['matmul peak GFLOP/s (one device)']
    assert set(peaks) == {'float32', 'bfloat16'} and min(peaks.values()) > 0
    for row in (r for r in report['train']['rows'] if 'dtype' in r):
        assert row['GFLOP/s'] == pytest.approx(row['GFLOP/step'] * row['steps/s'])
        assert row['matmul peak GFLOP/s'] == pytest.approx(peaks[row['dtype']] * row['devices'])
        assert row['% of matmul peak'] == pytest.approx(
            100 * row['GFLOP/s'] / row['matmul peak GFLOP/s'])
