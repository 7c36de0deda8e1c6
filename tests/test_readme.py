"""Every command and code example of README.md, read from the README itself.

The fenced ```bash and ```python blocks and the inline `python ...` / `--config.KEY=VALUE` spans
of the prose are parsed out of README.md, so a changed README changes what is tested:

* python blocks are executed (the library example gets the `lr_batch` it leaves undefined);
* every `python ...` command: the script or module exists; its flags are parsed by the real
  parser (absl flags and `--config` overrides applied by ml_collections as train.py does, in a
  fresh FlagValues; argparse CLIs through their own `main` with parsing as the last thing done);
* the cheap commands run on `tests/fixtures`: the bicubic rows of eval.py and the kernel
  section's train -> eval -> study in this process (each command's flags parsed by its own
  definitions), pytest's collection as a subprocess; commands that need data the repository does
  not have (DIV2K, `ENLCAx4.pt`) or hours (the paper's training, the ablation, benchmarks) are
  only parsed. The quickstart command runs for
  real, exactly as written, in float32 and bfloat16, in the `slow` tests at the end (about 2 min
  each on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags

from conftest import INFO_NCE, REPO, TEST_DATA, load_config

README = REPO / 'README.md'
DEFAULT_CONFIG = 'configs/default.py'
# README placeholders: a command holding one is an illustration, not something to parse.
PLACEHOLDER = re.compile(r'\.\.\.|<\w+>')
# Config keys in the prose: `--config.KEY[=VALUE]`, or `model|data|train.key[=VALUE]` alone.
CONFIG_SPAN = re.compile(r'^(?:--config\.([\w.]+)|((?:model|data|train)\.[\w.]+))(?:=(.*))?$')


def heading_at(text: str, position: int) -> str:
    headings = [m.group(1) for m in re.finditer(r'^#{2,3} (.+)$', text[:position], re.M)]
    return headings[-1] if headings else ''


@functools.cache
def readme() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """`([(lang, code, section)] of the fenced blocks, [(span, section)] of the prose's spans)`."""
    text = README.read_text()
    fence = re.compile(r'^```(\w*)\n(.*?)^```', re.M | re.S)
    blocks = [(m.group(1), m.group(2), heading_at(text, m.start())) for m in fence.finditer(text)]
    spans = []
    for m in re.finditer(r'`([^`\n]+)`', fence.sub('', text)):
        spans.append((m.group(1), heading_at(fence.sub('', text), m.start())))
    return blocks, spans


def command_lines(code: str) -> list[str]:
    """The `python ...` lines of a bash block, continuations joined and comments dropped."""
    lines = code.replace('\\\n', ' ').splitlines()
    lines = [re.sub(r'\s+#.*$', '', line).strip() for line in lines]
    return [' '.join(line.split()) for line in lines if re.match(r'python\s', line)]


def readme_commands() -> list[tuple[str, str]]:
    """`(command, section)` for every `python` command of the README, blocks then prose."""
    blocks, spans = readme()
    commands = [(c, section) for lang, code, section in blocks if lang == 'bash'
                for c in command_lines(code)]
    commands += [(span, section) for span, section in spans
                 if span.startswith('python ') and not PLACEHOLDER.search(span)]
    return commands


def argv_of(command: str) -> tuple[str, list[str]]:
    """`('train.py' | '-m enlcn_jax.x', args)`, optional `[...]` arguments included."""
    words = shlex.split(re.sub(r'\[([^\]]*)\]', r'\1', command))
    assert words[0] == 'python', command
    if words[1] == '-m':
        return f'-m {words[2]}', words[3:]
    return words[1], words[2:]


def section_config(section: str) -> str:
    """The config file the commands of a README section use (configs/default.py if none)."""
    for command, where in readme_commands():
        args = argv_of(command)[1]
        if where == section and '--config' in args:
            return args[args.index('--config') + 1]
    return DEFAULT_CONFIG


def absl_flags(script: Path) -> flags.FlagValues:
    """The flags `script` defines, in a fresh FlagValues (the global FLAGS is left alone): its
    imports and its top-level `DEFINE_*` calls run with `flag_values=` the fresh one."""
    values = flags.FlagValues()
    namespace = {'__name__': 'readme_check', '_FLAG_VALUES': values}
    for node in ast.parse(script.read_text()).body:
        call = getattr(node, 'value', None) if isinstance(node, (ast.Expr, ast.Assign)) else None
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            pass
        elif (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
              and call.func.attr.startswith('DEFINE_')):
            call.keywords.append(ast.keyword('flag_values', ast.Name('_FLAG_VALUES', ast.Load())))
        else:
            continue
        module = ast.fix_missing_locations(ast.Module([node], []))
        exec(compile(module, str(script), 'exec'), namespace)  # pylint: disable=exec-used
    return values


class Parsed(Exception):
    """Raised by argparse's parse_args once the arguments parsed: stops `main` there."""


def script_path(target: str) -> Path:
    if target.startswith('-m '):
        spec = importlib.util.find_spec(target[3:])
        assert spec is not None and spec.origin, f'no module {target[3:]}'
        if spec.submodule_search_locations:  # a package runs its __main__
            return Path(spec.origin).with_name('__main__.py')
        return Path(spec.origin)
    assert (REPO / target).is_file(), f'no script {target}'
    return REPO / target


def check_command(command: str, monkeypatch) -> None:
    """The script exists and accepts the command's flags; `--config` overrides name real keys."""
    target, args = argv_of(command)
    if target == '-m pytest':
        return  # collected by test_slow_tests_command_selects_tests
    path = script_path(target)
    source = path.read_text()
    if 'DEFINE_' in source:
        values = absl_flags(path)
        # config_flags reads its `--config.*` overrides from sys.argv, as in the script.
        monkeypatch.setattr(sys, 'argv', ['readme', *args])
        values(sys.argv)  # UnrecognizedFlagError / IllegalFlagValueError / unknown config key
        if '--config' in args:
            assert isinstance(values.config, ml_collections.ConfigDict)
    elif not args:
        return  # a script run without arguments: that it exists is what can be checked cheaply
    elif 'ArgumentParser' in source:
        def parse_args(parser, argv=None, namespace=None):
            raise Parsed(original(parser, argv, namespace))
        original = argparse.ArgumentParser.parse_args
        monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_args)
        if target.startswith('-m '):
            name = target[3:]
            if path.name == '__main__.py':
                name += '.__main__'
            module = importlib.import_module(name)
        else:
            spec = importlib.util.spec_from_file_location('readme_script', path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        with pytest.raises(Parsed):
            module.main(args)  # a bad flag is SystemExit(2) from argparse
    else:
        raise AssertionError(f'{target} defines no flags; the README gives it {args}')


def test_readme_has_the_examples_this_file_tests():
    blocks, _ = readme()
    # bash: commands (parsed, some run); python: examples (run); text: the package map (checked).
    assert {lang for lang, _, _ in blocks} == {'bash', 'python', 'text'}
    commands = [c for c, _ in readme_commands()]
    assert any(c.startswith('python train.py --config configs/quickstart.py') for c in commands)
    assert any(c.startswith('python eval.py') and '--model bicubic' in c for c in commands)
    assert len([b for b in blocks if b[0] == 'python']) >= 2


@pytest.mark.parametrize('command', [c for c, _ in readme_commands()])
def test_command_scripts_and_flags_exist(command, monkeypatch):
    check_command(command, monkeypatch)


def test_command_check_rejects_unknown_flags_and_keys(monkeypatch):
    """The check above fails on what it guards against."""
    with pytest.raises((AttributeError, KeyError)):
        check_command('python train.py --config configs/x2.py --config.train.batch_size=8',
                      monkeypatch)
    with pytest.raises(flags.UnrecognizedFlagError):
        check_command('python eval.py --dataset Set5 --no_such_flag 1', monkeypatch)
    with pytest.raises(SystemExit):
        check_command('python -m enlcn_jax.bench attention --no_such_flag', monkeypatch)
    with pytest.raises(AssertionError, match='no module'):
        check_command('python -m enlcn_jax.no_such_tool', monkeypatch)


def test_config_keys_in_the_prose_exist():
    """`--config.KEY=VALUE` and `section.key=value` spans name keys of the section's config."""
    _, spans = readme()
    checked = 0
    for span, section in spans:
        match = CONFIG_SPAN.match(span.strip())
        if not match or re.search(r'\.(py|md|json)$', span):  # `data.py`, `ablation.md`: files
            continue
        flag_key, bare_key, value = match.groups()
        key = flag_key or bare_key
        config = section_config(section)
        if value is None or bare_key:
            node = load_config(config)
            for part in key.split('.'):
                assert part in node, f'README, {section!r}: {span!r}: no key {key} in {config}'
                node = node[part]
        else:
            load_config(config, [f'--config.{key}={value}'])
        checked += 1
    assert checked >= 5


def test_bicubic_eval_command_gives_the_published_bicubic_numbers(tmp_path):
    """`python eval.py --dataset Set5 --model bicubic --scale 2,3,4` on tests/fixtures: its flags
    parsed by eval.py's definitions, run by `runner.run` in this process."""
    import eval as eval_cli  # pylint: disable=import-outside-toplevel
    from enlcn_jax.evaluation import runner  # pylint: disable=import-outside-toplevel
    command = next(c for c, _ in readme_commands()
                   if c.startswith('python eval.py') and '--model bicubic' in c)
    values = absl_flags(REPO / 'eval.py')
    values(['eval.py', *argv_of(command)[1], '--data_dir', str(TEST_DATA / 'benchmark'),
            '--output', str(tmp_path / 'results.json')])
    runner.run(eval_cli.options_from_flags(values))
    rows = json.loads((tmp_path / 'results.json').read_text())['summary']
    psnr = {int(r['scale']): r['psnr'] for r in rows if r['dataset'] == 'Set5'}
    assert psnr == pytest.approx({2: 33.66, 3: 30.39, 4: 28.42}, abs=0.03)


def test_slow_tests_command_selects_tests():
    """The README's `-m slow` command selects tests (pytest exits 5 when a marker selects none).

    The plain `python -m pytest -q` is the run this test is part of."""
    command = next(c for c, _ in readme_commands()
                   if c.startswith('python -m pytest') and '-m slow' in c)
    # Collected in one process: pytest.ini's xdist workers would each import every test module.
    result = subprocess.run([sys.executable, *shlex.split(command)[1:], '--collect-only',
                             '-n', '0'],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r'\b[1-9]\d* tests? collected', result.stdout), result.stdout[-1000:]


def python_blocks() -> list[str]:
    return [code for lang, code, _ in readme()[0] if lang == 'python']


def library_example() -> str:
    return next(code for code in python_blocks() if 'models.ENLCN(' in code)


def kernel_example() -> str:
    return next(code for code in python_blocks() if 'def relu_squared' in code)


def test_every_python_block_is_tested():
    assert sorted(python_blocks()) == sorted([library_example(), kernel_example()])


def test_library_example_runs():
    """The example as written, but for the paper model's size: un-jitted, its 32 x 256 features
    took 40 s on a 2-core CPU, so the constructor gets 4 blocks of 32 features (3 modules)."""
    code, count = re.subn(r'models\.ENLCN\(([^)]*)\)',
                          r'models.ENLCN(\1, n_resblocks=4, n_feats=32, attention_every=2)',
                          library_example())
    assert count == 1, library_example()
    namespace = {'lr_batch': jnp.linspace(0, 1, 2 * 12 * 10 * 3).reshape(2, 12, 10, 3)}
    start = time.perf_counter()
    exec(code, namespace)  # pylint: disable=exec-used
    assert namespace['sr'].shape == (2, 24, 20, 3)
    model = namespace['model']
    assert len(namespace['qk']) == model.n_resblocks // model.attention_every + 1
    assert set(namespace['variables']) == {'params', 'random_features'}
    print(f'library example: {time.perf_counter() - start:.1f} s')


def test_kernel_example_is_the_file_the_commands_use():
    assert kernel_example() == (REPO / 'examples' / 'my_kernels.py').read_text()


SMALL_TRAINING = ['--config.model.n_resblocks=2', '--config.model.n_feats=16',
                  '--config.model.num_random_features=16', '--config.data.lr_patch=12',
                  '--config.data.batch_size=2', '--config.train.epochs=1',
                  '--config.train.steps_per_epoch=4', '--config.train.log_every=1',
                  '--config.train.contrastive.start_epoch=0', '--config.data.val_source=none']


def train_and_evaluate_section(marker: str, tmp_path) -> tuple[list[str], Path, list[dict], dict]:
    """The README's train command whose text contains `marker` (a few steps of a small model,
    `SMALL_TRAINING`), then its section's eval.py command on that workdir, on tests/fixtures's
    Set5. In this process: the train command's config as train.py parses it, trained by
    `loop.run_training`; eval.py's own flags parsed and run by `runner.run`.

    Returns:
      (the section's commands, the workdir, its metrics.jsonl records, eval's Set5 summary row).
    """
    import eval as eval_cli  # pylint: disable=import-outside-toplevel
    from enlcn_jax.evaluation import runner  # pylint: disable=import-outside-toplevel
    from enlcn_jax.train import loop  # pylint: disable=import-outside-toplevel
    train = next(c for c, _ in readme_commands()
                 if marker in c and c.startswith('python train.py'))
    section = next(s for c, s in readme_commands() if c == train)
    commands = [c for c, where in readme_commands() if where == section]
    evaluate = next(c for c in commands[commands.index(train):] if c.startswith('python eval.py'))
    workdir = tmp_path / 'workdir'
    train_args = argv_of(train)[1]
    overrides = [a for a in train_args if a.startswith('--config.')]
    config = load_config(train_args[train_args.index('--config') + 1], overrides + SMALL_TRAINING)
    assert loop.run_training(config, workdir) is None
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert len(records) == 4 and all(np.isfinite(r['train/loss']) for r in records)

    eval_args = argv_of(evaluate)[1]
    eval_args[eval_args.index('--checkpoint') + 1] = str(workdir)
    values = absl_flags(REPO / 'eval.py')
    values(['eval.py', *eval_args, '--data_dir', str(TEST_DATA / 'benchmark'),
            '--output', str(tmp_path / 'r.json')])
    runner.run(eval_cli.options_from_flags(values))
    summary = json.loads((tmp_path / 'r.json').read_text())['summary'][0]
    assert summary['dataset'] == 'Set5' and summary['images'] == 5
    assert 5 < summary['psnr'] < 60
    return commands, workdir, records, summary


def test_kernel_commands_train_the_file_s_map_and_eval_loads_it(tmp_path):
    """The README's commands with `--config.model.feature_map=MODULE:NAME`: train, eval and the
    approximation study (through visualize's `main`)."""
    from enlcn_jax import visualize  # pylint: disable=import-outside-toplevel
    commands, workdir, records, _ = train_and_evaluate_section('my_kernels:', tmp_path)
    assert json.loads((workdir / 'model_config.json').read_text())['feature_map'] == \
        'examples.my_kernels:relu_squared'
    assert any(r['train/contrastive'] > 0 for r in records)  # the loss saw the map's embeddings
    study = next(c for c in commands if c.startswith('python -m enlcn_jax.visualize'))

    # The approximation study on that workdir's embeddings, the file's map beside the shipped.
    visualize.main([*argv_of(study)[1], '--checkpoint', str(workdir), '--max_side', '16',
                    '--ks', '1,6', '--ms', '8', '--draws', '4',
                    '--out', str(tmp_path / 'variance')])
    rows = json.loads((tmp_path / 'variance.json').read_text())
    assert {r['feature_map'] for r in rows} == {'softmax_kernel', 'relu',
                                                'examples.my_kernels:relu_squared'}
    assert all(np.isfinite(r['output_rel_error']) for r in rows)


def test_the_loss_command_is_the_one_the_researcher_functions_test_trains():
    """The README's `--config.train.contrastive.loss=...` commands: the train command is the
    config `test_researcher_functions.py` trains, records and evaluates (with a smaller budget),
    and the eval command reads that workdir."""
    train = next(c for c, _ in readme_commands() if 'contrastive.loss=' in c)
    args = argv_of(train)[1]
    assert args[args.index('--config') + 1] == 'configs/quickstart.py'
    assert f'--config.train.contrastive.loss={INFO_NCE}' in args
    workdir = args[args.index('--workdir') + 1]
    assert any(c == f'python eval.py --dataset Set5 --checkpoint {workdir}'
               for c, _ in readme_commands())


@pytest.mark.parametrize('marker, key, recorded', [
    ("attention='window(window=8)'", 'attention', 'window(window=8)'),
    ('temperature_block', 'block', 'examples.temperature_block:LearnedAmplificationENLCA'),
])
def test_example_commands_train_and_evaluate_through_eval_py(tmp_path, marker, key, recorded):
    """A layout-aware attention with an option, and a whole block of one's own, from the README's
    commands: the workdir records the spec as written and eval.py loads it again."""
    _, workdir, records, _ = train_and_evaluate_section(marker, tmp_path)
    assert json.loads((workdir / 'model_config.json').read_text())[key] == recorded
    assert any(r['train/contrastive'] > 0 for r in records)


@pytest.mark.slow
@pytest.mark.parametrize('start', [
    'python train.py --config configs/quickstart.py --workdir',
    'python train.py --config configs/quickstart.py --config.model.dtype=bfloat16 --workdir'])
def test_quickstart_command_beats_bicubic(tmp_path, start):
    """The quickstart commands (float32, bfloat16) exactly as the README gives them (their
    workdirs moved to tmp_path)."""
    command = next(c for c, _ in readme_commands() if c.startswith(start))
    args = shlex.split(command)[1:]
    args[args.index('--workdir') + 1] = str(tmp_path / 'quickstart')
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=3600, check=False)
    minutes = (time.perf_counter() - start) / 60
    assert result.returncode == 0, result.stderr[-5000:]
    records = [json.loads(line) for line in
               (tmp_path / 'quickstart' / 'metrics.jsonl').read_text().splitlines()]
    validation = [r for r in records if 'val/psnr_y' in r]
    final = max(validation, key=lambda r: r['step'])
    config = load_config('configs/quickstart.py')
    assert final['step'] == config.train.epochs * config.train.steps_per_epoch
    print(f"quickstart: {minutes:.1f} min, validation PSNR-Y {final['val/psnr_y']:.2f} dB, "
          f"bicubic {final['val/bicubic_psnr_y']:.2f} dB")
    assert final['val/psnr_y'] > final['val/bicubic_psnr_y']


def test_every_paper_vs_code_row_of_the_method_is_a_config_key():
    """docs/method.md's disagreement table names a `configs/default.py` key in each row."""
    from configs import default  # pylint: disable=import-outside-toplevel
    text = (REPO / 'docs' / 'method.md').read_text()
    table = text[text.index('## Where the paper and the released code disagree'):]
    rows = [line for line in table.splitlines() if line.startswith('| ') and '`' in line]
    config = default.get_config()
    keys = [key for row in rows for key in re.findall(r'`([a-z_]+\.[\w.]+)`', row.split('|')[2])]
    assert len(rows) == 10 and len(keys) >= 10, rows
    for key in keys:
        try:
            config[key]  # ml_collections reads dotted keys
        except (KeyError, AttributeError):
            pytest.fail(f'docs/method.md names {key}, not a key of configs/default.py')


def test_the_package_map_lists_every_module_and_no_other():
    """The README's map of `enlcn_jax/` (bench/ as one line) against the files."""
    blocks = [code for lang, code, section in readme()[0]
              if lang == 'text' and section == 'The package']
    assert len(blocks) == 1
    listed, package = set(), None
    for line in blocks[0].splitlines()[1:]:
        name = line.split()[0] if line.strip() else ''
        if line.startswith('  ') and not line.startswith('    '):
            package = name.rstrip('/') if name.endswith('/') else None
            if name.endswith('.py'):
                listed.add(name[:-3])
            elif package == 'bench':
                listed.add('bench')
        elif line.startswith('    ') and package:
            listed.add(f'{package}.{name}')
    present = set()
    for path in (REPO / 'enlcn_jax').rglob('*.py'):
        parts = path.relative_to(REPO / 'enlcn_jax').with_suffix('').parts
        if parts[0] == 'bench':
            present.add('bench')
        elif parts[-1] not in ('__init__', '__main__'):
            present.add('.'.join(parts))
    assert listed == present, (sorted(listed - present), sorted(present - listed))
