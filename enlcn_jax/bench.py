"""Benchmarks: each prints a markdown table and writes a JSON file.

    python -m enlcn_jax.bench attention [--sizes 50,100,150,200] [--out bench_results]
    python -m enlcn_jax.bench train [--configs quickstart,x2] [--steps 20,1]
    python -m enlcn_jax.bench eval [--sizes 256,512] [--repeats 3]
    python -m enlcn_jax.bench contrastive [--sizes 48] [--batch 4] [--repeats 10]

`attention`: `bench_attention` (ENLCA vs exact NLA, time and memory); `train`: `bench_train`
(steps/s, images/s, input-pipeline patches/s); `eval`: `bench_eval` (SR megapixels/s);
`contrastive`: `bench_contrastive` (the loss and its gradient as a train step computes them).
"""

from __future__ import annotations

import argparse

from enlcn_jax import bench_attention, bench_contrastive, bench_eval, bench_train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m enlcn_jax.bench', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    attn = sub.add_parser('attention', help='ENLCA (ENLA) vs exact NLA: time and memory')
    attn.add_argument('--sizes', default='50,100,150,200', help='square feature-map sides')
    attn.add_argument('--channels', type=int, default=64)
    attn.add_argument('--m', type=int, default=128, help='number of random features')
    attn.add_argument('--repeats', type=int, default=5)
    attn.add_argument('--max_gib', type=float, default=8.0,
                      help='skip running programs whose XLA memory estimate exceeds this')
    train = sub.add_parser('train', help='training steps/s, images/s and input-pipeline patches/s')
    train.add_argument('--configs', default='quickstart,x2', help='modules of configs/')
    train.add_argument('--steps', default='20,1', help='timed steps per config')
    train.add_argument('--batch_size', type=int, default=16)
    train.add_argument('--lr_patch', type=int, default=48)
    evaluation = sub.add_parser('eval', help='eval throughput of the paper model (SR MP/s)')
    evaluation.add_argument('--sizes', default='256,512', help='square LR sides')
    evaluation.add_argument('--repeats', type=int, default=3)
    contrastive = sub.add_parser('contrastive', help='contrastive loss fwd and fwd+bwd time')
    contrastive.add_argument('--sizes', default='48', help='square LR patch sides')
    contrastive.add_argument('--batch', type=int, default=4)
    contrastive.add_argument('--d', type=int, default=16, help='embedding width')
    contrastive.add_argument('--repeats', type=int, default=10)
    for p in (attn, train, evaluation, contrastive):
        p.add_argument('--out', default='bench_results', help='directory for the JSON file')
    args = parser.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(',')]
    if args.command == 'attention':
        bench_attention.attention_bench(ints(args.sizes), args.channels, args.m, args.repeats,
                                        args.max_gib, args.out)
    elif args.command == 'train':
        bench_train.train_throughput_bench(args.configs.split(','), ints(args.steps),
                                           args.batch_size, args.lr_patch, out_dir=args.out)
    elif args.command == 'eval':
        bench_eval.eval_throughput_bench(ints(args.sizes), args.out, args.repeats)
    else:
        bench_contrastive.contrastive_bench(ints(args.sizes), args.batch, args.d, args.repeats,
                                            out_dir=args.out)


if __name__ == '__main__':
    main()
