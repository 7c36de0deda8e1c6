"""Results that accumulate: one JSON file per finished run (or cost measurement) in a workdir.

A record is stored under the digest of its *identity*, everything that decides its numbers: for
a run the variant as written, the full training config it resolves to, the fingerprint of the
code of every function it uses (`registry.source_fingerprint`), the package version, the task
and its version, the seed and the steps. The same identity is never trained twice; anything
that changes one of these (an edited function, another budget, a new version of a task) is a
different identity, so its results are kept apart instead of being reused or mixed.

    <workdir>/runs/<digest>.json    {'identity': {...}, 'result': {...}, 'ledger': {...}}
    <workdir>/costs/<digest>.json   {'identity': {...}, 'result': {...}, 'ledger': {...}}

Every file is written atomically (`files.write_text`): a kill or a full disk leaves the records
written before intact, and a record is either whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import flax
import jax

import enlcn_jax
from enlcn_jax.storage import files

KINDS = ('runs', 'costs')


def digest(identity: dict) -> str:
    """The 20-hex-digit SHA-256 of `identity` as canonical JSON (sorted keys)."""
    text = json.dumps(identity, sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def git_commit() -> str | None:
    """The commit of the package's checkout (with `+dirty` for uncommitted changes), or None
    outside a git checkout."""
    root = Path(enlcn_jax.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ('+dirty' if dirty else '')


def ledger() -> dict:
    """Where a record was made: git commit, package / jax / flax versions, device, date."""
    return {'commit': git_commit(), 'enlcn_jax': enlcn_jax.__version__, 'jax': jax.__version__,
            'flax': flax.__version__, 'python': sys.version.split()[0],
            'device': jax.devices()[0].device_kind, 'date': time.strftime('%Y-%m-%d %H:%M:%S')}


class ResultStore:
    """The records of one workdir (see the module docstring).

    Args:
      workdir: the leaderboard's workdir; `runs/` and `costs/` are made inside on the first put.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)

    def path(self, kind: str, identity: dict) -> Path:
        if kind not in KINDS:
            raise ValueError(f'unknown record kind {kind!r}; known: {KINDS}')
        return self.workdir / kind / f'{digest(identity)}.json'

    def get(self, kind: str, identity: dict) -> dict | None:
        """The stored result of `identity`, or None when there is none (or it cannot be read:
        `records` reports such files)."""
        try:
            record = json.loads(self.path(kind, identity).read_text())
        except (OSError, ValueError):
            return None
        return record['result'] if record.get('identity') == _canonical(identity) else None

    def put(self, kind: str, identity: dict, result: dict, record_ledger: dict) -> Path:
        """Stores `result` under `identity` atomically.

        Raises:
          files.WriteError: the record cannot be written (one line naming the path); earlier
            records are untouched.
        """
        record = {'identity': identity, 'result': result, 'ledger': record_ledger}
        return files.write_text(self.path(kind, identity),
                                json.dumps(record, indent=1, sort_keys=True, default=str))

    def records(self, kind: str) -> Iterator[dict]:
        """Every readable record of `kind`; an unreadable file is named on stderr and skipped
        (running again recomputes it)."""
        folder = self.workdir / kind
        for path in sorted(folder.glob('*.json')) if folder.is_dir() else ():
            try:
                record = json.loads(path.read_text())
                record['identity'], record['result']  # pylint: disable=pointless-statement
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f'skipping the unreadable record {path}: {type(e).__name__}: {e}',
                      file=sys.stderr)
                continue
            yield record


def _canonical(identity: dict) -> Any:
    """`identity` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(identity, default=str))
