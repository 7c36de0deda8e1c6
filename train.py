"""Trains ENLCN: `python train.py --config configs/x2.py [--workdir DIR] [--config.KEY=VALUE ...]`.

Several processes (hosts, or processes on one host), one model: start the same command in every
process with `--config.distributed=True --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I` (I = 0 .. N-1, process 0's host as the coordinator; on SLURM and Cloud TPU the
three flags can be left out). The processes first check that each has its own id and that all
run the same config (`enlcn_jax/train/processes.py`). Each process feeds its rows of every
global batch (`data.batch_size`, which must split over all devices) and the result equals a
one-process run.

The config file's `get_config()` gives every hyper-parameter (see configs/default.py); any key can
be overridden on the command line, e.g. `--config.train.epochs=10`. Running the same command again
resumes from the latest checkpoint in the workdir (default `./workdirs/<config file name>`).
"""

import os
import sys
import traceback
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from enlcn_jax.storage import checkpoints
from enlcn_jax.train import loop, processes

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs and metrics; default '
                    './workdirs/<config file name>.')
flags.DEFINE_boolean('allow_config_changes', False, 'resume a workdir although the config changes '
                     'its model, data, seed or recipe, or the source of its MODULE:NAME '
                     'functions changed (more epochs and logging cadence need no flag)')
flags.DEFINE_string('coordinator_address', None, 'with config.distributed: host:port of process '
                    "0's coordinator (default: what jax.distributed detects, e.g. on SLURM)")
flags.DEFINE_integer('num_processes', None, 'with config.distributed: number of processes')
flags.DEFINE_integer('process_id', None, 'with config.distributed: this process, 0 .. n-1')
flags.DEFINE_integer('heartbeat_timeout', 100, 'with config.distributed: seconds after which a '
                     'silent process counts as dead and the others stop', lower_bound=1)
flags.DEFINE_integer('startup_timeout', 300, 'with config.distributed: seconds within which every '
                     'process must start (a missing one ends the others with one line)',
                     lower_bound=1)
flags.mark_flags_as_required(['config'])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a clear message for an override of a key the config does not have."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # how config_flags reports an unknown key
        while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
            e = e.args[0]
        key, _, hint = str(e.args[0] if e.args else e).lstrip("'").partition("'")
        overrides = [a for a in argv[1:] if a.startswith('--config.')
                     and key in a.split('=')[0].split('.')]
        sys.exit(f'FATAL Flags parsing error: unknown config key {key!r} in '
                 f'{" ".join(overrides) or "a --config.* override"}: the config has no such '
                 f'field.{hint.rstrip()} See the config file for the valid keys.')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    checkpoints.quiet_orbax_logs()
    config = FLAGS.config
    if not config.distributed:
        error = loop.run_training(config, _workdir(config), FLAGS.allow_config_changes)
        if error:
            sys.exit(f'FATAL {error}')
        return
    try:
        processes.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                             heartbeat_timeout_s=FLAGS.heartbeat_timeout,
                             startup_timeout_s=FLAGS.startup_timeout)
    except processes.ProcessMismatchError as e:
        sys.exit(f'FATAL process {FLAGS.process_id}: {e}')
    who = f'process {jax.process_index()} of {jax.process_count()}'
    try:
        error = loop.run_training(config, _workdir(config), FLAGS.allow_config_changes)
    except BaseException as e:  # pylint: disable=broad-except
        traceback.print_exc()
        error = f'{type(e).__name__}: {e}'
    if error:
        # Ends this process at once: jax.distributed's shutdown would wait for the other
        # processes, which wait for this one. They stop at their next collective (with a FATAL
        # line of their own), or, outside one, when the distributed runtime finds this process
        # silent for --heartbeat_timeout seconds (it aborts them naming this process).
        print(f'FATAL {who}: {error}', file=sys.stderr, flush=True)
        os._exit(1)


def _workdir(config) -> str:
    workdir = FLAGS.workdir or str(
        Path('workdirs') / Path(config_flags.get_config_filename(FLAGS['config'])).stem)
    logging.info('JAX process %d / %d, local devices %s; workdir %s', jax.process_index(),
                 jax.process_count(), jax.local_devices(), workdir)
    return workdir


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
