"""Contracts of `train/processes.py` checked inside one process: the start-up handshake's verdicts
(threads play the processes, on a free local port), what `initialize` passes on, and
`check_same_run` with `process_allgather` played by threads that meet at a barrier (the
collective's semantics: every process gets every process's array, stacked in process order)."""

import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from enlcn_jax.train import processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def run_together(calls, timeout=15):
    """Runs each `(function, *args)` in its own thread; the error (or None) of each, in order."""
    errors = [None] * len(calls)

    def run(i, function, *args):
        try:
            function(*args)
        except Exception as e:  # pylint: disable=broad-except
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, *call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive()
    return errors


def test_the_handshake_ends_as_soon_as_every_process_is_there():
    address = f'localhost:{free_port()}'
    start = time.monotonic()
    assert run_together([(processes.handshake, address, 3, i, 8) for i in (1, 0, 2)]) == [None] * 3
    assert time.monotonic() - start < 4  # not at the 8 s deadline


def test_missing_processes_are_reported_at_the_deadline_not_later():
    start = time.monotonic()
    with pytest.raises(processes.ProcessMismatchError, match='^only 1 of --num_processes=2'):
        processes.handshake(f'localhost:{free_port()}', 2, 0, 0.4)
    assert time.monotonic() - start < 0.9


def test_a_process_that_starts_more_than_a_second_after_process_0_is_joined():
    address = f'localhost:{free_port()}'

    def late_client():
        time.sleep(1.3)
        processes.handshake(address, 2, 1, 5)

    assert run_together([(processes.handshake, address, 2, 0, 5), (late_client,)]) == [None] * 2


def test_an_id_given_twice_is_the_same_line_on_every_process():
    address = f'localhost:{free_port()}'
    errors = run_together([(processes.handshake, address, 3, i, 5) for i in (0, 2, 2)])
    assert [str(e) for e in errors] == ['--process_id=2 was given to 2 processes: give each '
                                        'process its own id, 0 .. 2'] * 3
    assert all(isinstance(e, processes.ProcessMismatchError) for e in errors)


def test_a_second_process_0_joins_as_a_client_and_learns_of_the_duplicate():
    address = f'localhost:{free_port()}'
    errors = run_together([(processes.handshake, address, 2, 0, 5)] * 2)
    assert [str(e) for e in errors] == ['--process_id=0 was given to 2 processes: give each '
                                        'process its own id, 0 .. 1'] * 2


@pytest.mark.parametrize('wrong', [2, -1])
def test_an_id_outside_the_count_is_named_with_the_range(wrong):
    address = f'[localhost]:{free_port()}'  # brackets as an IPv6 address has them
    errors = run_together([(processes.handshake, address, 2, 0, 5),
                           (processes.handshake, address, 2, wrong, 5)])
    assert [str(e) for e in errors] == [
        f'--process_id={wrong} is outside 0 .. 1 (--num_processes=2)'] * 2


def test_a_connection_that_is_not_a_process_is_ignored():
    port = free_port()
    address = f':{port}'  # no host: localhost
    started = threading.Event()

    def stranger():
        started.wait(10)
        for _ in range(100):
            try:
                with socket.create_connection(('localhost', port), timeout=1) as conn:
                    conn.sendall(b'GET / HTTP/1.0\n')
                    conn.recv(1)  # the server closes it without an answer
                    break
            except OSError:
                threading.Event().wait(0.05)
        processes.handshake(address, 2, 1, 5)

    def server():
        started.set()
        processes.handshake(address, 2, 0, 5)

    assert run_together([(server,), (stranger,)]) == [None, None]


def test_a_listener_that_never_answers_is_named_as_another_run():
    with socket.create_server(('localhost', 0)) as listener:
        port = listener.getsockname()[1]

        def answer_nothing():
            conn, _ = listener.accept()
            conn.recv(100)
            conn.close()

        thread = threading.Thread(target=answer_nothing)
        thread.start()
        with pytest.raises(processes.ProcessMismatchError, match=(
                rf'^process 1: no answer from process 0 at localhost:{port} \(is another run '
                r'using this address\?\)$')):
            processes.handshake(f'localhost:{port}', 2, 1, 5)
        thread.join(10)


def test_a_listener_that_stays_silent_is_no_answer_at_the_deadline():
    with socket.create_server(('localhost', 0)) as listener:
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(processes.ProcessMismatchError, match=r'^process 1: no answer from'):
            processes.handshake(f'localhost:{port}', 2, 1, 0.3)  # accepted by the backlog
        assert time.monotonic() - start < 0.9


def test_a_client_with_no_process_0_is_one_line_at_the_deadline():
    port = free_port()
    with pytest.raises(processes.ProcessMismatchError) as raised:
        processes.handshake(f'localhost:{port}', 2, 1, 0.5)
    assert str(raised.value) == (
        f'process 1: process 0 did not start at localhost:{port} within the start-up timeout '
        '(check --coordinator_address and that process 0 runs)')


def test_a_process_0_that_starts_late_is_joined_at_the_next_retry():
    address = f'localhost:{free_port()}'

    def late_server():
        time.sleep(0.3)
        processes.handshake(address, 2, 0, 5)

    start = time.monotonic()
    assert run_together([(processes.handshake, address, 2, 1, 5), (late_server,)]) == [None] * 2
    assert time.monotonic() - start < 1.0  # retried every 0.2 s


def test_a_hello_in_pieces_is_read_whole_and_strangers_are_ignored():
    port = free_port()
    answers = []

    def others():
        for _ in range(100):  # until process 0 listens
            try:
                socket.create_connection(('localhost', port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        for stranger in (b'\xff\xfe not utf-8\n', b'enlcn-jax process one\n'):
            with socket.create_connection(('localhost', port), timeout=5) as conn:
                conn.sendall(stranger)
                conn.recv(1)
        with socket.create_connection(('localhost', port), timeout=5) as conn:
            conn.sendall(b'enlcn-jax process ')
            time.sleep(0.2)
            conn.sendall(b'1\n')
            answers.append(conn.recv(100))

    errors = run_together([(processes.handshake, f'localhost:{port}', 2, 0, 5), (others,)])
    assert errors == [None, None] and answers == [b'ok\n']


def test_initialize_shakes_hands_only_when_address_count_and_id_are_all_given(monkeypatch):
    calls = []
    monkeypatch.setattr(processes, 'handshake', lambda *args: calls.append(('handshake', args)))
    monkeypatch.setattr(jax.config, 'update', lambda *args: calls.append(('config', args)))
    monkeypatch.setattr(jax.distributed, 'initialize',
                        lambda *args, **kwargs: calls.append(('initialize', args, kwargs)))
    processes.initialize('host:1234', 2, 1, heartbeat_timeout_s=7, startup_timeout_s=9)
    started = ('initialize', ('host:1234', 2, 1),
               {'initialization_timeout': 9, 'heartbeat_timeout_seconds': 7})
    gloo = ('config', ('jax_cpu_collectives_implementation', 'gloo'))
    assert calls == [('handshake', ('host:1234', 2, 1, 9)), gloo, started]
    for missing in range(3):
        args = ['host:1234', 2, 1]
        args[missing] = None
        calls.clear()
        processes.initialize(*args, heartbeat_timeout_s=7, startup_timeout_s=9)
        assert calls == [gloo, ('initialize', tuple(args), started[2])]


class Collective:
    """`process_allgather` for `count` threads, each a process (its id in `local.id`)."""

    def __init__(self, count):
        self.count = count
        self.local = threading.local()
        self.slots = [None] * count
        self.barrier = threading.Barrier(count, timeout=20)

    def process_allgather(self, array):
        self.slots[self.local.id] = np.asarray(array)
        self.barrier.wait()
        gathered = np.stack(self.slots)
        self.barrier.wait()
        return gathered


def check_all(monkeypatch, runs):
    """The error of `check_same_run` on each process, process `i` running `runs[i]`."""
    collective = Collective(len(runs))
    monkeypatch.setattr(processes, 'multihost_utils', collective)
    monkeypatch.setattr(jax, 'process_count', lambda: len(runs))

    def as_process(i):
        collective.local.id = i
        processes.check_same_run(runs[i])

    return run_together([(as_process, i) for i in range(len(runs))])


def test_processes_that_run_the_same_config_pass(monkeypatch):
    run = {'config': {'lr': 1e-3, 'shape': (2, 3)}, 'workdir': '/w'}
    assert check_all(monkeypatch, [run, dict(reversed(run.items())), run]) == [None] * 3


def test_every_differing_process_is_named_with_the_keys_and_both_values(monkeypatch):
    base = {'config': {'lr': 0.001, 'seed': 1, 'data': 'div2k'}, 'workdir': '/w'}
    other = {'config': {'lr': 0.002, 'seed': 1, 'extra': True}, 'workdir': '/w' * 300}
    errors = check_all(monkeypatch, [base, base, other])
    why = ("the processes run different configs: process 2 differs from process 0 in "
           "config.data: 'div2k' -> None; config.extra: None -> True; config.lr: 0.001 -> 0.002; "
           f"workdir: '/w' -> {'/w' * 300!r}: start every process with the same command")
    assert [str(e) for e in errors] == [why] * 3
    assert all(isinstance(e, processes.ProcessMismatchError) for e in errors)


def test_more_than_five_differing_keys_show_the_first_five_and_count_the_rest(monkeypatch):
    base = {f'k{i}': 0 for i in range(8)}
    errors = check_all(monkeypatch, [base, {k: 1 for k in base}, {**base, 'k3': 2}])
    shown = '; '.join(f'k{i}: 0 -> 1' for i in range(5))
    assert str(errors[0]) == (
        f'the processes run different configs: process 1 differs from process 0 in {shown} '
        '(and 3 more); process 2 differs from process 0 in k3: 0 -> 2: start every process '
        'with the same command')
    base = {f'k{i}': 0 for i in range(6)}
    errors = check_all(monkeypatch, [base, {k: 1 for k in base}])
    assert str(errors[0]).endswith('k4: 0 -> 1 (and 1 more): start every process with the '
                                   'same command')
    errors = check_all(monkeypatch, [base, {**base, **{f'k{i}': 1 for i in range(5)}}])
    assert str(errors[0]).endswith('k4: 0 -> 1: start every process with the same command')


def test_identical_runs_pass_whatever_their_digest(monkeypatch):
    """A thousand runs: among them are runs whose digest bytes, read as anything but bytes,
    would not equal themselves (a float NaN)."""
    for seed in range(1000):
        run = {'seed': seed}
        assert check_all(monkeypatch, [run, run]) == [None, None], seed


def test_a_run_holding_values_json_lacks_is_compared_by_their_text(monkeypatch):
    run = {'config': {'feature_map': np.tanh, 'workdir': Path('/w')}}
    assert check_all(monkeypatch, [run, dict(run)]) == [None, None]
    errors = check_all(monkeypatch, [run, {'config': {**run['config'], 'feature_map': np.sin}}])
    assert str(errors[0]) == (
        "the processes run different configs: process 1 differs from process 0 in "
        "config.feature_map: \"<ufunc 'tanh'>\" -> \"<ufunc 'sin'>\": start every process with "
        "the same command")


def test_each_process_is_compared_with_process_0(monkeypatch):
    base = {'a': 1, 'b': 2}
    errors = check_all(monkeypatch, [base, {'b': 2}, {'b': 3}])
    assert str(errors[0]) == (
        'the processes run different configs: process 1 differs from process 0 in a: 1 -> None; '
        'process 2 differs from process 0 in a: 1 -> None; b: 2 -> 3: start every process with '
        'the same command')


def test_one_process_checks_nothing(monkeypatch):
    monkeypatch.setattr(processes, 'multihost_utils', None)  # a gather would fail
    assert processes.check_same_run({'anything': object()}) is None
