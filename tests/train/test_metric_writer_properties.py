"""Properties of `metrics.jsonl` for all values and files (hypothesis; settings pinned in
tests/conftest.py): strict JSON that keeps every finite value, and a resume that keeps exactly the
records up to its step."""

import json
import math
import tempfile
from pathlib import Path

import hypothesis
from hypothesis import strategies as st

from enlcn_jax.train import metric_writer

names = st.sampled_from(['train/loss', 'train/lr', 'val/psnr_y', 'val/ssim_y', 'grad_norm'])
scalars = st.dictionaries(names, st.one_of(st.none(), st.floats(), st.integers(-10**6, 10**6)),
                          max_size=5)


def refuse(constant):
    raise AssertionError(f'not strict JSON: {constant}')


@hypothesis.given(st.integers(0, 10**9), scalars)
def test_a_record_is_strict_json_that_keeps_finite_values_and_names_the_others(step, values):
    line = metric_writer.json_record(step, values)
    assert '\n' not in line
    record = json.loads(line, parse_constant=refuse)
    assert record.pop('step') == step
    nonfinite = [k for k, v in values.items() if v is not None and not math.isfinite(v)]
    assert record.pop('nonfinite', []) == nonfinite
    assert record == {k: None if k in nonfinite else v for k, v in values.items()}


lines = st.one_of(
    st.builds(lambda step, values: metric_writer.json_record(step, values),
              st.integers(0, 30), scalars),
    st.sampled_from(['{"step": 3, "train/lo', '', 'garbage', '{"step": "4"}', '[1, 2]',
                     '{"step": 2.0}', '{"step": true}', '{"no_step": 1}']))


@hypothesis.settings(max_examples=50)
@hypothesis.given(st.lists(lines, max_size=8), st.integers(-1, 31))
@hypothesis.example(['{"step": 1, "a": 2}', '{"step": true}', '{"step": 1.0}'], 1)
def test_a_resume_keeps_exactly_the_whole_records_up_to_its_step(content, step):
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / metric_writer.METRICS_FILE
        path.write_text(''.join(line + '\n' for line in content))
        metric_writer.drop_records_after(workdir, step)
        kept = [json.loads(line) for line in path.read_text().splitlines()]
    records = []
    for line in content:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and type(record.get('step')) is int:
            records.append(record)
    assert kept == [r for r in records if r['step'] <= step]
