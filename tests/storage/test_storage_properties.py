"""Properties of storage for all inputs (hypothesis; settings pinned in tests/conftest.py):
checksums verify what they were computed on and reject any one-byte change; a write
interrupted at any point leaves the old file or the new one; a failed append leaves the file."""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from enlcn_jax.storage import checkpoints, files

REPO = Path(__file__).resolve().parents[2]

# --- checksums -------------------------------------------------------------------------------

names = st.sampled_from(['kernel', 'bias', 'scale', 'step', 'head', 'body'])
leaves = st.builds(
    lambda shape, dtype, seed: np.random.default_rng(seed).integers(0, 256, (*shape, np.dtype(
        dtype).itemsize), dtype=np.uint8).view(dtype).reshape(shape),
    st.lists(st.integers(1, 3), min_size=0, max_size=3),
    st.sampled_from(['float32', 'float16', 'int64', 'uint8', 'int32']), st.integers(0, 2**32 - 1))
trees = st.dictionaries(names, st.one_of(leaves, st.dictionaries(names, leaves, min_size=1,
                                                                 max_size=3)),
                        min_size=1, max_size=4)


def flat(tree, prefix=()):
    """`[(keys, leaf)]` of a nested dict, depth first."""
    return [item for key, value in tree.items()
            for item in (flat(value, prefix + (key,)) if isinstance(value, dict)
                         else [(prefix + (key,), value)])]


@hypothesis.given(trees, st.data())
def test_checksums_verify_their_tree_and_reject_any_one_byte_change(tree, data):
    saved = checkpoints.checksums(tree)
    assert len(saved) == len(flat(tree))
    checkpoints.verify_checksums(tree, saved, Path('ckpt'))
    # A copy in another memory layout (column-major) holds the same data.
    checkpoints.verify_checksums(jax.tree_util.tree_map(np.asfortranarray, tree), saved,
                                 Path('ckpt'))
    keys, leaf = data.draw(st.sampled_from(flat(tree)))
    position = data.draw(st.integers(0, leaf.nbytes - 1))
    damaged_leaf = leaf.copy()
    damaged_leaf.reshape(-1).view(np.uint8)[position] ^= data.draw(st.integers(1, 255))
    damaged = replaced(tree, keys, damaged_leaf)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.verify_checksums(damaged, saved, Path('ckpt'))
    assert ''.join(f'[{key!r}]' for key in keys) in str(error.value)


def replaced(tree, keys, leaf):
    """`tree` with the leaf at `keys` replaced (a new dict; `tree` is unchanged)."""
    head, *rest = keys
    return {**tree, head: replaced(tree[head], rest, leaf) if rest else leaf}


# --- atomic writes, interrupted --------------------------------------------------------------

class Killed(BaseException):
    """A stop that is no `Exception` (as Ctrl-C): nothing may catch it half-way."""


STAGES = ('write', 'flush', 'fsync', 'before replace', 'after replace')
contents = st.binary(max_size=64)


class Interruption:
    """Fails a `files.write_bytes` at `stage`: a write writes `written` bytes of its data to the
    temporary file (to the disk) and then raises; the other stages raise before (or, 'after
    replace', after) the call. Raises `error`."""

    def __init__(self, stage: str, written: int, error: BaseException):
        self.stage, self.written, self.error = stage, written, error

    @contextlib.contextmanager
    def patched(self):
        real_open, real_fsync, real_replace = open, os.fsync, os.replace
        interruption = self

        class File:
            def __init__(self, *args):
                self.file = real_open(*args)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def fileno(self):
                return self.file.fileno()

            def write(self, data):
                if interruption.stage == 'write':
                    self.file.write(data[:interruption.written])
                    self.file.flush()
                    raise interruption.error
                return self.file.write(data)

            def flush(self):
                if interruption.stage == 'flush':
                    raise interruption.error
                self.file.flush()

        def fsync(fd):
            if self.stage == 'fsync':
                raise self.error
            real_fsync(fd)

        def replace(src, dst):
            if self.stage == 'before replace':
                raise self.error
            real_replace(src, dst)
            if self.stage == 'after replace':
                raise self.error

        with mock.patch.object(files, 'open', File, create=True), \
                mock.patch.object(files.os, 'fsync', fsync), \
                mock.patch.object(files.os, 'replace', replace):
            yield


@hypothesis.given(st.one_of(st.none(), contents), contents, st.sampled_from(STAGES), st.data(),
                  st.sampled_from(['no space', 'killed']))
def test_an_interrupted_write_leaves_the_old_file_or_the_new_one(old, new, stage, data, kind):
    written = data.draw(st.integers(0, len(new)))
    error = OSError(errno.ENOSPC, 'No space left on device') if kind == 'no space' else Killed()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'out.json'
        if old is not None:
            path.write_bytes(old)
        with Interruption(stage, written, error).patched():
            with pytest.raises(files.WriteError if kind == 'no space' else Killed):
                files.write_bytes(path, new)
        now = path.read_bytes() if path.exists() else None
        # The new file only once it is complete and renamed into place; else the old one.
        assert now == (new if stage == 'after replace' else old)
        assert os.listdir(folder) == ([] if now is None else ['out.json'])  # no temporary left


def test_every_interruption_point_is_reached_by_a_write():
    """The interruption points of the property above are real: a plain write reaches each."""
    seen = set()
    for stage in STAGES:
        with tempfile.TemporaryDirectory() as folder:
            with Interruption(stage, 0, Killed()).patched(), contextlib.suppress(Killed):
                files.write_bytes(Path(folder) / 'out', b'data')
                seen.add(stage)  # not interrupted: the stage never ran
    assert not seen


WRITER = '''
import sys
from enlcn_jax.storage import files
path, size = sys.argv[1], int(sys.argv[2])
payloads = [bytes([65 + i]) * size for i in range(4)]
files.write_bytes(path, payloads[0])
print('ready', flush=True)
i = 0
while True:
    i = (i + 1) % 4
    files.write_bytes(path, payloads[i])
'''


@hypothesis.settings(max_examples=6)
@hypothesis.given(st.floats(0, 0.05))
def test_a_killed_writer_leaves_one_whole_file(delay):
    """A process that rewrites a file in a loop, killed (SIGKILL) at a chosen moment, leaves
    one of the files it wrote whole: 256 KiB of one letter."""
    size = 256 * 1024
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'out.bin'
        env = {**os.environ, 'PYTHONPATH': str(REPO)}
        writer = subprocess.Popen([sys.executable, '-c', WRITER, str(path), str(size)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline() == 'ready\n'
            time.sleep(delay)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
        data = path.read_bytes()
        assert len(data) == size and data == data[:1] * size


# --- appends ---------------------------------------------------------------------------------

@hypothesis.given(st.text(max_size=30), st.text(max_size=30), st.data())
def test_a_failed_append_leaves_the_file_as_it_was(before, line, data):
    encoded = (line + '\n').encode()
    written = data.draw(st.integers(0, len(encoded) - 1))
    real_write, calls = os.write, []

    def write(fd, chunk):  # writes `written` bytes, then the disk is full
        calls.append(chunk)
        if len(calls) == 1 and written:
            return real_write(fd, chunk[:written])
        raise OSError(errno.ENOSPC, 'No space left on device')

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'metrics.jsonl'
        path.write_text(before)
        with mock.patch.object(files.os, 'write', write), pytest.raises(files.WriteError):
            files.append_line(path, line)
        assert path.read_text() == before
        files.append_line(path, line)
        assert path.read_text() == before + line + '\n'


# --- markdown tables -------------------------------------------------------------------------

cells = st.one_of(st.text(alphabet='ab 0.-+x_', min_size=1, max_size=6).map(str.strip).filter(bool),
                  st.integers(), st.floats(allow_nan=False, allow_infinity=False))


@hypothesis.given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.text(alphabet='abc ', min_size=1, max_size=5).map(str.strip).filter(bool),
             min_size=n, max_size=n),
    st.lists(st.lists(cells, min_size=n, max_size=n), max_size=4))))
def test_a_markdown_table_reads_back_as_its_header_and_cells(table):
    """Split at the pipes, each line gives back its cells (`str` of each), under the header and
    the separator row of as many columns; a row of another length is refused."""
    columns, rows = table
    lines = files.markdown_table(columns, rows).split('\n')
    read = [[cell.strip() for cell in line.split('|')[1:-1]] for line in lines]
    assert read[0] == list(columns)
    assert read[1] == ['---'] * len(columns)
    assert read[2:] == [[str(cell) for cell in row] for row in rows]
    with pytest.raises(ValueError, match=f'{len(columns) + 1} cells under {len(columns)} columns'):
        files.markdown_table(columns, [*rows, [*columns, 'extra']])
