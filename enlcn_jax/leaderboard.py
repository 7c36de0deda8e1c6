"""`python -m enlcn_jax.leaderboard --workdir W [--variants ...] [--tasks ...] [--seeds N]
[--steps N] [--set KEY=VALUE] [--cost_sides 32,64,128]`: the attention leaderboard; flags over
`research/leaderboard.py`, whose docstring says what it does."""

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import jax

from enlcn_jax.nn import registry
from enlcn_jax.research import leaderboard, tasks, variants
from enlcn_jax.storage import files
from enlcn_jax.train import workdir as workdir_lib


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.leaderboard',
                                     description=leaderboard.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', required=True,
                        help='the store of results and leaderboard.md/.json/.png')
    parser.add_argument('--variants', default=','.join(leaderboard.DEFAULT_VARIANTS),
                        help='comma-separated: built-in variants ('
                        + ', '.join(leaderboard.DEFAULT_VARIANTS) + '), KEY=SPEC with KEY one of '
                        + ', '.join(variants.SPEC_SHORTHANDS)
                        + ', a bare SPEC (attention=SPEC), or several settings joined by ;')
    parser.add_argument('--tasks', default=','.join(tasks.TASKS),
                        help='comma-separated tasks: ' + ', '.join(tasks.TASKS))
    parser.add_argument('--seeds', type=int, default=leaderboard.DEFAULT_SEEDS,
                        help='runs per variant and task (seeds 0..N-1)')
    parser.add_argument('--steps', type=int, default=leaderboard.DEFAULT_STEPS,
                        help='train steps per run')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='a config value for every row (repeatable), e.g. train.lr=1e-3')
    parser.add_argument('--cost_sides', default=','.join(map(str, leaderboard.COST_SIDES)),
                        help='square feature-map sides at which each attention module is timed')
    parser.add_argument('--reference', default=leaderboard.REFERENCE,
                        help='the variant every row is also compared with')
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        parser.error(f'--seeds and --steps must be >= 1, got {args.seeds} and {args.steps}')
    try:
        cost_sides = [int(side) for side in args.cost_sides.split(',')]
    except ValueError:
        cost_sides = []
    if not cost_sides or min(cost_sides) < 1:
        parser.error(f'--cost_sides {args.cost_sides!r}: expected positive sides, e.g. 32,64,128')
    if not jax.config.jax_compilation_cache_dir:
        # Variants on tasks of one image size compile the same programs: compile each once.
        jax.config.update('jax_compilation_cache_dir', str(Path(args.workdir) / 'compile_cache'))
    start = time.perf_counter()
    try:
        report = leaderboard.run_leaderboard(
            args.workdir, registry.split_specs(args.variants), registry.split_specs(args.tasks),
            seeds=args.seeds, steps=args.steps, sets=leaderboard.parse_sets(args.set),
            cost_sides=cost_sides, reference=args.reference)
    except (leaderboard.LeaderboardError, variants.VariantError, workdir_lib.WorkdirError,
            files.WriteError) as e:
        sys.exit(f'{parser.prog}: {e}')
    except KeyboardInterrupt:
        sys.exit(f'{parser.prog}: interrupted; every finished run is stored in {args.workdir}: '
                 'the same command continues with the next one')
    print(leaderboard.markdown(report))
    print(f'{parser.prog}: {len(report["runs"])} runs stored; wrote leaderboard.md, .json, .png '
          f'in {args.workdir} ({time.perf_counter() - start:.0f} s)', file=sys.stderr)


if __name__ == '__main__':
    main()
