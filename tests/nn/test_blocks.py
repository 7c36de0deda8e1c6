"""The attention-block contract (`model.block`): what `models.check_block` refuses and accepts,
and every example block through training, evaluation and the research tools."""

import importlib
import json
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata

from conftest import REPO, tiny_config
from enlcn_jax import visualize
from enlcn_jax.data import image_io, sources
from enlcn_jax.evaluation import evaluator, inference
from enlcn_jax.nn import attention, models
from enlcn_jax.train import loop

sys.path.insert(0, str(REPO))
from examples import temperature_block  # pylint: disable=wrong-import-position


def rngs() -> dict:
    """The init rngs (made when called: no XLA at import, for mutmut's fork server)."""
    return {'params': jax.random.key(0), models.RANDOM_FEATURES: jax.random.key(1)}


class FromScratch(nn.Module):
    """A block written without ENLCA: one Dense for q | k | v, exact softmax attention.
    `sown(q, k, v)` is what it sows (None: nothing); `honours_mask=False` drops the mask."""
    config: models.ENLCAConfig = models.ENLCAConfig()
    res_scale: float = 0.1
    dtype: Any = jnp.float32
    sown = staticmethod(lambda q, k, v: (q, k, v))
    honours_mask = True

    @nn.compact
    def __call__(self, x, mask=None):
        b, h, w, c = x.shape
        d = c // self.config.reduction
        embedded = nn.Dense(2 * d + c, name='embed')(x.reshape(b, h * w, c))
        unit = lambda e: models.l2_normalize(e, 1e-6)
        q, k, v = unit(embedded[..., :d]), unit(embedded[..., d:2 * d]), embedded[..., 2 * d:]
        sown = self.sown(q, k, v)
        if sown is not None:
            self.sow('intermediates', 'embeddings', sown)
        flat_mask = None if mask is None or not self.honours_mask else mask.reshape(b, h * w, 1)
        y = attention.exact_attention(q, k, v, mask=flat_mask).reshape(x.shape)
        return x + self.res_scale * y, (q, k)


class NoSow(FromScratch):
    sown = staticmethod(lambda q, k, v: None)


class RawSow(FromScratch):
    """Sows theta | delta | value concatenated, as ENLCA once did."""
    sown = staticmethod(lambda q, k, v: jnp.concatenate([q, k, v], -1))


class IgnoresMask(FromScratch):
    honours_mask = False


@pytest.mark.parametrize('block, message', [
    (NoSow, "the block does not sow ('intermediates', 'embeddings'): the research tools read "
            "its attention's inputs, self.sow('intermediates', 'embeddings', (q, k, v))"),
    (RawSow, "the block sows ('intermediates', 'embeddings') = ([2, 12, 12],); expected one "
             'tuple (q, k, v) as its attention receives them: q, k [2, 12, 2] as returned, '
             'v [2, 12, c]'),
    (IgnoresMask, 'the block ignores its mask: y at real positions (mask 1) changes by '),
])
def test_a_block_breaking_the_contract_is_refused_in_one_line_naming_what_is_missing(
        block, message):
    with pytest.raises(ValueError) as error:
        models.check_block(block)
    assert str(error.value).startswith(message)
    with pytest.raises(ValueError) as error:
        models.BLOCKS.get(block)
    line = str(error.value)
    assert len(line.splitlines()) == 1
    assert line.startswith(f"model.block='{block.__qualname__}': not a valid attention block: "
                           f'ValueError: {message}')


def test_a_block_written_from_scratch_enlca_and_the_example_keep_the_contract():
    for block in (FromScratch, models.ENLCA, temperature_block.LearnedAmplificationENLCA):
        models.check_block(block)


def test_enlca_sows_what_its_attention_receives():
    """ENLCA's sown (q, k, v) are its returned q, k, and v makes its output: attention over
    (q, k, v) by the configured function, times res_scale, plus x, is y."""
    config = models.ENLCAConfig(num_random_features=8)
    block = models.ENLCA(config, res_scale=0.5)
    x = jax.random.normal(jax.random.key(2), (1, 3, 5, 8))
    (y, (q, k)), variables = block.init_with_output(rngs(), x, mutable=True)
    (sown_q, sown_k, v), = variables['intermediates']['embeddings']
    np.testing.assert_array_equal(sown_q, q)
    np.testing.assert_array_equal(sown_k, k)
    np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), np.sqrt(6.0), rtol=1e-5)
    projection = variables[models.RANDOM_FEATURES]['projection']
    out = config.attend(q, k, v, projection, spatial_shape=(3, 5)).reshape(x.shape)
    np.testing.assert_allclose(y, x + 0.5 * out, rtol=1e-5, atol=1e-6)


def test_a_subclass_overriding_embed_adds_its_parameters_to_enlca_s():
    """The example's `embed` creates a parameter of its own beside ENLCA's unchanged ones, and
    k is its amplification: q and k have norm sqrt(exp(log_amplification))."""
    x = jax.random.normal(jax.random.key(2), (1, 3, 5, 8))
    enlca = models.ENLCA().init(rngs(), x)
    example = temperature_block.LearnedAmplificationENLCA()
    variables = example.init(rngs(), x)
    assert set(variables['params']) == set(enlca['params']) | {'log_amplification'}
    assert jax.tree.map(jnp.shape, enlca['params']) == jax.tree.map(
        jnp.shape, {name: p for name, p in variables['params'].items()
                    if name != 'log_amplification'})
    params = {**variables['params'], 'log_amplification': jnp.log(jnp.float32(2.0))}
    _, (q, k) = example.apply({**variables, 'params': params}, x)
    np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), np.sqrt(2.0), rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(k, axis=-1), np.sqrt(2.0), rtol=1e-5)


def example_blocks() -> list[str]:
    """`examples.<module>:<name>` of every Flax module class defined in examples/*.py with the
    contract's fields (`config`, `res_scale`, `dtype`)."""
    found = []
    for path in sorted((REPO / 'examples').glob('*.py')):
        module = importlib.import_module(f'examples.{path.stem}')
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, nn.Module)
                    and obj.__module__ == module.__name__
                    and {'config', 'res_scale', 'dtype'} <= set(obj.__dataclass_fields__)):
                found.append(f'{module.__name__}:{name}')
    return found


def test_the_examples_hold_a_block():
    assert 'examples.temperature_block:LearnedAmplificationENLCA' in example_blocks()


@pytest.mark.parametrize('spec', example_blocks())
def test_an_example_block_trains_evaluates_padded_exactly_and_feeds_the_research_tools(
        spec, tmp_path, capsys):
    """Two training steps with the contrastive loss on, then: the block keeps the contract,
    evaluation gives the same PSNR unpadded and padded to buckets of 16, and `visualize maps`
    and `variance` run on the trained workdir (trusted: the block is outside the package)."""
    models.check_block(models.BLOCKS.get(spec))
    workdir = tmp_path / 'run'
    loop.train_and_evaluate(tiny_config(model__block=spec, train__epochs=1,
                                        train__steps_per_epoch=2,
                                        train__contrastive__start_epoch=0,
                                        data__val_source='none'), workdir)
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert np.isfinite([r['train/loss'] for r in records if 'train/loss' in r]).all()

    hr = tmp_path / 'hr'
    hr.mkdir()
    image_io.save_image(hr / 'crop.png', skdata.chelsea()[:38, :46])
    psnr = {}
    for bucket in (1, 16):
        upscaler = inference.load_upscaler(workdir, bucket=bucket, trust_code=True)
        psnr[bucket] = evaluator.evaluate_dataset(sources.find_dataset(str(hr), 2), upscaler,
                                                  progress=False).summary()['psnr']
    assert np.isfinite(psnr[1]) and psnr[16] == pytest.approx(psnr[1], abs=1e-5)

    common = ['--checkpoint', str(workdir), '--trust_code', '--max_side', '16', '--module', '1']
    visualize.main(['maps', *common, '--pixel', '3,2', '--out', str(tmp_path / 'maps')])
    visualize.main(['variance', *common, '--ks', '1,6', '--ms', '8', '--draws', '2',
                    '--projection', 'iid', '--out', str(tmp_path / 'variance')])
    assert 'softmax_kernel, iid: estimates exp(q.k)' in capsys.readouterr().out
    maps = json.loads((tmp_path / 'maps.json').read_text())
    assert list(maps) == ['ENLA', 'softmax k', 'ENLCA (enla)']
    assert len(json.loads((tmp_path / 'variance.json').read_text())) == 2
