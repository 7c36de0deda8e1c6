"""enlcn_jax.research.kernel_study at the edges of its documented contract: Eq. 7 against its
closed form and a Monte Carlo of the positive-feature estimator, the unbiasedness rule on ratios
chosen by hand (each side of the standard-error bound and of the negligible bias), the study's
feature maps with eps at 0, a one-position study (every number known), the defaults, the rows'
layout, the one-line summary and what `plot_study` draws."""

import functools
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from enlcn_jax.nn import features
from enlcn_jax.research import kernel_study


def test_eq7_is_the_closed_form_per_pair():
    """`exp(q.k)^2 (exp(|q + k|^2) - 1) / m` per row of `[P, d]` (P != d), in float64 NumPy."""
    rng = np.random.default_rng(0)
    q, k = 0.6 * rng.normal(size=(3, 2)), 0.6 * rng.normal(size=(3, 2))
    expected = np.exp(2 * np.sum(q * k, -1)) * (np.exp(np.sum((q + k) ** 2, -1)) - 1) / 5
    measured = kernel_study.eq7_variance(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), 5)
    assert measured.shape == (3,)
    np.testing.assert_allclose(np.asarray(measured), expected, rtol=1e-5)


def test_eq7_is_the_variance_of_the_positive_feature_estimate():
    """Choromanski et al. 2021 (Performers), Lemma 2: with w ~ N(0, I) iid, one feature's
    `exp(w.q - |q|^2/2) exp(w.k - |k|^2/2)` has mean exp(q.k) and the variance of Eq. 7 at
    m = 1; m features divide it by m. Measured over 400 000 draws (|q + k|^2 = 0.5)."""
    q, k = np.array([0.5, 0.1]), np.array([0.1, 0.3])
    w = np.random.default_rng(1).normal(size=(400_000, 2))
    estimate = np.exp(w @ q - q @ q / 2) * np.exp(w @ k - k @ k / 2)
    eq7 = float(kernel_study.eq7_variance(jnp.asarray(q[None], jnp.float32),
                                          jnp.asarray(k[None], jnp.float32), 1)[0])
    assert estimate.mean() == pytest.approx(np.exp(q @ k), rel=5e-3)
    assert estimate.var() == pytest.approx(eq7, rel=3e-2)
    assert float(kernel_study.eq7_variance(jnp.asarray(q[None], jnp.float32),
                                           jnp.asarray(k[None], jnp.float32), 4)[0]) == \
        pytest.approx(eq7 / 4, rel=1e-6)


def ratio_feature_map(x, projection):
    """A one-feature map whose `phi(q) . phi(k) / exp(q.k)` is `projection[0, 0]` for q = k at
    every amplification: `sqrt(F00) exp(|x|^2 / 2)`. `[..., d] -> [..., 1]`."""
    return jnp.sqrt(projection[0, 0]) * jnp.exp(0.5 * jnp.sum(x * x, -1, keepdims=True))


def unbiased(ratios):
    """`is_unbiased_estimate` of an estimate whose per-draw mean ratio to exp(q.k) is `ratios`
    (three draws), on four pairs q = k."""
    q = jnp.asarray(np.eye(2)[[0, 1, 0, 1]], jnp.float32)
    projections = np.zeros((len(ratios), 1, 2), np.float32)
    projections[:, 0, 0] = ratios
    return kernel_study.is_unbiased_estimate(q, q, jnp.asarray(projections), ratio_feature_map)


def test_an_estimate_is_unbiased_within_four_standard_errors_plus_a_negligible_bias():
    """Three draws with ratios 1 + b + (-c, 0, c): standard deviation c (ddof 1), standard error
    c / sqrt(3); unbiased when |b| <= 4 c / sqrt(3) + 1e-3 (c = 0.01: 0.0241)."""
    c = np.array([-0.01, 0.0, 0.01])
    assert unbiased(1.0 + c)
    assert not unbiased(1.0 + 0.03 + c)  # inside sqrt(3) (not 1 / sqrt(3)) or ddof 2 bounds
    assert unbiased(1.0 + 0.022 + c)  # outside the bound with ddof 0 (0.0198)
    assert not unbiased(1.0 - 0.03 + c)
    assert unbiased(np.full(3, 1.0005))  # a constant bias under 1e-3 is negligible
    assert not unbiased(np.full(3, 1.002))
    assert not unbiased(np.full(3, 2.0))


def test_the_study_measures_each_map_with_eps_at_zero_unless_its_spec_sets_it(monkeypatch):
    """softmax_kernel and relu (eps options 1e-4 and 1e-3) with eps 0; a map without the option
    as it is; a spec that sets eps keeps it (`get_feature_map` stood in for by its result for
    'softmax_kernel(eps=0.5)', a partial with `eps` bound: checking a new spec compiles for
    seconds)."""
    rng = np.random.default_rng(2)
    x, f = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    run = lambda phi: np.asarray(phi(jnp.asarray(x, jnp.float32), jnp.asarray(f, jnp.float32)))
    features_with = lambda eps: (np.exp(x @ f.T - 0.5 * np.sum(x * x, -1, keepdims=True)) + eps) / np.sqrt(5)
    np.testing.assert_allclose(run(kernel_study.study_feature_map('softmax_kernel')),
                               features_with(0.0), rtol=1e-5)
    np.testing.assert_allclose(run(kernel_study.study_feature_map('relu')),
                               np.maximum(x @ f.T, 0) / np.sqrt(5), rtol=1e-5, atol=1e-7)
    assert kernel_study.study_feature_map('favor_hyperbolic') is features.hyperbolic_features
    set_by_spec = functools.partial(features.softmax_kernel_features, eps=0.5)
    monkeypatch.setattr(features, 'get_feature_map', lambda spec: set_by_spec)
    assert kernel_study.study_feature_map('softmax_kernel(eps=0.5)') is set_by_spec


def one_position():
    """The embeddings of a one-pixel image, q and k orthogonal (their norms do not matter)."""
    return (jnp.asarray([[3.0, 4.0]], jnp.float32), jnp.asarray([[-8.0, 6.0]], jnp.float32),
            jnp.asarray([[0.3, -1.2]], jnp.float32))


def test_a_one_position_study_has_no_output_error_and_eq7_s_variance():
    """With one key, softmax and ENLA both return its value: output error 0. Every pair is
    (q, k) at |q|^2 = |k|^2 = k_amp, q.k = 0: Eq. 7's relative variance is
    (exp(2 k_amp) - 1) / m, and the relative mean square error is the relative variance plus the
    squared bias of the mean ratio."""
    rows = kernel_study.approximation_study(*one_position(), ks=[0.5], ms=[4], draws=2, pairs=3,
                                            projections=('iid',))
    (row,) = rows
    assert list(row) == ['k', 'm', 'feature_map', 'projection', 'unbiased',
                         *kernel_study.STUDY_COLUMNS]
    assert (row['k'], row['m'], row['feature_map'], row['projection'], row['unbiased']) == (
        0.5, 4, 'softmax_kernel', 'iid', True)
    assert row['output_rel_error'] == pytest.approx(0.0, abs=1e-6)
    assert row['eq7_rel_var'] == pytest.approx((np.exp(2 * 0.5) - 1) / 4, rel=1e-5)
    assert row['kernel_rel_rmse'] ** 2 == pytest.approx(
        row['kernel_rel_var'] + (row['mean_ratio'] - 1) ** 2, rel=1e-4)


def test_draws_below_two_are_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        kernel_study.approximation_study(*one_position(), ks=[1.0], ms=[2], draws=1)
    assert str(error.value) == 'draws must be >= 2 (a standard error needs two), got 1'
    rows = kernel_study.approximation_study(*one_position(), ks=[1.0], ms=[2], draws=2,
                                            projections=('iid',))
    assert len(rows) == 1 and np.isfinite(rows[0]['mean_ratio'])


def test_the_defaults_are_seed_0_256_pairs_and_1024_output_rows():
    """On N = 1025 positions the default study is the one with `draws=64, seed=0, pairs=256,
    output_rows=1024` given, measurement for measurement."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(1025, c)), jnp.float32) for c in (2, 2, 1))
    study = lambda **kw: kernel_study.approximation_study(q, k, v, ks=[1.0], ms=[2],
                                                          projections=('iid',), **kw)
    (default,), (given,) = study(), study(draws=64, seed=0, pairs=256, output_rows=1024)
    for column in kernel_study.STUDY_COLUMNS:
        assert default[column] == given[column], column


def test_rows_come_per_k_then_m_map_and_sampler_with_null_kernel_columns_where_biased():
    """Every (k, m, map, projection), k outermost, in the order given; a function is named by its name; the stable
    map (a factor exp(-c)) does not estimate exp(q.k), so its kernel columns are None."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(6, c)), jnp.float32) for c in (2, 2, 1))
    rows = kernel_study.approximation_study(
        q, k, v, ks=[1.0, 0.5], ms=[2], draws=8, pairs=16,
        feature_maps=('softmax_kernel_stable', features.softmax_kernel_features),
        projections=('iid', 'orthogonal'))
    assert [(r['k'], r['m'], r['feature_map'], r['projection']) for r in rows] == list(
        itertools.product([1.0, 0.5], [2], ['softmax_kernel_stable', 'softmax_kernel_features'],
                          ['iid', 'orthogonal']))
    for row in rows:
        kernel = [row[column] for column in kernel_study.KERNEL_COLUMNS]
        if row['feature_map'] == 'softmax_kernel_stable':
            assert row['unbiased'] is False and kernel == [None, None, None]
        else:
            assert all(isinstance(value, float) for value in kernel), row


def study_row(feature_map, projection, k, m, unbiased, **columns):
    row = {'k': k, 'm': m, 'feature_map': feature_map, 'projection': projection,
           'unbiased': unbiased, 'mean_ratio': 0.5 + k / 10 + m / 1000,
           'kernel_rel_var': None, 'kernel_rel_rmse': None, 'eq7_rel_var': None,
           'output_rel_error': 0.1 * k + 1 / m}
    if unbiased:
        row.update(kernel_rel_var=k * 10 + 1 / m, kernel_rel_rmse=k, eq7_rel_var=k * 20 + 2 / m)
    row.update(columns)
    return row


def test_describe_estimates_has_one_line_per_map_and_sampler_in_row_order():
    """The lines follow the rows' first appearance; a biased pair lists its mean ratio at the
    largest m, by increasing k."""
    rows = [study_row('softmax_kernel', 'iid', 1.0, 8, True),
            study_row('relu', 'iid', 6.0, 8, False, mean_ratio=0.25),
            study_row('relu', 'iid', 1.0, 8, False, mean_ratio=0.5),
            study_row('relu', 'iid', 1.0, 2, False, mean_ratio=0.125),
            study_row('mine', 'orthogonal', 2.5, 8, False, mean_ratio=1.23456)]
    assert kernel_study.describe_estimates(rows) == [
        'softmax_kernel, iid: estimates exp(q.k): yes',
        'relu, iid: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) at m = 8: 0.5 at k = 1, '
        '0.25 at k = 6; kernel columns null)',
        'mine, orthogonal: estimates exp(q.k): no (mean phi(q).phi(k) / exp(q.k) at m = 8: 1.23 '
        'at k = 2.5; kernel columns null)']


PROJECTIONS = ('iid', 'orthogonal', 'haar', 'mine')
MARKERS = 'os^D'
KS, MS = (6.9, 1.0, 5.8), (16, 2, 8)  # k_ref 5.8 (nearest to 6), m_ref 16


def study_rows():
    """softmax_kernel estimates exp(q.k) under every sampler, relu under none; unsorted k, m."""
    return [study_row(spec, name, k, m, spec == 'softmax_kernel')
            for spec, name, k, m in itertools.product(('softmax_kernel', 'relu'), PROJECTIONS,
                                                      KS, MS)]


def lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_study_draws_the_variance_against_k_and_m_and_the_output_error_for_all(
        saved_figures, tmp_path):
    rows = study_rows()
    out = kernel_study.plot_study(rows, tmp_path / 'study.png')
    assert out == tmp_path / 'study.png' and out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    (fig,) = saved_figures
    by_k, by_m, output = fig.axes
    assert [b.y0 for b in (ax.get_position() for ax in fig.axes)] == [by_k.get_position().y0] * 3
    assert by_k.get_position().x1 <= by_m.get_position().x0 <= by_m.get_position().x1 <= \
        output.get_position().x0
    assert [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in fig.axes] == [
        ('amplification k', 'Var / exp(q.k)^2', 'kernel estimate, m = 16'),
        ('random features m', 'Var / exp(q.k)^2', 'kernel estimate, k = 5.8'),
        ('amplification k', 'relative error', 'attention output vs exact softmax, m = 16')]
    assert (by_k.get_xscale(), by_k.get_yscale()) == ('linear', 'log')
    assert (by_m.get_xscale(), by_m.get_yscale()) == ('log', 'log')
    not_drawn = ('not estimates of exp(q.k), not drawn:\n'
                 + '\n'.join(f'relu, {name}' for name in PROJECTIONS))
    ks, ms = sorted(KS), sorted(MS)
    for color, spec in enumerate(('softmax_kernel', 'relu')):
        for name, marker in zip(PROJECTIONS, MARKERS):
            label = f'{spec}, {name}'
            own = [r for r in rows if (r['feature_map'], r['projection']) == (spec, name)]
            at = lambda k, m: next(r for r in own if (r['k'], r['m']) == (k, m))  # pylint: disable=cell-var-from-loop
            drawn_lines = [lines(output)[label]]
            np.testing.assert_array_equal(drawn_lines[0].get_xydata(),
                                          [(k, at(k, 16)['output_rel_error']) for k in ks])
            if spec == 'softmax_kernel':
                drawn_lines += [lines(by_k)[label], lines(by_m)[label]]
                np.testing.assert_array_equal(drawn_lines[1].get_xydata(),
                                              [(k, at(k, 16)['kernel_rel_var']) for k in ks])
                np.testing.assert_array_equal(drawn_lines[2].get_xydata(),
                                              [(m, at(5.8, m)['kernel_rel_var']) for m in ms])
                assert drawn_lines[1].get_linestyle() == drawn_lines[2].get_linestyle() == 'None'
            else:
                assert label not in lines(by_k) and label not in lines(by_m)
            for line in drawn_lines:
                assert (line.get_marker(), line.get_color()) == (marker, f'C{color}'), label
    eq7 = {(r['k'], r['m']): r['eq7_rel_var'] for r in rows if r['unbiased']}
    for ax, points in ((by_k, [(k, eq7[(k, 16)]) for k in ks]),
                       (by_m, [(m, eq7[(5.8, m)]) for m in ms])):
        eq7_line = lines(ax)['Eq. 7']
        np.testing.assert_array_equal(eq7_line.get_xydata(), points)
        assert (eq7_line.get_color(), eq7_line.get_linestyle(), eq7_line.get_marker()) == (
            'k', '-', 'None')
        assert lines(ax)[not_drawn].get_linestyle() == 'None'
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines(ax))
    assert not_drawn not in lines(output)
    assert [t.get_text() for t in output.get_legend().get_texts()] == list(lines(output))
    assert all(ax.xaxis.get_gridlines()[0].get_visible() for ax in fig.axes)


def test_plot_study_of_maps_that_all_estimate_exp_qk_lists_none_as_not_drawn(
        saved_figures, tmp_path):
    """One amplification: one point per pair and panel; nothing listed as not drawn."""
    rows = [r for r in study_rows() if r['feature_map'] == 'softmax_kernel' and r['k'] == 5.8]
    kernel_study.plot_study(rows, tmp_path / 'study.png')
    by_k, by_m, output = saved_figures[0].axes
    for ax in (by_k, by_m):
        assert not any(label.startswith('not estimates') for label in lines(ax))
    assert [len(line.get_xdata()) for line in output.get_lines()] == [1] * len(PROJECTIONS)
    assert len(lines(by_k)['softmax_kernel, iid'].get_xdata()) == 1
