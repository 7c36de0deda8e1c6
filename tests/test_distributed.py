"""Two processes, one model: `jax.distributed` training on this machine equals one process."""

import socket
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import REPO, cli_overrides, run, tiny_config
from enlcn_jax import checkpoints

# Three steps of the tiny config, contrastive loss on, global batch 4, no validation.
OVERRIDES = dict(train__epochs=1, train__contrastive__start_epoch=0, data__val_source='none')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def params(workdir):
    _, variables, _ = checkpoints.load_model(workdir)
    return jax.tree.leaves(variables['params'])


def test_two_processes_train_the_model_one_process_trains(tmp_path, env):
    one, two = tmp_path / 'one', tmp_path / 'two'
    run(['train.py', '--config', 'configs/quickstart.py', '--workdir', str(one),
         *cli_overrides(**OVERRIDES)], env)
    address = f'localhost:{free_port()}'
    start = time.perf_counter()
    processes = [subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(two),
         *cli_overrides(**OVERRIDES), '--config.distributed=True',
         f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    print(f'two-process run: {time.perf_counter() - start:.1f} s')
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert 'JAX process 1 / 2' in outputs[1][1]
    assert checkpoints.latest_manager(two, read_only=True).latest_step() == 3
    for a, b in zip(params(one), params(two)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())
    assert tiny_config().train.steps_per_epoch == 3
