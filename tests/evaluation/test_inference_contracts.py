"""enlcn_jax.evaluation.inference: the bucket padding and its mask, tiles cut mid-way in their
overlap, the automatic tile from the memory budget, the x8 self-ensemble, one compilation per
padded shape shared by `with_variables`, the option and input checks, `load_upscaler`.

The network is a stand-in (`Probe`) whose output is known in closed form, so every number the
upscaler puts together is checked against a NumPy computation of the same network."""

import dataclasses
import logging
import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import error_message
from enlcn_jax.data.imresize import imresize
from enlcn_jax.evaluation import inference

# The sub-pixel fingerprint added to the HR pixel (a, b) of each LR pixel: a crop or a tile
# pasted one LR pixel or one sub-pixel off shows.
FINGERPRINT = 0.01


@dataclasses.dataclass(frozen=True)
class Probe:
    """A stand-in network with the interface `ModelUpscaler` uses (`scale`, `dtype`,
    `masks_padding`, `clone`, `apply(variables, x, mask=)`, `enlca.attention`).

    kind 'local': the input (times `mask` where given, as ENLCN zeroes padding) filtered with
      the `[2r + 1, 2r + 1]` kernel `variables['w']` over zero-padded borders, a receptive-field
      radius r;
    kind 'window': channels 0, 1 of the input shifted by one pixel up and left (so the last row
      and column show the bucket padding), channel 2 the mask shifted alike, -1 without a mask;
    kind 'global': the input plus its mean over the image (what a tile sees shows).
    Each LR pixel then becomes `scale x scale` HR pixels, plus `FINGERPRINT * (a * scale + b)`."""
    kind: str = 'local'
    scale: int = 2
    dtype: str = 'float32'
    masked: bool = True
    enlca: object = dataclasses.field(
        default_factory=lambda: types.SimpleNamespace(attention='maskless_attention'))

    def masks_padding(self) -> bool:
        return self.masked

    def clone(self, **changes) -> 'Probe':
        return dataclasses.replace(self, **changes)

    def apply(self, variables, x, mask=None):
        return upsampled(jnp, lr_output(jnp, self.kind, variables['w'], x, mask), self.scale)


def lr_output(xp, kind, w, x, mask):
    """The probe's output before upsampling, in NumPy (`xp=np`) or JAX: `x [B, H, W, 3]`."""
    if kind == 'window':
        shift = lambda a: xp.roll(a, (-1, -1), axis=(1, 2))
        marks = -xp.ones_like(x[..., :1]) if mask is None else mask
        return xp.concatenate([shift(x)[..., :2], shift(marks)], axis=-1)
    if kind == 'global':
        return x + x.mean(axis=(1, 2), keepdims=True)
    if mask is not None:
        x = x * mask
    r = w.shape[0] // 2
    h, wd = x.shape[1:3]
    padded = xp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    return sum(w[dy, dx] * padded[:, dy:dy + h, dx:dx + wd]
               for dy in range(2 * r + 1) for dx in range(2 * r + 1))


def upsampled(xp, y, s):
    fingerprint = FINGERPRINT * (xp.arange(s)[:, None] * s + xp.arange(s)[None, :])
    hr = xp.repeat(xp.repeat(y, s, axis=1), s, axis=2)
    return hr + xp.tile(fingerprint, (y.shape[1], y.shape[2]))[None, :, :, None]


def expected(probe: Probe, variables: dict, lr: np.ndarray) -> np.ndarray:
    """The probe's whole-image output for `lr` (uint8 `[H, W, 3]`), in float64 NumPy."""
    x = lr[None].astype(np.float64) / 255.0
    return upsampled(np, lr_output(np, probe.kind, variables['w'], x, None), probe.scale)[0]


def weights(radius: int = 1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {'w': (rng.standard_normal((2 * radius + 1,) * 2) / (2 * radius + 1)).astype(
        np.float32)}


def random_lr(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def tiling_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if 'tiling it' in r.getMessage()]


# ---------------------------------------------------------------- options and defaults


def test_the_options_are_checked_at_their_limits_in_order():
    check = inference.ModelUpscaler.check_options
    for ok in [(1, None, 0), (1, None, -3), (1, 1, 0), (1, 8, 7), (16, 8, 0)]:
        check(*ok)
    for options, message in [((0, None, 0), 'bucket must be >= 1, got 0'),
                             ((0, 0, 9), 'bucket must be >= 1, got 0'),
                             ((1, 0, 0), 'tile must be >= 1, got 0'),
                             ((1, -2, -5), 'tile must be >= 1, got -2'),
                             ((1, 8, 8), 'tile_overlap must be in [0, tile=8), got 8'),
                             ((1, 8, -1), 'tile_overlap must be in [0, tile=8), got -1')]:
        assert error_message(lambda: check(*options)) == message, options


def test_the_constructor_checks_every_option():
    cases = [((0, None, 0), 'bucket must be >= 1, got 0'),
             ((1, 0, 0), 'tile must be >= 1, got 0'),
             ((1, 8, 8), 'tile_overlap must be in [0, tile=8), got 8')]
    for (bucket, tile, overlap), message in cases:
        make = lambda: inference.ModelUpscaler(Probe(), weights(), bucket=bucket, tile=tile,
                                               tile_overlap=overlap)
        assert error_message(make) == message


def test_the_defaults_and_what_the_results_report():
    probe = Probe(scale=3, dtype='bfloat16')
    upscaler = inference.ModelUpscaler(probe, weights())
    assert (upscaler.bucket, upscaler.tile, upscaler.tile_overlap, upscaler.self_ensemble,
            upscaler.pad_mode, upscaler.name, upscaler.memory_budget,
            upscaler.checkpoint_step) == (16, None, 0, False, 'reflect', 'enlcn', None, None)
    assert (upscaler.scale, upscaler.precision, upscaler.model) == (3, 'bfloat16', probe)
    assert upscaler.compiled_shapes == []
    given = inference.ModelUpscaler(probe, weights(), bucket=4, tile=9, tile_overlap=3,
                                    self_ensemble=True, pad_mode='edge', name='mine',
                                    memory_budget=123, checkpoint_step=40)
    assert (given.bucket, given.tile, given.tile_overlap, given.self_ensemble, given.pad_mode,
            given.name, given.memory_budget, given.checkpoint_step) == (
                4, 9, 3, True, 'edge', 'mine', 123, 40)


def test_the_bicubic_baseline_is_matlab_imresize_at_an_int_scale():
    upscaler = inference.BicubicUpscaler(np.int64(3))
    assert upscaler.scale == 3 and isinstance(upscaler.scale, int)  # np.int64 is not an int
    assert (upscaler.name, upscaler.precision, upscaler.checkpoint_step,
            tuple(upscaler.compiled_shapes)) == ('bicubic', 'float64', None, ())
    lr = random_lr((7, 5))
    np.testing.assert_array_equal(upscaler(lr), imresize(lr, 3))


# ---------------------------------------------------------------- input, output, quantisation


@pytest.mark.parametrize('lr, shown', [
    (np.zeros((4, 5, 3), np.float32), 'float32 (4, 5, 3)'),
    (np.zeros((4, 5), np.uint8), 'uint8 (4, 5)'),
    (np.zeros((4, 5, 4), np.uint8), 'uint8 (4, 5, 4)'),
    (np.zeros((1, 4, 5, 3), np.uint8), 'uint8 (1, 4, 5, 3)')])
def test_anything_but_a_uint8_rgb_image_is_refused_in_one_line(lr, shown):
    upscaler = inference.ModelUpscaler(Probe(), weights(), bucket=1)
    assert error_message(lambda: upscaler.predict(lr)) == (
        f'expected an LR image uint8 [H, W, 3], got {shown}')


def test_predict_is_float32_of_the_image_over_255_unclipped_and_the_call_quantises_it():
    probe = Probe(scale=2)
    variables = {'w': np.array([[0, 0, 0], [0, 1.5, 0], [0, 0, 0]], np.float32)}
    lr = random_lr((6, 5))
    upscaler = inference.ModelUpscaler(probe, variables, bucket=1)
    sr = upscaler.predict(lr)
    assert sr.dtype == np.float32 and sr.shape == (12, 10, 3)
    reference = expected(probe, variables, lr)
    np.testing.assert_allclose(sr, reference, atol=1e-6)
    assert sr.max() > 1.2  # not clipped
    out = upscaler(lr)
    assert out.dtype == np.uint8 and np.count_nonzero(out == 255) > 0
    np.testing.assert_array_equal(out, np.round(np.clip(sr.astype(np.float64), 0, 1) * 255))


# ---------------------------------------------------------------- bucket padding and its mask


def test_the_image_is_padded_bottom_right_to_the_bucket_and_masked_there():
    """A 5 x 6 image in buckets of 4 is padded to 8 x 8 with `pad_mode`; the mask is 1 on the
    image and 0 on the padding: the window probe shows both in its last row and column."""
    lr = random_lr((5, 6))
    x = lr.astype(np.float64) / 255.0
    for mode in ('reflect', 'edge'):
        upscaler = inference.ModelUpscaler(Probe('window', scale=2), weights(), bucket=4,
                                           pad_mode=mode)
        sr = upscaler.predict(lr)[::2, ::2]  # the sub-pixel (0, 0) of each LR pixel
        assert upscaler.compiled_shapes == [(1, 8, 8, 3)]
        padded = np.pad(x, ((0, 3), (0, 2), (0, 0)), mode=mode)
        np.testing.assert_allclose(sr[..., :2], padded[1:6, 1:7, :2], atol=1e-6)
        mask = np.zeros((5, 6))
        mask[:4, :5] = 1.0  # shifted one up and left: the last row and column are padding
        np.testing.assert_array_equal(sr[..., 2], mask)


def test_a_bucket_of_2_pads_and_masks_too():
    lr = random_lr((5, 6))
    upscaler = inference.ModelUpscaler(Probe('window', scale=1), weights(), bucket=2)
    sr = upscaler.predict(lr)
    assert upscaler.compiled_shapes == [(1, 6, 6, 3)]
    rows = np.arange(5)[:, None] < 4  # shifted up by one: the last row shows the padding
    np.testing.assert_array_equal(sr[..., 2], np.repeat(rows, 6, 1))


def test_bucket_1_compiles_each_size_unpadded_without_a_mask():
    lr = random_lr((5, 6))
    upscaler = inference.ModelUpscaler(Probe('window', scale=1), weights(), bucket=1)
    sr = upscaler.predict(lr)
    assert upscaler.compiled_shapes == [(1, 5, 6, 3)]
    np.testing.assert_array_equal(sr[..., 2], -1.0)  # no mask given
    np.testing.assert_allclose(sr[..., :2], np.roll(lr / 255.0, (-1, -1), (0, 1))[..., :2],
                               atol=1e-6)


def test_a_model_whose_attention_takes_no_mask_is_not_padded_and_this_is_logged(caplog):
    probe = Probe('window', scale=1, masked=False)
    lr = random_lr((5, 6))
    with caplog.at_level(logging.INFO):
        for bucket in (2, 16):
            upscaler = inference.ModelUpscaler(probe, weights(), bucket=bucket)
            assert upscaler.bucket == 1
            np.testing.assert_array_equal(upscaler.predict(lr)[..., 2], -1.0)
            assert upscaler.compiled_shapes == [(1, 5, 6, 3)]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert logged.count('model.attention=maskless_attention takes no mask: images are evaluated '
                        'unpadded (bucket 1; exact numbers, one compilation per image size)') == 2
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert inference.ModelUpscaler(probe, weights(), bucket=1).bucket == 1
        assert inference.ModelUpscaler(Probe(), weights(), bucket=16).bucket == 16
    assert not [r for r in caplog.records if 'takes no mask' in r.getMessage()]


def test_a_masked_bucket_gives_the_unpadded_output_and_one_compilation_per_padded_shape():
    probe = Probe(scale=3)
    variables = weights(radius=1, seed=2)
    upscaler = inference.ModelUpscaler(probe, variables, bucket=8)
    for size in [(5, 6), (8, 3), (9, 16), (5, 6)]:
        lr = random_lr(size, seed=size[0])
        sr = upscaler.predict(lr)
        assert sr.shape == (3 * size[0], 3 * size[1], 3)
        np.testing.assert_allclose(sr, expected(probe, variables, lr), atol=1e-5)
    assert upscaler.compiled_shapes == [(1, 8, 8, 3), (1, 16, 16, 3)]


def test_with_variables_runs_other_variables_and_shares_the_compiled_forwards():
    probe = Probe()
    first, second = weights(seed=0), weights(seed=1)
    upscaler = inference.ModelUpscaler(probe, first, bucket=4, name='a')
    lr = random_lr((6, 7))
    upscaler.predict(lr)
    other = upscaler.with_variables(second)
    np.testing.assert_allclose(other.predict(lr), expected(probe, second, lr), atol=1e-5)
    np.testing.assert_allclose(upscaler.predict(lr), expected(probe, first, lr), atol=1e-5)
    other.predict(random_lr((9, 3)))
    assert upscaler.compiled_shapes == other.compiled_shapes == [(1, 8, 8, 3), (1, 12, 4, 3)]
    assert (other.name, other.bucket, other.model) == ('a', 4, probe)


# ---------------------------------------------------------------- tiles


def test_tiles_cut_mid_way_in_the_overlap_give_a_convolution_s_whole_image_output():
    """Radius 2 and an overlap of 4: every kept pixel has its whole receptive field in its
    tile, so the tiled output is the whole-image one; with an overlap of 2 it is not."""
    probe = Probe(scale=2)
    variables = weights(radius=2, seed=3)
    lr = random_lr((23, 17), seed=4)
    whole = expected(probe, variables, lr)
    for bucket, compiled in [(1, (1, 8, 8, 3)), (16, (1, 16, 16, 3))]:
        tiled = inference.ModelUpscaler(probe, variables, bucket=bucket, tile=8, tile_overlap=4)
        sr = tiled.predict(lr)
        assert sr.dtype == np.float32
        np.testing.assert_allclose(sr, whole, atol=1e-5)
        assert tiled.compiled_shapes == [compiled]
    short = inference.ModelUpscaler(probe, variables, bucket=1, tile=8, tile_overlap=2)
    assert np.abs(short.predict(lr) - whole).max() > 1e-3


def test_the_spans_of_tiles_along_an_axis():
    spans = inference._tile_spans  # pylint: disable=protected-access
    assert spans(10, 4, 2) == [(0, 0, 3), (2, 3, 5), (4, 5, 7), (6, 7, 10)]
    assert spans(9, 5, 1) == [(0, 0, 4), (4, 4, 9)]
    assert spans(5, 5, 0) == [(0, 0, 5)]
    assert spans(3, 5, 2) == [(0, 0, 3)]


def explicitly_tiled(probe, variables, lr, tile, overlap):
    """The probe's output over `tile` tiles cut mid-way in `overlap`, in NumPy."""
    s = probe.scale
    out = np.zeros((lr.shape[0] * s, lr.shape[1] * s, 3))
    spans = inference._tile_spans  # pylint: disable=protected-access
    for y0, ky0, ky1 in spans(lr.shape[0], tile, overlap):
        for x0, kx0, kx1 in spans(lr.shape[1], tile, overlap):
            sr = expected(probe, variables, lr[y0:y0 + tile, x0:x0 + tile])
            out[ky0 * s:ky1 * s, kx0 * s:kx1 * s] = sr[(ky0 - y0) * s:(ky1 - y0) * s,
                                                       (kx0 - x0) * s:(kx1 - x0) * s]
    return out


@pytest.fixture
def budget(monkeypatch):
    """XLA's estimate (`needed`) and the free memory (`free`) as set by the test; counts the
    estimates asked for."""
    state = types.SimpleNamespace(needed=None, free=None, asked=0)

    def compiled_bytes(compiled):
        assert compiled is not None
        state.asked += 1
        return state.needed
    monkeypatch.setattr(inference.memory, 'compiled_bytes', compiled_bytes)
    monkeypatch.setattr(inference.memory, 'free_memory_budget', lambda: state.free)
    return state


@pytest.mark.parametrize('h, w, ratio, tile, overlap', [
    (150, 120, 1 / 4, 64, 16),    # sqrt(18000 / 4) = 67 -> 64; overlap min(16, 64 // 4)
    (20, 400, 1 / 2, 48, 12),     # sqrt(4000) = 63 -> 48, more than the short side
    (40, 40, 1 / 16, 32, 8)])     # sqrt(100) = 10 -> 0: at least 32; overlap 32 // 4
def test_an_image_over_the_memory_budget_is_tiled_from_the_budget(budget, caplog, h, w, ratio,
                                                                  tile, overlap):
    """side = sqrt(budget / needed * h * w) cut to a multiple of 16, at least 32; the overlap
    min(16, tile // 4); one warning naming the size (w x h), both MiB and the options."""
    probe = Probe('global', scale=2)
    variables = weights()
    budget.needed, budget.free = 2 ** 30, 1  # the given memory_budget, not the free memory
    upscaler = inference.ModelUpscaler(probe, variables, bucket=1,
                                       memory_budget=int(2 ** 30 * ratio))
    lr = random_lr((h, w))
    with caplog.at_level(logging.WARNING):
        sr = upscaler.predict(lr)
    assert tiling_messages(caplog) == [
        f'a {w}x{h} image needs ~1024 MiB for one forward, more than the {1024 * ratio:.0f} MiB '
        f'available: tiling it (--tile {tile} --tile_overlap {overlap})']
    np.testing.assert_allclose(sr, explicitly_tiled(probe, variables, lr, tile, overlap),
                               atol=1e-5)
    assert np.abs(sr - expected(probe, variables, lr)).max() > 1e-3


def test_the_free_memory_is_the_budget_when_none_is_given_and_tiles_are_decided_once_per_size(
        budget, caplog):
    probe = Probe('global', scale=1)
    upscaler = inference.ModelUpscaler(probe, weights(), bucket=1)
    budget.needed, budget.free = 2 ** 30, 2 ** 28
    lr = random_lr((150, 120))
    with caplog.at_level(logging.WARNING):
        first = upscaler.predict(lr)
        np.testing.assert_array_equal(upscaler.predict(lr), first)
    assert budget.asked == 1 and len(tiling_messages(caplog)) == 1
    assert tiling_messages(caplog)[0].endswith('than the 256 MiB available: tiling it '
                                               '(--tile 64 --tile_overlap 16)')
    assert upscaler.compiled_shapes[-1] == (1, 64, 64, 3)
    upscaler.predict(random_lr((40, 40)))  # another size is decided again
    assert budget.asked == 2


@pytest.mark.parametrize('needed, free, given', [
    (1000, None, 1000),   # exactly the budget fits
    (10 ** 9, None, None),  # no budget known
    (None, 10, None),     # no estimate
])
def test_an_image_within_the_budget_or_without_a_budget_or_estimate_is_whole(budget, caplog,
                                                                             needed, free, given):
    probe = Probe('global', scale=2)
    variables = weights()
    budget.needed, budget.free = needed, free
    upscaler = inference.ModelUpscaler(probe, variables, bucket=1, memory_budget=given)
    lr = random_lr((40, 36))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(upscaler.predict(lr), expected(probe, variables, lr),
                                   atol=1e-5)
    assert upscaler.compiled_shapes == [(1, 40, 36, 3)] and not tiling_messages(caplog)


def test_one_byte_over_the_budget_is_tiled(budget, caplog):
    budget.needed = 1001
    upscaler = inference.ModelUpscaler(Probe('global'), weights(), bucket=1, memory_budget=1000)
    with caplog.at_level(logging.WARNING):
        upscaler.predict(random_lr((40, 36)))
    assert tiling_messages(caplog)[0].endswith('(--tile 32 --tile_overlap 8)')


def test_an_explicit_tile_uses_its_own_overlap_and_no_estimate(budget):
    probe = Probe('global', scale=2)
    variables = weights()
    budget.needed, budget.free = 2 ** 40, 1
    upscaler = inference.ModelUpscaler(probe, variables, bucket=1, tile=16, tile_overlap=6)
    lr = random_lr((30, 21))
    np.testing.assert_allclose(upscaler.predict(lr),
                               explicitly_tiled(probe, variables, lr, 16, 6), atol=1e-5)
    assert budget.asked == 0 and upscaler.compiled_shapes == [(1, 16, 16, 3)]


# ---------------------------------------------------------------- self-ensemble


def test_the_self_ensemble_is_the_float32_mean_of_the_8_back_transformed_outputs():
    probe = Probe(scale=2)
    variables = weights(radius=1, seed=5)  # an asymmetric kernel: not equivariant
    lr = random_lr((9, 7), seed=6)
    outputs = []
    for flip in (False, True):
        for turns in range(4):
            transformed = np.rot90(lr[:, ::-1] if flip else lr, turns)
            back = np.rot90(expected(probe, variables, np.ascontiguousarray(transformed)),
                            -turns)
            outputs.append(back[:, ::-1] if flip else back)
    mean = np.mean(outputs, axis=0)
    assert min(np.abs(out - mean).max() for out in outputs) > 1e-3
    ensemble = inference.ModelUpscaler(probe, variables, bucket=1, self_ensemble=True)
    sr = ensemble.predict(lr)
    assert sr.dtype == np.float32
    np.testing.assert_allclose(sr, mean, atol=1e-5)
    assert ensemble.compiled_shapes == [(1, 9, 7, 3), (1, 7, 9, 3)]
    # Each transformed image goes through the tiles (radius 1, overlap 2: exact).
    tiled = inference.ModelUpscaler(probe, variables, bucket=1, tile=4, tile_overlap=2,
                                    self_ensemble=True)
    np.testing.assert_allclose(tiled.predict(lr), mean, atol=1e-5)
    assert tiled.compiled_shapes == [(1, 4, 4, 3)]


# ---------------------------------------------------------------- load_upscaler


def test_load_upscaler_passes_the_checkpoint_s_model_step_and_the_options(monkeypatch):
    calls = []

    def load_model(checkpoint, which, *, trust_code, allow_changed_code):
        calls.append((checkpoint, which, trust_code, allow_changed_code))
        return Probe(dtype='float32'), weights(), 7
    monkeypatch.setattr(inference.checkpoints, 'load_model', load_model)

    plain = inference.load_upscaler('run')
    assert calls.pop() == ('run', 'latest', False, False)
    np.testing.assert_array_equal(plain.variables['w'], weights()['w'])
    assert (plain.precision, plain.model.dtype, plain.checkpoint_step, plain.bucket) == (
        'float32', 'float32', 7, 16)

    given = inference.load_upscaler('run', 'best', 'bfloat16', allow_changed_code=True,
                                    bucket=2, name='mine', tile=8, tile_overlap=3)
    assert calls.pop() == ('run', 'best', False, True)
    assert (given.precision, given.model.dtype, given.checkpoint_step) == ('bfloat16', 'bfloat16',
                                                                          7)
    assert (given.bucket, given.name, given.tile, given.tile_overlap) == (2, 'mine', 8, 3)
    inference.load_upscaler('run', trust_code=True)
    assert calls.pop() == ('run', 'latest', True, False)
