"""How much memory a compiled program needs and how much this process may still use.

`compiled_bytes` is XLA's estimate of a compiled program (inference's automatic tiling and the
benchmarks use it); `free_memory_budget` is the share of the free memory a forward may take: on
an accelerator from the device's own statistics, on CPU from the least of the host's available
memory, the cgroup's remaining limit and the address space left under `RLIMIT_AS`.
"""

from __future__ import annotations

import os
import resource

import jax

# Fraction of the free memory a forward's XLA estimate may take. On CPU the estimate leaves out
# the runtime's own allocations: a whole-image forward was measured to reserve about twice its
# estimate in address space (docs/probes.md), so half of the device fraction.
DEVICE_MEMORY_FRACTION = 0.8
HOST_MEMORY_FRACTION = 0.4


def compiled_bytes(compiled: jax.stages.Compiled) -> int | None:
    """XLA's estimate of a compiled program's memory: arguments + outputs + temporaries; None
    where the backend gives no memory analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes)


def _read_int(path: str | os.PathLike) -> int | None:
    """The integer a one-value file (`/sys/fs/cgroup/memory.max`, ...) holds; None where it is
    missing, unreadable or not a number (`max`: no limit)."""
    try:
        with open(path, encoding='ascii') as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _kib_field(path: str | os.PathLike, field: str) -> int | None:
    """Bytes of a `Field:  123 kB` line of a /proc file (`MemAvailable` of /proc/meminfo,
    `VmSize` of /proc/self/status); None where the file or the line is missing."""
    try:
        with open(path, encoding='ascii') as f:
            for line in f:
                if line.startswith(f'{field}:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_available_bytes(meminfo: str | os.PathLike = '/proc/meminfo') -> int | None:
    """The host's available memory (`MemAvailable`)."""
    return _kib_field(meminfo, 'MemAvailable')


def cgroup_free_bytes(root: str | os.PathLike = '/sys/fs/cgroup') -> int | None:
    """Memory left under the process's cgroup limit: cgroup v2 `memory.max - memory.current`,
    else v1 `memory/memory.limit_in_bytes - memory/memory.usage_in_bytes`; None without a limit."""
    for limit, usage in (('memory.max', 'memory.current'),
                         ('memory/memory.limit_in_bytes', 'memory/memory.usage_in_bytes')):
        limit_bytes, usage_bytes = _read_int(f'{root}/{limit}'), _read_int(f'{root}/{usage}')
        if limit_bytes is not None and usage_bytes is not None:
            return max(0, limit_bytes - usage_bytes)
    return None


def address_space_free_bytes(status: str | os.PathLike = '/proc/self/status') -> int | None:
    """Address space left under `RLIMIT_AS` (`ulimit -v`): the soft limit minus the process's
    `VmSize`; None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    size = _kib_field(status, 'VmSize')
    if limit == resource.RLIM_INFINITY or size is None:
        return None
    return max(0, limit - size)


def free_memory_budget() -> int | None:
    """80 % of this process's first local device's free memory; on CPU, 40 % of the least of
    the host's available memory, the memory left under the cgroup limit and the address space
    left under `RLIMIT_AS`. None where none of them is known."""
    stats = jax.local_devices()[0].memory_stats()
    if stats and 'bytes_limit' in stats:
        return int(DEVICE_MEMORY_FRACTION * (stats['bytes_limit'] - stats.get('bytes_in_use', 0)))
    known = [free for free in (host_available_bytes(), cgroup_free_bytes(),
                               address_space_free_bytes()) if free is not None]
    return int(HOST_MEMORY_FRACTION * min(known)) if known else None
