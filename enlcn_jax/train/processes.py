"""Several training processes, one run: each process has its own id, and all run the same
config.

`initialize` is `jax.distributed.initialize` preceded by a start-up handshake of the processes
at the coordinator's address: two processes given one `--process_id`, or processes missing at the
deadline, are one line on every process that is there, instead of a runtime abort or a hang.
`check_same_run` then compares a fingerprint of each process's run (the config, the workdir and
the flags that change what is trained) before anything is placed on a device or written: a
difference is one line on every process naming the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from enlcn_jax.train import workdir as workdir_lib

_HELLO = b'enlcn-jax process '


class ProcessMismatchError(RuntimeError):
    """The processes of one run disagree (ids, config) or did not all start; one line."""


def _read_line(conn: socket.socket, deadline: float) -> str:
    data = b''
    while not data.endswith(b'\n'):
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors='replace').strip()


def _as_client(host: str, port: int, process_id: int, deadline: float) -> None:
    """Sends `process_id` to process 0's handshake and waits for its verdict."""
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise ProcessMismatchError(
                    f'process {process_id}: process 0 did not start at {host}:{port} within the '
                    'start-up timeout (check --coordinator_address and that process 0 runs)'
                    ) from None
            time.sleep(0.2)
    with conn:
        try:
            conn.sendall(_HELLO + f'{process_id}\n'.encode())
            verdict = _read_line(conn, deadline)
        except OSError:
            verdict = ''
    if verdict != 'ok':
        raise ProcessMismatchError(verdict or (
            f'process {process_id}: no answer from process 0 at {host}:{port} (is another run '
            'using this address?)'))


def _as_server(server: socket.socket, num_processes: int, deadline: float) -> None:
    """Process 0: collects every other process's id, answers all with one verdict."""
    clients, ids = [], [0]
    try:
        while len(clients) < num_processes - 1 and time.monotonic() < deadline:
            server.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                line = _read_line(conn, time.monotonic() + 10)
                other = int(line[len(_HELLO):]) if line.startswith(_HELLO.decode()) else None
            except (OSError, ValueError):
                other = None
            if other is None:  # not one of ours
                conn.close()
                continue
            clients.append(conn)
            ids.append(other)
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        out_of_range = sorted({i for i in ids if not 0 <= i < num_processes})
        if duplicates:
            verdict = (f'--process_id={duplicates[0]} was given to {ids.count(duplicates[0])} '
                       'processes: give each process its own id, 0 .. '
                       f'{num_processes - 1}')
        elif out_of_range:
            verdict = (f'--process_id={out_of_range[0]} is outside 0 .. {num_processes - 1} '
                       f'(--num_processes={num_processes})')
        elif len(ids) < num_processes:
            verdict = (f'only {len(ids)} of --num_processes={num_processes} processes started '
                       f'within the start-up timeout (ids {sorted(ids)})')
        else:
            verdict = 'ok'
        for conn in clients:
            try:
                conn.sendall(f'{verdict}\n'.encode())
                conn.settimeout(5.0)
                conn.recv(1)  # the client closes first: the port is free again at once
            except OSError:
                pass
    finally:
        for conn in clients:
            conn.close()
    if verdict != 'ok':
        raise ProcessMismatchError(verdict)


def handshake(coordinator_address: str, num_processes: int, process_id: int,
              timeout_s: float) -> None:
    """Checks, before `jax.distributed` starts, that the `num_processes` processes at
    `coordinator_address` (`HOST:PORT`) all start within `timeout_s` seconds with distinct ids.
    Process 0 listens on the coordinator's port (free again before the runtime binds it); a
    second process given id 0 finds the port taken and joins as a client, so that every process
    learns of the duplicate.

    Raises:
      ProcessMismatchError: a duplicate or out-of-range id, or processes missing at the
        deadline; the same line on every process that takes part.
    """
    host, _, port = coordinator_address.rpartition(':')
    host, port = host.strip('[]') or 'localhost', int(port)
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        try:
            server = socket.create_server(('', port))
        except OSError:
            pass  # taken: another process 0 listens (or the runtime of a running job)
        else:
            with server:
                _as_server(server, num_processes, deadline)
            return
    _as_client(host, port, process_id, deadline)


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, *, heartbeat_timeout_s: int,
               startup_timeout_s: int) -> None:
    """`handshake` (when the address, the count and the id are given: a cluster that assigns
    them needs none), then `jax.distributed.initialize`, CPU collectives through gloo."""
    if None not in (coordinator_address, num_processes, process_id):
        handshake(coordinator_address, num_processes, process_id, startup_timeout_s)
    # CPU processes exchange gradients through gloo (GPUs use NCCL whatever this says).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=startup_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)


def _allgather_bytes(data: bytes) -> list[bytes]:
    """`data` of every process, in process order (every process calls it)."""
    lengths = multihost_utils.process_allgather(np.array([len(data)], np.int64)).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    gathered = multihost_utils.process_allgather(padded).reshape(len(lengths), -1)
    return [gathered[i, :n].tobytes() for i, n in enumerate(lengths)]


def check_same_run(run: dict) -> None:
    """Checks that every process runs the same `run` (JSON-able: the config, the workdir, the
    flags), by comparing a SHA-256 of it across processes; every process calls it, before
    anything else is placed on a device or written.

    Raises:
      ProcessMismatchError: on every process alike, naming for each differing process the keys
        that differ from process 0's and both values.
    """
    if jax.process_count() == 1:
        return
    text = json.dumps(run, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(text).digest()
    digests = multihost_utils.process_allgather(np.frombuffer(digest, np.uint8))
    if (digests == digests[0]).all():
        return
    runs = [workdir_lib.flatten(json.loads(data)) for data in _allgather_bytes(text)]
    differences = []
    for index, other in enumerate(runs[1:], start=1):
        keys = sorted(k for k in set(runs[0]) | set(other) if runs[0].get(k) != other.get(k))
        if keys:
            shown = '; '.join(f'{k}: {runs[0].get(k)!r} -> {other.get(k)!r}' for k in keys[:5])
            more = f' (and {len(keys) - 5} more)' if len(keys) > 5 else ''
            differences.append(f'process {index} differs from process 0 in {shown}{more}')
    raise ProcessMismatchError('the processes run different configs: ' + '; '.join(differences)
                               + ': start every process with the same command')
