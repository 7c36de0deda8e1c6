"""Contracts of `train/metric_writer.py` that its property tests leave open: what `StepMetrics`
returns at a flush (means, speed, the step of a non-finite value), what `MetricLogger` writes to
TensorBoard and how it reports a failed write, and a workdir without `metrics.jsonl`."""

import json
import logging
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from enlcn_jax.storage import files
from enlcn_jax.train import metric_writer


class Clock:
    """A stand-in for the `time` module whose `perf_counter` reads `now`."""

    def __init__(self, now):
        self.now = now

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock(100.0)
    monkeypatch.setattr(metric_writer, 'time', fake)
    return fake


def step(loss, grad_norm=1.0, **more):
    return {'loss': np.float32(loss), 'grad_norm': np.float32(grad_norm),
            **{k: np.float32(v) for k, v in more.items()}}


def test_a_flush_averages_the_pending_steps_and_measures_speed_from_the_clock(clock):
    metrics = metric_writer.StepMetrics(start_step=10, batch_size=8)
    assert metrics.flush(10) is None
    for loss, lr in ((1.0, 0.5), (2.0, 0.25), (6.0, 0.0), (3.0, 0.25)):
        metrics.append(step(loss, grad_norm=loss * 2, lr=lr))
    clock.now = 102.0
    flushed = metrics.flush(14)
    assert flushed == pytest.approx({'train/loss': 3.0, 'train/grad_norm': 6.0, 'train/lr': 0.25,
                                     'train/steps_per_s': 4 / 2.0,
                                     'train/images_per_s': 4 / 2.0 * 8})
    assert metrics.flush(14) is None  # nothing pending after a flush

    metrics.append(step(5.0))
    clock.now = 106.0  # the next flush counts from the last one: 1 step in 4 s
    assert metrics.flush(15)['train/steps_per_s'] == pytest.approx(0.25)

    clock.now = 200.0
    metrics.restart_clock(20)  # e.g. after a validation that took time
    metrics.append(step(1.0))
    metrics.append(step(1.0))
    clock.now = 210.0
    assert metrics.flush(22)['train/steps_per_s'] == pytest.approx(2 / 10.0)


@pytest.mark.parametrize('bad', ['loss', 'grad_norm'])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf')])
def test_a_non_finite_loss_or_gradient_norm_names_its_step(clock, bad, value):
    metrics = metric_writer.StepMetrics(start_step=0, batch_size=1)
    for i in range(4):
        values = {'loss': 1.0, 'grad_norm': 1.0}
        if i == 2:
            values[bad] = value
        metrics.append(step(**values))
    # 7 steps done after the last pending one: the four pending are steps 4, 5, 6, 7.
    with pytest.raises(metric_writer.NonFiniteMetrics, match=r'non-finite loss .* at step 6$') \
            as raised:
        metrics.flush(7)
    assert raised.value.step == 6
    assert isinstance(raised.value, FloatingPointError)
    assert str(value) in str(raised.value)


def events(workdir):
    """The (tag, step, value) of every scalar in the TensorBoard event files of `workdir`, read
    from the TFRecord framing (length, crc, event, crc) without TensorBoard."""
    scalars = []
    for path in sorted(workdir.glob('events.out.tfevents*')):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack('<Q', data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return scalars


def test_a_record_goes_to_metrics_jsonl_and_to_tensorboard_at_its_step(tmp_path):
    logger = metric_writer.MetricLogger(tmp_path)
    logger.write(3, {'train/loss': 0.5, 'val/psnr_y': 30.25})
    logger.write(6, {'train/loss': 0.25})
    logger.close()
    assert events(tmp_path) == [('train/loss', 3, 0.5), ('val/psnr_y', 3, 30.25),
                                ('train/loss', 6, 0.25)]
    lines = (tmp_path / metric_writer.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {'step': 3, 'train/loss': 0.5, 'val/psnr_y': 30.25}, {'step': 6, 'train/loss': 0.25}]


def test_a_logger_of_another_process_writes_nothing(tmp_path):
    logger = metric_writer.MetricLogger(tmp_path, enabled=False)
    logger.write(3, {'train/loss': 0.5})
    logger.close()
    assert list(tmp_path.iterdir()) == []


class Failing:
    """A SummaryWriter stand-in whose flush and close fail like a full disk."""

    logdir = '/the/logdir'

    def add_scalar(self, *args):
        pass

    def flush(self):
        raise OSError(28, 'No space left on device')

    close = flush


def test_a_failed_tensorboard_write_is_a_write_error_and_a_failed_close_a_warning(
        tmp_path, caplog):
    logger = metric_writer.MetricLogger(tmp_path)
    logger._tensorboard.close()
    logger._tensorboard = Failing()
    with pytest.raises(files.WriteError, match='^cannot write /the/logdir: no space left on the '
                       'device$') as raised:
        logger.write(3, {'train/loss': 0.5})
    assert raised.value.errno == 28
    assert (tmp_path / metric_writer.METRICS_FILE).read_text() == '{"step": 3, "train/loss": 0.5}\n'
    with caplog.at_level(logging.WARNING):
        logger.close()  # does not raise
    assert [r.getMessage() for r in caplog.records] == [
        'TensorBoard events not flushed: cannot write /the/logdir: no space left on the device']


def test_a_workdir_without_metrics_has_no_validations_and_is_left_without_one(tmp_path):
    assert metric_writer.validated_steps(tmp_path) == set()
    metric_writer.drop_records_after(tmp_path, 5)
    assert list(tmp_path.iterdir()) == []


def test_a_left_out_line_is_named_by_file_number_and_its_start(tmp_path, caplog):
    path = tmp_path / metric_writer.METRICS_FILE
    path.write_text('{"step": 1}\n' + '{"step": "x", "pad": "' + 'y' * 100 + '"}\n')
    with caplog.at_level(logging.WARNING):
        assert metric_writer.validated_steps(tmp_path) == set()
    assert [r.getMessage() for r in caplog.records] == [
        f'{path} line 2 is not a metrics record (a JSON object with an integer "step"); left '
        'out: ' + ('{"step": "x", "pad": "' + 'y' * 100)[:80]]
