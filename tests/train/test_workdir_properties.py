"""Properties of the resume check's config comparison for all configs (hypothesis; settings
pinned in tests/conftest.py)."""

import importlib
import json

import hypothesis
from hypothesis import strategies as st

from enlcn_jax.train import workdir

# Keys of the compared configs: a few free ones, and the ones the comparison treats specially.
SAFE = workdir.SAFE_TO_CHANGE
KEYS = ['model.n_feats', 'model.feature_map', 'train.lr', 'train.contrastive.weight', 'data.scale',
        'seed', *workdir.ADDED_KEYS, *SAFE[:6], 'distributed.num_processes', 'ablation.name',
        'train.epochs_warmup', 'distributed_seed']  # the last two only begin like safe keys
values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3).map(lambda v: v * 7 + 100),
                   st.floats(0.5, 2), st.text(max_size=4),
                   st.lists(st.integers(0, 3), max_size=3).map(tuple),
                   st.lists(st.tuples(st.integers(0, 3), st.text(max_size=2)),
                            max_size=2).map(tuple))


def nested(flat: dict) -> dict:
    """`{'a.b': 1}` -> `{'a': {'b': 1}}`."""
    tree = {}
    for key, value in flat.items():
        *heads, last = key.split('.')
        node = tree
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return tree


def recorded(flat: dict) -> dict:
    """The config as `config.json` holds it (tuples read back as lists)."""
    return json.loads(json.dumps(nested(flat)))


def changed_keys(changes):
    return {change.split(': ', 1)[0] for change in changes}


def is_safe(key):
    return any(key == safe or key.startswith(safe + '.') for safe in SAFE)


flat_configs = st.fixed_dictionaries({key: values for key in KEYS})


@hypothesis.given(flat_configs)
def test_a_config_compared_with_its_own_record_has_no_changes(flat):
    assert workdir.config_changes(recorded(flat), nested(flat)) == []


@hypothesis.given(flat_configs, st.data())
def test_the_changes_name_exactly_the_keys_that_differ_and_may_not(flat, data):
    """Some keys get another value, some are dropped, new ones may appear: the changes are
    those keys, less the ones `SAFE_TO_CHANGE` covers, one line each."""
    edited = data.draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=5))
    dropped = data.draw(st.lists(st.sampled_from([k for k in KEYS if k not in edited]),
                                 unique=True, max_size=2))
    added = data.draw(st.lists(st.sampled_from(['model.extra', 'train.new_option']), unique=True))
    new = {**{k: v for k, v in flat.items() if k not in dropped},
           **{k: '<edited>' for k in edited}, **{k: 1 for k in added}}  # values `flat` cannot hold
    changes = workdir.config_changes(recorded(flat), nested(new))
    assert changed_keys(changes) == {k for k in {*edited, *dropped, *added} if not is_safe(k)}
    assert len(changes) == len(changed_keys(changes))
    for change in changes:
        assert ' -> ' in change and '\n' not in change


# Keys of today's configs that workdirs recorded by earlier versions lack, and keys those
# workdirs recorded under an older name (today's name -> the old one).
ADDED_SINCE = ('model.block', 'train.contrastive.margin')
RENAMED_SINCE = {'train.contrastive.loss': 'train.contrastive.variant'}


def flatten(tree, prefix=''):
    return {k: v for key, value in tree.items()
            for k, v in (flatten(value, f'{prefix}{key}.') if isinstance(value, dict)
                         else {prefix + key: value}).items()}


@hypothesis.given(st.sampled_from(['default', 'quickstart', 'x2', 'x3', 'x4', 'ablation_small']),
                  st.lists(st.sampled_from(ADDED_SINCE), unique=True),
                  st.lists(st.sampled_from(sorted(RENAMED_SINCE)), unique=True))
def test_a_workdir_recorded_before_keys_were_added_or_renamed_resumes(name, dropped, renamed):
    """A shipped config recorded by an earlier version (without the keys added since, renamed
    keys under their old names) compares equal to the same config today."""
    today = flatten(importlib.import_module(f'configs.{name}').get_config().to_dict())
    old = {RENAMED_SINCE[k] if k in renamed else k: v for k, v in today.items()
           if k not in dropped}
    assert workdir.config_changes(recorded(old), nested(today)) == []
