"""Shared test fixtures: paths to ../shared and the PyTorch reference outputs."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / 'shared'
FIXTURE = SHARED / 'fixtures' / 'pytorch_reference.npz'
BENCHMARK = SHARED / 'data' / 'benchmark'


@pytest.fixture(scope='session')
def reference():
    """The authors' PyTorch outputs (see ../shared/fixtures/README.md)."""
    if not FIXTURE.exists():
        pytest.skip(f'{FIXTURE} not found')
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def state_dict(reference, prefix):
    """The PyTorch state_dict stored under `<prefix>/param/`."""
    head = f'{prefix}/param/'
    return {k[len(head):]: v for k, v in reference.items() if k.startswith(head)}


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
