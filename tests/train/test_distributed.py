"""Two processes, one model: `jax.distributed` training on this machine equals one process,
validates, checkpoints and resumes like it, and a dead process ends the other in bounded time.

The processes of each test start before the work of this process that does not need them (the
one-process run; the other test: `START_EARLY`), which runs while they do.
"""

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, cli_overrides, tiny_config
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop
from enlcn_jax.train import processes as processes_lib

# The tiny config with the contrastive loss on from step 1, a checkpoint every 2 steps (off the
# 3-step epoch) and a validation every epoch: 6 steps, or 3 and then 3 more after a resume.
OVERRIDES = dict(train__contrastive__start_epoch=0, train__checkpoint_every_steps=2)
HEARTBEAT_S = 10
START_EARLY = ('failing_pair',)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def start_two(workdir, env, *, process_1_args=(), **overrides) -> list[subprocess.Popen]:
    """Processes 0 and 1 of `train.py` on `workdir` (`process_1_args` added to process 1's)."""
    address = f'localhost:{free_port()}'
    return [subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(workdir), *cli_overrides(**{**OVERRIDES, **overrides}), '--config.distributed=True',
         f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}',
         f'--heartbeat_timeout={HEARTBEAT_S}', *(process_1_args if i == 1 else ())],
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


def exit_clock(process: subprocess.Popen) -> threading.Thread:
    """A thread that waits for `process`, then sets `process.exit_time` (`time.time()`)."""
    def wait():
        process.wait()
        process.exit_time = time.time()
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope='module')
def failing_pair(tmp_path_factory, env):
    """`(the two processes of test_an_error_in_one_process_ends_both_in_bounded_time, their
    exit clocks, their start time)`, started (`START_EARLY`): process 1's validation folder is
    missing."""
    start = time.time()
    processes = start_two(tmp_path_factory.mktemp('failing'), env, process_1_args=(
        '--config.data.val_source=folder', '--config.data.val_hr_dir=/no/such/dir'))
    yield processes, [exit_clock(process) for process in processes], start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_two_processes_validate_resume_and_stop_together(tmp_path, env):
    one, two = tmp_path / 'one', tmp_path / 'two'
    # Steps 1-3 in two processes: a checkpoint at 2 and 3 (the end), a validation at 3; steps
    # 1-6 in this process meanwhile.
    processes = start_two(two, env, train__epochs=1)
    loop.train_and_evaluate(tiny_config(**OVERRIDES), one)
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert 'JAX process 1 / 2' in outputs[1][1]
    assert checkpoints.latest_manager(two, read_only=True).all_steps() == [2, 3]

    # Resumed for many epochs, validating and saving at 6 and 12; once step 8 is logged and step
    # 6's save is finished (its barriers passed: a process killed inside one aborts the other in
    # the runtime, the README's stated limit), process 1 is killed while process 0 trains (in
    # collectives with it).
    processes = start_two(two, env, train__epochs=200, train__eval_every_epochs=2,
                          train__checkpoint_every_steps=6)
    deadline = time.time() + 300
    while 8 not in (records(two) if (two / 'metrics.jsonl').exists() else {}) or \
            6 not in checkpoints.latest_manager(two, read_only=True).all_steps():
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


def test_an_error_in_one_process_ends_both_in_bounded_time(failing_pair):
    """Process 1 fails (its validation folder is missing) while process 0 starts training: it
    exits at once with its FATAL line, instead of waiting in `jax.distributed`'s shutdown for
    process 0, which waits in a collective for it."""
    processes, clocks, start = failing_pair
    _, stderr = processes[1].communicate(timeout=60)
    clocks[1].join()
    assert processes[1].exit_time - start < 60
    assert processes[1].returncode == 1, stderr[-3000:]
    fatal = [line for line in stderr.splitlines() if line.startswith('FATAL')]
    assert fatal == ["FATAL process 1 of 2: invalid config: config.data.val_hr_dir='/no/such/dir' "
                     'is not a directory (data.val_source=folder needs HR images)'], stderr[-3000:]
    processes[0].communicate(timeout=3 * HEARTBEAT_S + 60)
    clocks[0].join()
    assert processes[0].exit_time - processes[1].exit_time < 3 * HEARTBEAT_S + 60
    print(f'both processes exited {processes[0].exit_time - start:.1f} s after the start')
    assert processes[0].returncode != 0


def start_mismatched(workdir, env, process_args: list[list[str]]) -> list[subprocess.Popen]:
    """Two `train.py` processes on `workdir` with per-process flags (`process_args[i]`)."""
    address = f'localhost:{free_port()}'
    return [subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir',
         str(workdir), *cli_overrides(**OVERRIDES), '--config.distributed=True',
         f'--coordinator_address={address}', '--num_processes=2',
         f'--heartbeat_timeout={HEARTBEAT_S}', '--startup_timeout=30', *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in process_args]


def fatal_lines(processes: list[subprocess.Popen]) -> list[list[str]]:
    """Each process's FATAL lines once it exited (within a minute)."""
    lines = []
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, stderr[-3000:]
        lines.append([line for line in stderr.splitlines() if line.startswith('FATAL')])
    return lines


def test_processes_with_different_configs_stop_before_anything_is_written(tmp_path, env):
    start = time.time()
    processes = start_mismatched(tmp_path / 'w', env, [
        ['--process_id=0'], ['--process_id=1', '--config.train.lr=0.5']])
    why = ('the processes run different configs: process 1 differs from process 0 in '
           'config.train.lr: 0.001 -> 0.5: start every process with the same command')
    assert fatal_lines(processes) == [[f'FATAL process 0 of 2: {why}'],
                                      [f'FATAL process 1 of 2: {why}']]
    print(f'both exited {time.time() - start:.1f} s after the start')
    assert not (tmp_path / 'w').exists()


def test_two_processes_given_one_id_both_stop_with_one_line(tmp_path, env):
    processes = start_mismatched(tmp_path / 'w', env, [['--process_id=0'], ['--process_id=0']])
    why = '--process_id=0 was given to 2 processes: give each process its own id, 0 .. 1'
    assert fatal_lines(processes) == [[f'FATAL process 0: {why}']] * 2
    assert not (tmp_path / 'w').exists()


def test_a_process_missing_at_the_start_up_deadline_is_one_line():
    address = f'localhost:{free_port()}'
    with pytest.raises(processes_lib.ProcessMismatchError,
                       match=r'^only 1 of --num_processes=3 processes started within the '
                             r'start-up timeout \(ids \[0\]\)$'):
        processes_lib.handshake(address, 3, 0, timeout_s=1)
    with pytest.raises(processes_lib.ProcessMismatchError,
                       match=r'^process 2: process 0 did not start at localhost:\d+ within'):
        processes_lib.handshake(address, 3, 2, timeout_s=1)


def test_the_handshake_passes_distinct_ids_and_frees_the_port():
    address = f'localhost:{free_port()}'
    errors = []

    def join(process_id):
        try:
            processes_lib.handshake(address, 3, process_id, timeout_s=20)
        except processes_lib.ProcessMismatchError as e:
            errors.append(e)

    threads = [threading.Thread(target=join, args=(i,)) for i in (2, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    with socket.create_server(('', int(address.rsplit(':', 1)[1]))):
        pass  # the runtime can bind the coordinator's port at once
