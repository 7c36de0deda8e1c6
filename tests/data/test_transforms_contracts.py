"""enlcn_jax.data.transforms: an index outside the group (or not an int) is a one-line error
naming it."""

import numpy as np
import pytest

from enlcn_jax.data.transforms import dihedral


@pytest.mark.parametrize('k', [-1, 8, 2.0, True, '2'])
def test_an_index_outside_the_group_is_named_in_the_error(k):
    with pytest.raises(ValueError, match=rf'^dihedral index must be an int in 0\.\.7, got {k!r}$'):
        dihedral(np.zeros((2, 3, 1)), k)


def test_a_numpy_integer_index_is_an_index():
    x = np.arange(6).reshape(2, 3, 1)
    np.testing.assert_array_equal(dihedral(x, np.int64(5)), dihedral(x, 5))
