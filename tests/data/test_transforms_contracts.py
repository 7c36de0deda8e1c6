"""enlcn_jax.data.transforms: an index outside the group is a one-line error naming it."""

import numpy as np
import pytest

from enlcn_jax.data.transforms import dihedral


@pytest.mark.parametrize('k', [-1, 8])
def test_an_index_outside_the_group_is_named_in_the_error(k):
    with pytest.raises(ValueError, match=rf'^dihedral index must be in 0\.\.7, got {k!r}$'):
        dihedral(np.zeros((2, 3, 1)), k)
