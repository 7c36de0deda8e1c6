"""Writing outputs so that nothing is half-written: the one place every output file goes through.

A file is written to a temporary file in its own folder and renamed into place only when it is
complete (`os.replace` is atomic within a file system), so a reader sees either the old file or
the new one, never a mix; a failed write (full disk, no permission, an exception of the writer)
removes the temporary file and leaves what was there before intact. An append (`append_line`)
that fails half-way is cut back to the file's previous length.

Every failure is a `WriteError` whose message names the path and the reason in one line.
`markdown_table` formats the tables the results files and the printed reports share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence


class WriteError(OSError):
    """An output could not be written; the message names it. What was there before is intact."""


def reason(error: BaseException) -> str:
    """The cause of an I/O error in a few words (a library's long message: its first line)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or \
            os.strerror(errno.ENOSPC) in str(error):
        return 'no space left on the device'
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def write_error(path: str | os.PathLike, error: BaseException) -> WriteError:
    """The `WriteError` for a failed write of `path` (keeps the errno of an `OSError`)."""
    written = WriteError(f'cannot write {path}: {reason(error)}')
    written.errno = error.errno if isinstance(error, OSError) else None
    return written


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that pick the format from it
    work), renamed to `path` when the block completes and removed when it raises.

    Missing parent folders are created. Raises `WriteError` for an `OSError` of the block or of
    the rename; other exceptions pass through (the temporary file is removed either way).
    """
    path = Path(path)
    temporary = path.with_name(f'.{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as temporary, open(temporary, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode('utf-8'))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends `line` plus a newline to `path`; a failed append leaves the file as it was."""
    path = Path(path)
    data = (line + '\n').encode('utf-8')
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table: a header row of `columns`, the separator, one line per row.

    Args:
      columns: the header cells.
      rows: one sequence of `len(columns)` cells per row, each written with `str` (format
        numbers before).
    Returns:
      The table's lines joined by newlines, without a trailing newline.
    Raises:
      ValueError: a row whose length is not `len(columns)`.
    """
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f'a markdown row of {len(row)} cells under {len(columns)} columns: '
                             f'{list(row)}')
        lines.append('| ' + ' | '.join(map(str, row)) + ' |')
    return '\n'.join(lines)
