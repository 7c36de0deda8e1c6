"""The random-feature approximation study (research/kernel_study)."""

import jax.numpy as jnp
import numpy as np

from conftest import unit
from enlcn_jax.nn import features
from enlcn_jax.research import kernel_study


def doubled_softmax_kernel(x, projection):
    """A researcher's feature map whose `phi(q).phi(k)` estimates `2 exp(q.k)`."""
    return 2 ** 0.5 * features.softmax_kernel_features(x, projection, eps=0.0)


def gaussian_embeddings(n, d, c, seed=3):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32)
                 for shape in ((n, d), (n, d), (n, c)))


def test_study_reproduces_eq7_on_gaussian_inputs():
    """The iid variance measured on Gaussian embeddings is Eq. 7's; the measurement is compiled
    once, shared by both samplers and both amplifications."""
    compiled = kernel_study._approximation_errors._cache_size()
    rows = kernel_study.approximation_study(*gaussian_embeddings(64, 8, 4), ks=[0.5, 1.0], ms=[16],
                                         draws=4000, pairs=64)
    assert kernel_study._approximation_errors._cache_size() == compiled + 1
    iid = [r for r in rows if r['projection'] == 'iid']
    for row in iid:
        assert row['unbiased'], row
        assert abs(row['kernel_rel_var'] / row['eq7_rel_var'] - 1) < 0.1, row
        assert abs(row['mean_ratio'] - 1) < 0.02, row
    # The variance grows with the amplification k (Eq. 7).
    assert iid[1]['eq7_rel_var'] > iid[0]['eq7_rel_var']
    assert iid[1]['kernel_rel_var'] > iid[0]['kernel_rel_var']


def test_the_study_says_which_maps_estimate_exp_qk_and_compares_all_by_output(tmp_path):
    """The stabilised map (its features carry a factor exp(-c)), ReLU features (another kernel)
    and a researcher's map estimating 2 exp(q.k) are not unbiased estimates of exp(q.k): their
    kernel columns are null and their mean ratio says by how much they differ. The output
    error stays: the stabilised map's equals the softmax kernel's (ENLA's ratio cancels c)."""
    rows = kernel_study.approximation_study(
        *gaussian_embeddings(64, 8, 4), ks=[1.0], ms=[16], draws=64, pairs=64,
        feature_maps=('softmax_kernel', 'softmax_kernel_stable', 'relu', doubled_softmax_kernel),
        projections=('iid',))
    by_map = {row['feature_map']: row for row in rows}
    assert {name: row['unbiased'] for name, row in by_map.items()} == {
        'softmax_kernel': True, 'softmax_kernel_stable': False, 'relu': False,
        'doubled_softmax_kernel': False}
    for row in rows:
        assert np.isfinite(row['output_rel_error']) and np.isfinite(row['mean_ratio'])
        kernel = [row[column] for column in kernel_study.KERNEL_COLUMNS]
        assert all(np.isfinite(kernel)) if row['unbiased'] else kernel == [None, None, None]
    assert abs(by_map['doubled_softmax_kernel']['mean_ratio'] - 2) < 0.1
    assert by_map['relu']['mean_ratio'] < 0.5 and by_map['softmax_kernel_stable']['mean_ratio'] < 0.5
    np.testing.assert_allclose(by_map['softmax_kernel_stable']['output_rel_error'],
                               by_map['softmax_kernel']['output_rel_error'], rtol=1e-3)
    assert kernel_study.describe_estimates(rows)[:2] == [
        'softmax_kernel, iid: estimates exp(q.k): yes',
        'softmax_kernel_stable, iid: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) at '
        f"m = 16: {by_map['softmax_kernel_stable']['mean_ratio']:.3g} at k = 1; kernel columns "
        'null)']
    assert kernel_study.plot_study(rows, tmp_path / 'study.png').stat().st_size > 1000


def test_the_output_error_is_enla_against_softmax_on_the_chosen_query_rows():
    """Measured on some query rows, each against every key: the mean over the first
    `OUTPUT_DRAWS` projections of |ENLA - softmax| / |softmax| over those rows of the full
    attentions (here in float64 NumPy)."""
    theta, delta, value = (np.asarray(e, np.float64) for e in gaussian_embeddings(40, 4, 3))
    q, k = 2 * unit(theta), 2 * unit(delta)
    rows, pairs = np.asarray([3, 17, 29, 30]), np.arange(5)
    projections = np.random.default_rng(4).normal(size=(20, 8, 4))
    scores = np.exp(q @ k.T)
    exact = scores @ value / scores.sum(-1, keepdims=True)
    phi = lambda u, f: np.exp(u @ f.T - 0.5 * np.sum(u * u, -1, keepdims=True)) / np.sqrt(8)
    errors = []
    for f in projections[:kernel_study.OUTPUT_DRAWS]:
        weights = phi(q, f) @ phi(k, f).T
        enla = weights @ value / weights.sum(-1, keepdims=True)
        errors.append(np.linalg.norm((enla - exact)[rows]) / np.linalg.norm(exact[rows]))
    measured = kernel_study._approximation_errors(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, value)), pairs, pairs, rows,
        jnp.asarray(exact[rows], jnp.float32), jnp.asarray(projections, jnp.float32),
        phi=kernel_study.study_feature_map('softmax_kernel'))
    np.testing.assert_allclose(measured['output_rel_error'], np.mean(errors), rtol=1e-4)


def test_the_study_sees_only_the_directions_of_the_queries_and_keys():
    """The study applies its own amplifications to q/|q|, k/|k|: rescaling the rows of q and k
    (as a block's own amplification does) leaves every measurement unchanged."""
    q, k, v = gaussian_embeddings(32, 4, 3)
    scales = jnp.linspace(0.5, 3.0, 32)[:, None]
    study = lambda q, k: kernel_study.approximation_study(q, k, v, ks=[2.0], ms=[8], draws=4,
                                                       pairs=16, projections=('iid',))
    for given, rescaled in zip(study(q, k), study(scales * q, 6.0 * k)):
        assert given.keys() == rescaled.keys()
        for column in kernel_study.STUDY_COLUMNS:
            np.testing.assert_allclose(rescaled[column], given[column], rtol=1e-4)
