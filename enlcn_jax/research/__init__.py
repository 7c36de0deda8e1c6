"""Where a researcher compares attention: the variants (the literature's attention and the
controls as config overrides), the synthetic tasks, one trainer of variants over seeds, the
result store, verdicts, cost, plots and the leaderboard that ties them together
(`python -m enlcn_jax.leaderboard`); and what one model's attention does: per-query attention
maps and the random-feature approximation study (`python -m enlcn_jax.visualize`).
"""
