"""`python -m enlcn_jax.ablation --config configs/ablation_small.py --workdir W`: the paper's
Table 2 on real photographs (`research/ablation.py`)."""

import sys

from absl import app, flags
from ml_collections import config_flags

from enlcn_jax.research import ablation, variants
from enlcn_jax.storage import checkpoints

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Ablation config (configs/ablation_small.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/ablation', 'One sub-directory per variant.')


def main(argv):
    del argv
    checkpoints.quiet_orbax_logs()
    try:
        ablation.run_ablation(FLAGS.config, FLAGS.workdir)
    except variants.VariantError as e:
        sys.exit(f'ablation: {e}')


if __name__ == '__main__':
    flags.mark_flags_as_required(['config'])
    app.run(main)
