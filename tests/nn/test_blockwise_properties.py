"""Properties of row blocks for all row counts and block sizes (hypothesis; settings pinned in
tests/conftest.py)."""

import hypothesis
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from enlcn_jax.nn import blockwise


def row_wise(x, xp=jnp):
    return xp.tanh(x) * xp.sum(x, axis=-1, keepdims=True)


@hypothesis.settings(max_examples=4)  # each example compiles a `lax.map`
@hypothesis.given(st.integers(1, 13), st.integers(1, 15), st.booleans())
@hypothesis.example(n=7, block=3, remat=False)  # padded: 3 blocks of 3 rows for 7
@hypothesis.example(n=13, block=4, remat=True)  # padded: 4 blocks of 4 rows for 13
def test_row_blocks_give_the_whole_computation_with_at_most_block_rows_at_a_time(n, block,
                                                                                remat):
    """A row-wise function over blocks equals it over all rows; it is traced on blocks of at
    most `block` rows (the memory bound), `ceil(n / block)` of them padded by fewer rows than
    there are blocks."""
    rows = np.arange(n * 3, dtype=np.float32).reshape(n, 3) - 5
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return row_wise(x)

    out = blockwise.map_row_blocks(fn, jnp.asarray(rows), block, remat=remat)
    np.testing.assert_allclose(out, row_wise(rows, np), rtol=1e-6)
    assert out.shape == (n, 3)
    blocks = -(-n // block)
    assert len(set(seen)) == 1  # every trace on one block shape
    # `blocks` blocks of equal size hold the n rows, padded by fewer rows than there are blocks.
    assert seen[0] <= block and 0 <= seen[0] * blocks - n < blocks
