"""enlcn_jax.storage.files: the cause of an error in a few words for every kind of error, the
errno a `WriteError` keeps, and an append that the system takes in pieces."""

import errno
import os

import pytest

from enlcn_jax.storage import files

NO_SPACE = 'no space left on the device'


@pytest.mark.parametrize('error, expected', [
    (OSError(errno.ENOSPC, 'disk full'), NO_SPACE),                  # by errno, any wording
    (ValueError(f'orbax: {os.strerror(errno.ENOSPC)}\nretry'), NO_SPACE),  # by message, any type
    (OSError(errno.EACCES, 'Permission denied'), 'Permission denied'),  # strerror of an OSError
    (OSError('an OSError without errno'), 'an OSError without errno'),
    (RuntimeError('first line\nsecond line'), 'first line'),
    (RuntimeError(), 'RuntimeError'),                                # no message: the type
])
def test_reason_is_the_cause_in_a_few_words(error, expected):
    assert files.reason(error) == expected


def test_a_write_error_names_the_path_and_keeps_the_errno_of_an_os_error(tmp_path):
    from_os = files.write_error(tmp_path / 'a.png', OSError(errno.EACCES, 'Permission denied'))
    assert str(from_os) == f'cannot write {tmp_path / "a.png"}: Permission denied'
    assert from_os.errno == errno.EACCES
    from_other = files.write_error('b.json', RuntimeError('encoder failed'))
    assert str(from_other) == 'cannot write b.json: encoder failed'
    assert from_other.errno is None


def test_an_append_written_in_pieces_is_whole(tmp_path, monkeypatch):
    """`os.write` may write fewer bytes than asked; the rest is written by further calls."""
    real, calls = os.write, []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) > 50:
            raise AssertionError('append_line does not advance through the line')
        return real(fd, data[:3])

    path = tmp_path / 'metrics.jsonl'
    monkeypatch.setattr(os, 'write', write)
    files.append_line(path, '{"step": 12}')
    monkeypatch.undo()
    assert path.read_text() == '{"step": 12}\n'
    assert calls[:3] == [13, 10, 7]


def test_a_new_append_target_is_readable_by_all_and_executable_by_none(tmp_path):
    old = os.umask(0)
    try:
        files.append_line(tmp_path / 'log.jsonl', '{}')
    finally:
        os.umask(old)
    assert (tmp_path / 'log.jsonl').stat().st_mode & 0o777 == 0o644
