"""The benchmark command runs and writes its table as JSON (timings themselves are not tested)."""

import json
import subprocess
import sys

from conftest import REPO


def bench(command: str, out_dir, *args: str) -> tuple[str, dict]:
    """Runs `python -m enlcn_jax.bench COMMAND ARGS --out OUT_DIR`: `(stdout, the JSON written)`."""
    result = subprocess.run([sys.executable, '-m', 'enlcn_jax.bench', command, *args, '--out',
                             str(out_dir)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((out_dir / f'{command}.json').read_text())


def test_attention_bench_writes_rows_for_both_attentions_and_the_growth(tmp_path):
    stdout, report = bench('attention', tmp_path, '--sizes', '8,12', '--channels', '16', '--m',
                           '8', '--repeats', '1')
    assert [(r['size'], r['attention']) for r in report['rows']] == [
        ('8x8', 'enla'), ('8x8', 'exact'), ('12x12', 'enla'), ('12x12', 'exact')]
    assert all(r['fwd ms'] > 0 and r['fwd+bwd ms'] > 0 for r in report['rows'])
    assert report['growth']['positions ratio'] == 144 / 64
    assert '| 12x12 | exact |' in stdout


def test_contrastive_bench_writes_forward_and_backward_times(tmp_path):
    _, report = bench('contrastive', tmp_path, '--sizes', '12', '--batch', '2', '--d', '8',
                      '--repeats', '1')
    (row,) = report['rows']
    assert row['size'] == '12x12' and row['batch'] == 2 and row['fwd+bwd ms'] > 0
