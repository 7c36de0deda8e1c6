"""`python -m enlcn_jax.leaderboard`: the attention leaderboard (`research/leaderboard.py`)."""

from enlcn_jax.research import leaderboard

if __name__ == '__main__':
    leaderboard.main()
