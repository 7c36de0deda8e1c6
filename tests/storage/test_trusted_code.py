"""Loading a checkpoint imports no code from outside the package unless trusted, and refuses a
function whose source changed since the checkpoint was saved.

A checkpoint folder `ckpt/` that ships `evil.py` and names `ckpt.evil:relu_squared` in its
`model_config.json` is the hostile case: with the working directory on the import path the
folder imports as a package, and `evil.py` writes a file when imported.
"""

import hashlib
import json
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_MODEL, random_variables, tiny_config
from enlcn_jax import upscale, visualize
from enlcn_jax.data import image_io
from enlcn_jax.evaluation import runner
from enlcn_jax.nn import models, registry
from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop

KERNELS = (REPO / 'examples' / 'my_kernels.py').read_text()
# Importing it writes `imported.txt` beside it.
EVIL = KERNELS + ("\nfrom pathlib import Path\n\n"
                  "Path(__file__).with_name('imported.txt').write_text('ran')\n")


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    """`tmp_path` as the working directory, as when a tool is run there; `sys.path` (which
    resolving a spec extends with it) and the modules imported from it are restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.split('.')[0] in ('ckpt', 'maps_dir', 'maps_run'):
            del sys.modules[name]


@pytest.fixture
def hostile(in_folder):
    """`ckpt/`: a tiny x2 model directory whose feature map is its own `evil.py`'s, and an image
    `in.png`. Returns the folder holding both."""
    config = {**TINY_MODEL, 'feature_map': 'relu'}
    checkpoints.save_model(in_folder / 'ckpt', config,
                           random_variables(models.from_config(config)))
    (in_folder / 'ckpt' / 'evil.py').write_text(EVIL)
    hostile_config = {**config, 'feature_map': 'ckpt.evil:relu_squared'}
    (in_folder / 'ckpt' / checkpoints.MODEL_CONFIG).write_text(json.dumps(hostile_config))
    format_file = in_folder / 'ckpt' / checkpoints.FORMAT_FILE  # a consistent record of it
    format_file.write_text(json.dumps({**json.loads(format_file.read_text()),
                                       'model': hostile_config}))
    (in_folder / 'images').mkdir()
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    image_io.save_image(in_folder / 'images' / 'in.png', image)
    return in_folder


def eval_py(**options):
    runner.run(runner.EvalOptions(datasets=('images',), checkpoint='ckpt', output='r.json',
                                  **options))


COMMANDS = {
    'eval.py': lambda: eval_py(),
    'upscale': lambda: upscale.main(['images/in.png', 'out.png', '--checkpoint', 'ckpt']),
    'visualize': lambda: visualize.main(['maps', '--pixel', '1,1', '--checkpoint', 'ckpt',
                                         '--image', 'images/in.png', '--out', 'maps']),
}


@pytest.mark.parametrize('command', list(COMMANDS))
def test_a_checkpoint_naming_a_module_of_its_own_is_refused_before_it_is_imported(
        hostile, command, capsys):
    with pytest.raises((runner.EvalError, SystemExit)) as info:
        COMMANDS[command]()
    message = str(info.value) if info.type is runner.EvalError else capsys.readouterr().err
    line = next(line for line in message.splitlines() if 'ckpt.evil' in line)
    assert 'module(s) ckpt.evil;' in line and 'pass --trust_code' in line
    assert not (hostile / 'ckpt' / 'imported.txt').exists()
    assert 'ckpt.evil' not in sys.modules
    assert not any(hostile.joinpath(name).exists() for name in ('r.json', 'out.png', 'maps.png'))


def test_with_trust_code_the_checkpoint_s_module_is_imported_and_the_model_evaluates(hostile):
    eval_py(trust_code=True)
    assert (hostile / 'ckpt' / 'imported.txt').read_text() == 'ran'
    (summary,) = json.loads((hostile / 'r.json').read_text())['summary']
    assert summary['images'] == 1 and 5 < summary['psnr'] < 60
    model, _, _ = checkpoints.load_model('ckpt', trust_code=True)
    assert model.enlca.feature_map_fn() is sys.modules['ckpt.evil'].relu_squared


def test_external_targets_are_the_module_name_specs_outside_the_package():
    specs = ['enla', 'softmax_kernel(eps=0.0)', 'enlcn_jax.nn.features:relu', None, len,
             'ckpt.evil:phi(rho=0.5)', 'enlcn_jax_lookalike:phi', 'ckpt.evil:phi']
    assert registry.external_targets(specs) == ['ckpt.evil:phi', 'enlcn_jax_lookalike:phi']
    # The package's own names are neither refused nor fingerprinted (nothing is imported).
    assert registry.code_fingerprints(specs[:5]) == {}


def test_a_model_directory_refuses_a_function_edited_since_it_was_saved(in_folder, caplog):
    (in_folder / 'maps_dir.py').write_text(KERNELS)
    config = {**TINY_MODEL, 'feature_map': 'maps_dir:relu_squared'}
    checkpoints.save_model(in_folder / 'model', config,
                           random_variables(models.from_config(config)))
    recorded = json.loads((in_folder / 'model' / checkpoints.FORMAT_FILE).read_text())['code']
    assert recorded == {'maps_dir:relu_squared': hashlib.sha256(KERNELS.encode()).hexdigest()[:16]}
    checkpoints.load_model(in_folder / 'model', trust_code=True)

    (in_folder / 'maps_dir.py').write_text(KERNELS.replace('1e-6', '1e-3'))
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load_model(in_folder / 'model', trust_code=True)
    message = str(info.value)
    assert 'the source of maps_dir:relu_squared changed' in message
    assert '--allow_changed_code' in message and '\n' not in message
    checkpoints.load_model(in_folder / 'model', trust_code=True, allow_changed_code=True)
    assert any('maps_dir:relu_squared changed' in r.getMessage()
               and 'no longer belong to the trained model' in r.getMessage()
               for r in caplog.records)


def test_a_workdir_refuses_to_load_or_resume_with_a_function_edited_since_training(in_folder):
    (in_folder / 'maps_run.py').write_text(KERNELS)
    config = tiny_config(model__feature_map='maps_run:relu_squared', train__epochs=1,
                         data__val_source='none')
    assert loop.run_training(config, in_folder / 'run') is None
    checkpoints.load_model(in_folder / 'run', trust_code=True)

    (in_folder / 'maps_run.py').write_text(KERNELS.replace('1e-6', '1e-3'))
    with pytest.raises(checkpoints.CheckpointError, match='the source of maps_run:relu_squared '
                       'changed since the checkpoint was saved'):
        checkpoints.load_model(in_folder / 'run', trust_code=True)
    error = loop.run_training(config, in_folder / 'run')
    assert error.startswith('the source of maps_run:relu_squared changed since the checkpoint '
                            'was trained with it')
    assert '--allow_config_changes' in error and '\n' not in error
