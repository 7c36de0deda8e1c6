"""Atomic outputs: a write that fails half-way leaves the previous file, one line names it."""

import errno
import os

import pytest

from enlcn_jax.storage import files


def fail_after(monkeypatch, written: int):
    """`os.write` writes `written` bytes of its first call, then fails with ENOSPC."""
    real = os.write
    calls = []

    def write(fd, data):
        if not calls:
            calls.append(len(data))
            return real(fd, data[:written])
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'write', write)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / 'config.json'
    files.write_text(path, 'old')

    def full(fd):  # the data is in the temporary file, the disk cannot take it
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(files.WriteError) as info:
        files.write_text(path, 'new' * 1000)
    assert str(info.value) == f'cannot write {path}: no space left on the device'
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['config.json']


def test_a_write_completes_by_renaming(tmp_path):
    path = tmp_path / 'sub' / 'a.json'
    files.write_text(path, 'first')
    files.write_text(path, 'second')
    assert path.read_text() == 'second' and os.listdir(path.parent) == ['a.json']


def test_an_exception_of_the_writer_removes_the_temporary_and_passes_through(tmp_path):
    path = tmp_path / 'plot.png'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='writer bug'):
        with files.atomic_path(path) as temporary:
            assert temporary.parent == tmp_path and temporary.suffix == '.png'
            temporary.write_bytes(b'half')
            raise RuntimeError('writer bug')
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['plot.png']


def test_an_append_failing_half_way_is_cut_back(tmp_path, monkeypatch):
    path = tmp_path / 'metrics.jsonl'
    files.append_line(path, '{"step": 1}')
    fail_after(monkeypatch, 5)
    with pytest.raises(files.WriteError, match=f'^cannot write {path}: no space left'):
        files.append_line(path, '{"step": 2, "train/loss": 0.25}')
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'
    files.append_line(path, '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_markdown_table_writes_a_header_a_separator_and_one_line_per_row():
    table = files.markdown_table(['dataset', 'PSNR (dB)', 'images'],
                                 [['Set5', '33.67', 5], ['B100', '-', 0]])
    assert table == ('| dataset | PSNR (dB) | images |\n'
                     '|---|---|---|\n'
                     '| Set5 | 33.67 | 5 |\n'
                     '| B100 | - | 0 |')
    assert files.markdown_table(['a'], []) == '| a |\n|---|'
    with pytest.raises(ValueError, match='a markdown row of 2 cells under 3 columns'):
        files.markdown_table(['a', 'b', 'c'], [[1, 2]])
