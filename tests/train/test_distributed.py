"""Two processes, one model: `jax.distributed` training on this machine equals one process,
validates, checkpoints and resumes like it, and a dead process ends the other in bounded time."""

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import REPO, cli_overrides, tiny_config
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop

# The tiny config with the contrastive loss on from step 1, a checkpoint every 2 steps (off the
# 3-step epoch) and a validation every epoch: 6 steps, or 3 and then 3 more after a resume.
OVERRIDES = dict(train__contrastive__start_epoch=0, train__checkpoint_every_steps=2)
HEARTBEAT_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def start_two(workdir, env, **overrides) -> list[subprocess.Popen]:
    address = f'localhost:{free_port()}'
    return [subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(workdir), *cli_overrides(**{**OVERRIDES, **overrides}), '--config.distributed=True',
         f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}',
         f'--heartbeat_timeout={HEARTBEAT_S}'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


def records(workdir) -> dict[int, dict]:
    """`{step: merged records}` of metrics.jsonl, without the timing values."""
    merged = {}
    for line in (workdir / 'metrics.jsonl').read_text().splitlines():
        record = json.loads(line)
        merged.setdefault(record['step'], {}).update(
            {k: v for k, v in record.items() if not k.endswith('_per_s')})
    return merged


def test_two_processes_validate_resume_and_stop_together(tmp_path, env):
    one, two = tmp_path / 'one', tmp_path / 'two'
    loop.train_and_evaluate(tiny_config(**OVERRIDES), one)

    # Steps 1-3 in two processes: a checkpoint at 2 and 3 (the end), a validation at 3.
    processes = start_two(two, env, train__epochs=1)
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert 'JAX process 1 / 2' in outputs[1][1]
    assert checkpoints.latest_manager(two, read_only=True).all_steps() == [2, 3]

    # Resumed for many epochs, validating and saving at 6 and 12; once step 8 is logged,
    # process 1 is killed while process 0 trains (in collectives with it).
    processes = start_two(two, env, train__epochs=200, train__eval_every_epochs=2,
                          train__checkpoint_every_steps=6)
    deadline = time.time() + 300
    while 8 not in (records(two) if (two / 'metrics.jsonl').exists() else {}):
        assert time.time() < deadline and processes[0].poll() is None, \
            processes[0].communicate()[1][-3000:]
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, stderr = processes[0].communicate(timeout=3 * HEARTBEAT_S + 60)
    print(f'process 0 exited {time.time() - killed:.1f} s after process 1 was killed')
    assert processes[0].returncode != 0
    fatal = [line for line in stderr.splitlines() if line.startswith('FATAL')]
    assert len(fatal) == 1 and fatal[0].startswith('FATAL process 0 of 2: '), stderr[-3000:]
    processes[1].wait()

    # Steps 1-6 logged and validated as by one process.
    expected, got = records(one), {s: r for s, r in records(two).items() if s <= 6}
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step, record in expected.items():
        assert sorted(got[step]) == sorted(record), step
        np.testing.assert_allclose([got[step][k] for k in sorted(record)],
                                   [record[k] for k in sorted(record)], rtol=2e-5, err_msg=step)
    assert [s for s, r in got.items() if 'val/psnr_y' in r] == [3, 6]


def test_an_error_in_one_process_ends_both_in_bounded_time(tmp_path, env):
    """Process 1 fails (its validation folder is missing) while process 0 starts training: it
    exits at once with its FATAL line, instead of waiting in `jax.distributed`'s shutdown for
    process 0, which waits in a collective for it."""
    address = f'localhost:{free_port()}'
    processes = [subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(tmp_path), *cli_overrides(**OVERRIDES), '--config.distributed=True',
         f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}',
         f'--heartbeat_timeout={HEARTBEAT_S}',
         *(['--config.data.val_source=folder', '--config.data.val_hr_dir=/no/such/dir']
           if i == 1 else [])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    start = time.time()
    _, stderr = processes[1].communicate(timeout=60)
    assert processes[1].returncode == 1, stderr[-3000:]
    fatal = [line for line in stderr.splitlines() if line.startswith('FATAL')]
    assert fatal == ["FATAL process 1 of 2: invalid config: config.data.val_hr_dir='/no/such/dir' "
                     'is not a directory (data.val_source=folder needs HR images)'], stderr[-3000:]
    processes[0].communicate(timeout=3 * HEARTBEAT_S + 60)
    print(f'both processes exited {time.time() - start:.1f} s after the start')
    assert processes[0].returncode != 0
