"""Benchmarks: each prints a markdown table and writes a JSON file.

    python -m enlcn_jax.bench attention [--sizes 50,100,150,200] [--out bench_results]
    python -m enlcn_jax.bench train [--configs quickstart,x2] [--steps 20,1]
        [--dtypes float32,bfloat16] [--devices 1,all]
    python -m enlcn_jax.bench eval [--config x2] [--sizes 256,512x384] [--dtypes float32,bfloat16]
    python -m enlcn_jax.bench contrastive [--sizes 48] [--batch 4] [--repeats 10] [--loss code]
    python -m enlcn_jax.bench gpu [--config x2] [--batch_size 16] [--lr_patch 48] [--steps 20]
        [--attention_sizes 100,150,300] [--eval_size 512x384] [--repeats 5] [--matmul_n 2048]
        [--max_gib 32]
    python -m enlcn_jax.bench profile [--n_resblocks 16] [--n_feats 64] [--batch_size 4]
        [--lr_patch 48] [--dtype float32]

`attention`: `bench/attention.py` (ENLCA vs exact NLA, time and memory, the paper's Table 5
beside); `train`: `bench/train.py` (steps/s, images/s, GFLOP/s and % of the matmul peak,
input-pipeline patches/s); `eval`: `bench/eval.py` (SR megapixels/s); `contrastive`:
`bench/contrastive.py` (the loss and its gradient as a train step computes them); `gpu`:
`bench/gpu.py`, the GPU set in one
run (ENLCA and exact NLA at 100, 150 and 300 px, x2 training in float32 and bfloat16 on 1 and
all devices, Urban100-sized eval, peak device memory): the three parts' files plus `gpu.json`.
On a CPU, shrink it: `gpu --config quickstart --batch_size 2 --lr_patch 24 --steps 1 --attention_sizes 16
--eval_size 32x24 --repeats 1 --matmul_n 256`. `profile`: `bench/profile.py`, where a train step's
time goes (convolutions, attention, backward, contrastive, optimizer, the rest).
"""

from __future__ import annotations

import argparse

from enlcn_jax.bench import (attention as bench_attention, contrastive as bench_contrastive,
                             eval as bench_eval, gpu as bench_gpu, profile as bench_profile,
                             train as bench_train)
from enlcn_jax.bench.common import parse_size
from enlcn_jax.nn import precision

# Precisions a model may be trained in (train, profile) and all of them (eval).
TRAINING_DTYPES = tuple(name for name in precision.NAMES if precision.PRECISIONS[name].trains)


def dtype_list(choices: tuple[str, ...]):
    """An argparse `type`: `'float32,bfloat16'` -> `['float32', 'bfloat16']`, each in `choices`."""
    def parse(text: str) -> list[str]:
        names = text.split(',')
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f'{",".join(unknown)}: choose from {",".join(choices)}')
        return names
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    attn = sub.add_parser('attention', help='ENLCA (ENLA) vs exact NLA: time and memory')
    attn.add_argument('--sizes', default='50,100,150,200', help='square feature-map sides')
    attn.add_argument('--channels', type=int, default=64)
    attn.add_argument('--m', type=int, default=128, help='number of random features')
    attn.add_argument('--repeats', type=int, default=5)
    attn.add_argument('--max_gib', type=float, default=8.0,
                      help='skip running programs whose XLA memory estimate exceeds this')
    train = sub.add_parser('train', help='training steps/s, images/s, GFLOP/s; input pipeline')
    train.add_argument('--configs', default='quickstart,x2', help='modules of configs/')
    train.add_argument('--steps', default='20,1', help='timed steps per config')
    train.add_argument('--dtypes', default='float32', type=dtype_list(TRAINING_DTYPES),
                       help=f'model.dtype, comma-separated: {",".join(TRAINING_DTYPES)}')
    train.add_argument('--devices', default='all',
                       help="device sets: '1' (the first local device), 'all' (every one)")
    evaluation = sub.add_parser('eval', help='eval throughput of the paper model (SR MP/s)')
    evaluation.add_argument('--config', default='x2', help='module of configs/ (its model)')
    evaluation.add_argument('--sizes', default='256,512',
                            help='LR sizes, WIDTHxHEIGHT (512x384) or one side (256)')
    evaluation.add_argument('--dtypes', default='float32', type=dtype_list(precision.NAMES),
                            help=f"the model's dtype, comma-separated: {','.join(precision.NAMES)}")
    evaluation.add_argument('--repeats', type=int, default=3)
    contrastive = sub.add_parser('contrastive', help='contrastive loss fwd and fwd+bwd time')
    contrastive.add_argument('--sizes', default='48', help='square LR patch sides')
    contrastive.add_argument('--batch', type=int, default=4)
    contrastive.add_argument('--d', type=int, default=16, help='embedding width')
    contrastive.add_argument('--repeats', type=int, default=10)
    contrastive.add_argument('--loss', default='code', help="a train.contrastive.loss spec: "
                             "'code', 'paper', MODULE:NAME, options in parentheses")
    gpu = sub.add_parser('gpu', help='the GPU set: train, attention, eval, peak memory')
    gpu.add_argument('--config', default='x2', help='module of configs/ (train and eval)')
    gpu.add_argument('--steps', type=int, default=20, help='timed train steps per phase')
    gpu.add_argument('--attention_sizes', default='100,150,300', help='square feature-map sides')
    gpu.add_argument('--eval_size', default='512x384', help='LR size, WIDTHxHEIGHT')
    gpu.add_argument('--repeats', type=int, default=5, help='timed attention and eval runs')
    gpu.add_argument('--max_gib', type=float, default=32.0,
                     help='skip attention programs whose XLA memory estimate exceeds this')
    profile = sub.add_parser('profile', help="a train step's time split into its parts")
    profile.add_argument('--n_resblocks', type=int, default=16)
    profile.add_argument('--n_feats', type=int, default=64)
    profile.add_argument('--dtype', default='float32', choices=TRAINING_DTYPES, help='model.dtype')
    profile.add_argument('--repeats', type=int, default=5)
    for p, batch_size in ((train, 16), (gpu, 16), (profile, 4)):
        p.add_argument('--batch_size', type=int, default=batch_size)
        p.add_argument('--lr_patch', type=int, default=48)
        p.add_argument('--matmul_n', type=int, default=2048,
                       help='side of the square matmul that measures the peak')
    for p in (attn, train, evaluation, contrastive, gpu, profile):
        p.add_argument('--out', default='bench_results', help='directory for the JSON file')
    args = parser.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(',')]
    if args.command == 'attention':
        bench_attention.attention_bench(ints(args.sizes), args.channels, args.m, args.repeats,
                                        args.max_gib, args.out)
    elif args.command == 'train':
        bench_train.train_throughput_bench(
            args.configs.split(','), ints(args.steps), args.batch_size, args.lr_patch,
            args.dtypes, args.devices.split(','), args.matmul_n, out_dir=args.out)
    elif args.command == 'eval':
        bench_eval.eval_throughput_bench([parse_size(s) for s in args.sizes.split(',')],
                                         args.config, args.dtypes, args.out,
                                         args.repeats)
    elif args.command == 'contrastive':
        bench_contrastive.contrastive_bench(ints(args.sizes), args.batch, args.d, args.repeats,
                                            args.loss, out_dir=args.out)
    elif args.command == 'profile':
        bench_profile.train_step_profile(args.n_resblocks, args.n_feats, args.batch_size,
                                         args.lr_patch, args.dtype, args.repeats, args.matmul_n,
                                         args.out)
    else:
        bench_gpu.gpu_bench(args.config, args.batch_size, args.lr_patch, args.steps,
                            ints(args.attention_sizes), parse_size(args.eval_size), args.repeats,
                            args.matmul_n, args.max_gib, args.out)


if __name__ == '__main__':
    main()
