"""enlcn_jax.evaluation.memory: what XLA's estimate adds up, free memory never below 0, a device
that reports no usage, and the readers' default files."""

import types
from pathlib import Path

import pytest

from enlcn_jax.evaluation import memory


def test_compiled_bytes_is_arguments_plus_outputs_plus_temporaries():
    analysis = types.SimpleNamespace(argument_size_in_bytes=1000, output_size_in_bytes=300,
                                     temp_size_in_bytes=20)
    compiled = types.SimpleNamespace(memory_analysis=lambda: analysis)
    assert memory.compiled_bytes(compiled) == 1320
    assert memory.compiled_bytes(types.SimpleNamespace(memory_analysis=lambda: None)) is None


def test_a_cgroup_over_its_limit_has_no_free_memory(tmp_path):
    (tmp_path / 'memory.max').write_text('1000\n')
    (tmp_path / 'memory.current').write_text('1500\n')
    assert memory.cgroup_free_bytes(tmp_path) == 0


def test_an_address_space_over_its_limit_has_none_free(tmp_path, monkeypatch):
    status = tmp_path / 'status'
    status.write_text('Name:\tpython\nVmSize:\t    2048 kB\n')
    monkeypatch.setattr(memory.resource, 'getrlimit', lambda _: (1024 * 1024, -1))
    assert memory.address_space_free_bytes(status) == 0


def test_a_device_that_reports_no_usage_offers_80_percent_of_its_limit(monkeypatch):
    device = types.SimpleNamespace(memory_stats=lambda: {'bytes_limit': 1000})
    monkeypatch.setattr(memory.jax, 'local_devices', lambda: [device])
    assert memory.free_memory_budget() == 800


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='needs Linux /proc')
def test_the_readers_default_to_this_process_s_proc_files(monkeypatch):
    assert memory.host_available_bytes() > 0           # /proc/meminfo
    monkeypatch.setattr(memory.resource, 'getrlimit', lambda _: (1 << 60, -1))
    assert 0 < memory.address_space_free_bytes() < 1 << 60   # /proc/self/status
