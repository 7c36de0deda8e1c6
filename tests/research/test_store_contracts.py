"""Contracts of `research/store.py` checked directly (the leaderboard tests reach it only through
runs): the digest of an identity, the git commit a record is made at, the ledger, and a store's
files (where a record lies, what reads back, what is skipped)."""

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import flax
import jax
import pytest

import enlcn_jax
from enlcn_jax.research import store


def test_the_digest_is_sha256_of_the_sorted_compact_json_cut_to_20_hex_digits():
    identity = {'b': [1, 2], 'a': {'y': 'z', 'x': 1.5}, 'p': Path('/w')}
    text = '{"a":{"x":1.5,"y":"z"},"b":[1,2],"p":"/w"}'
    assert store.digest(identity) == hashlib.sha256(text.encode()).hexdigest()[:20]
    assert store.digest(dict(reversed(identity.items()))) == store.digest(identity)


def git(cwd, *args):
    return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout holding a stand-in package `enlcn_jax/__init__.py`, which the store reads
    as the package's checkout."""
    monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path))
    root = tmp_path / 'repo'
    (root / 'enlcn_jax').mkdir(parents=True)
    init = root / 'enlcn_jax' / '__init__.py'
    init.write_text('')
    monkeypatch.setattr(enlcn_jax, '__file__', str(init))
    return root


def test_the_commit_is_the_checkout_s_head_marked_dirty_only_by_tracked_changes(checkout):
    git(checkout, 'init', '-q')
    git(checkout, 'add', '.')
    git(checkout, 'commit', '-q', '-m', 'one')
    head = git(checkout, 'rev-parse', 'HEAD')
    assert re.fullmatch('[0-9a-f]{40}', head)
    assert store.git_commit() == head
    (checkout / 'untracked.txt').write_text('x')
    assert store.git_commit() == head
    (checkout / 'enlcn_jax' / '__init__.py').write_text('changed = 1\n')
    assert store.git_commit() == head + '+dirty'


def test_the_commit_is_none_outside_a_checkout_or_without_git(checkout, monkeypatch):
    assert store.git_commit() is None
    git(checkout, 'init', '-q')
    git(checkout, 'add', '.')
    git(checkout, 'commit', '-q', '-m', 'one')
    monkeypatch.setenv('PATH', str(checkout / 'no-bin'))
    assert store.git_commit() is None


def test_a_checkout_without_a_commit_or_whose_state_git_cannot_read_has_none(checkout):
    git(checkout, 'init', '-q')
    assert store.git_commit() is None  # no HEAD yet
    git(checkout, 'add', '.')
    git(checkout, 'commit', '-q', '-m', 'one')
    (checkout / '.git' / 'index').write_bytes(b'not an index')
    assert store.git_commit() is None  # HEAD known, uncommitted changes unknown


def test_the_ledger_names_the_commit_the_versions_the_device_and_the_date(monkeypatch):
    monkeypatch.setattr(store, 'git_commit', lambda: 'abc+dirty')
    before = time.time()
    record = store.ledger()
    date = time.mktime(time.strptime(record.pop('date'), '%Y-%m-%d %H:%M:%S'))
    assert int(before) - 1 <= date <= time.time()
    assert record == {'commit': 'abc+dirty', 'enlcn_jax': enlcn_jax.__version__,
                      'jax': jax.__version__, 'flax': flax.__version__,
                      'python': '.'.join(map(str, sys.version_info[:3])),
                      'device': jax.devices()[0].device_kind}


def test_a_record_is_stored_under_its_kind_and_digest_and_reads_back(tmp_path):
    results = store.ResultStore(tmp_path)
    identity = {'seed': 1, 'shape': (2, 3), 'where': tmp_path}
    assert results.get('runs', identity) is None
    path = results.put('runs', identity, {'psnr': 30.5}, {'commit': None})
    assert path == tmp_path / 'runs' / f'{store.digest(identity)}.json'
    assert results.path('runs', identity) == path
    assert json.loads(path.read_text()) == {
        'identity': {'seed': 1, 'shape': [2, 3], 'where': str(tmp_path)},
        'result': {'psnr': 30.5}, 'ledger': {'commit': None}}
    assert results.get('runs', identity) == {'psnr': 30.5}  # tuples and paths as JSON has them
    assert results.get('costs', identity) is None
    assert results.get('runs', {**identity, 'seed': 2}) is None
    assert [r['result'] for r in results.records('runs')] == [{'psnr': 30.5}]
    assert list(results.records('costs')) == []


def test_the_same_record_is_the_same_file_whatever_the_order_of_its_keys(tmp_path):
    results = store.ResultStore(tmp_path)
    result = {'psnr': 30.5, 'ssim': 0.9, 'seconds': 12}
    first = results.put('runs', {'seed': 1}, result, {'jax': '0.1', 'commit': 'abc'}).read_text()
    again = results.put('runs', {'seed': 1}, dict(reversed(result.items())),
                        {'commit': 'abc', 'jax': '0.1'}).read_text()
    assert again == first


def test_an_unknown_kind_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown record kind 'run'; known: \('runs', "
                       r"'costs'\)$"):
        store.ResultStore(tmp_path).path('run', {})


def test_a_file_holding_another_identity_is_not_its_result(tmp_path):
    results = store.ResultStore(tmp_path)
    path = results.put('costs', {'seed': 1}, {'ms': 2.0}, {})
    path.write_text(json.dumps({'identity': {'seed': 3}, 'result': {'ms': 9.0}, 'ledger': {}}))
    assert results.get('costs', {'seed': 1}) is None
    path.write_text('{"identity": {"seed"')
    assert results.get('costs', {'seed': 1}) is None


def test_unreadable_records_are_named_on_stderr_and_skipped_in_path_order(tmp_path, capsys):
    results = store.ResultStore(tmp_path)
    for seed in range(3):
        results.put('runs', {'seed': seed}, {'seed': seed}, {})
    folder = tmp_path / 'runs'
    (folder / 'a-cut.json').write_text('{"identity": ')
    (folder / 'b-list.json').write_text('[1, 2]')
    (folder / 'c-no-result.json').write_text('{"identity": {}}')
    (folder / 'notes.txt').write_text('not a record')
    paths = sorted(p for p in folder.glob('*.json') if not p.name[1:2] == '-')
    assert [r['result'] for r in results.records('runs')] == [
        json.loads(p.read_text())['result'] for p in paths]
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f'skipping the unreadable record {folder / "a-cut.json"}: JSONDecodeError: '
        'Expecting value: line 1 column 14 (char 13)',
        f'skipping the unreadable record {folder / "b-list.json"}: TypeError: list indices must '
        'be integers or slices, not str',
        f"skipping the unreadable record {folder / 'c-no-result.json'}: KeyError: 'result'"]
