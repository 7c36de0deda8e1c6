"""Mutation check: does the suite fail when the math, the training or the evaluation is wrong?

Each mutant below is one small semantic change to the package (a constant, an index, a sign, a
window) of the kind a port or a refactor gets wrong. The script applies each, one at a time, to
a copy of the repository (the working tree is never modified), runs the tests that should catch
it, and reports whether at least one failed ("killed") or all passed ("SURVIVED": a missing
test, unless the mutant is shown to be equivalent). Not part of the default test run:

    python tests/mutants.py                      # every mutant; table to stdout
    python tests/mutants.py --only eps_1e-3,gradient_sign
    python tests/mutants.py --list               # names and targets only

The kill table is written as `<out_dir>/mutants.md` and `mutants.json` (default
`workdirs/mutants`). Exit status 1 if any mutant survived or could not be applied.
`tests/test_mutants.py` (in the default run) checks that every mutant still applies, so the
list cannot rot silently when the code it mutates changes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns('.git', '.venv', '__pycache__', 'workdirs', 'bench_results',
                                     'results', '.pytest_cache', '*.pyc', '*.egg-info')
TIMEOUT_S = 900


SEARCHED = ('enlcn_jax', 'train.py', 'eval.py')  # where targets are looked up


@dataclasses.dataclass(frozen=True)
class Mutant:
    """Replace `old` by `new` inside the definition `target`; `tests` should fail.

    `target` is the qualified name of a function, method, class or module-level assignment
    (`'softmax_kernel'`, `'ENLCA.__call__'`, `'SOFTMAX_KERNEL_EPS'`), looked up in every module
    of `SEARCHED`, so moving it to another module or package needs no edit here; a name defined in
    several modules is written `'<module>:<qualname>'` (`'eval:main'`). `old` must occur exactly
    once in the target's source. `tests` are pytest arguments whose test files are named by file
    name (`'test_parity.py'`, `'test_losses.py::test_x'`), found anywhere under `tests/`.
    """
    name: str
    target: str
    old: str
    new: str
    tests: tuple[str, ...]


PARITY = ('test_parity.py',)
FEATURES = ('test_features.py',)
REGISTRY = ('test_registry.py',)
LOSSES = ('test_losses.py::test_closed_form_value_with_two_score_levels',
          'test_losses.py::test_code_variant_matches_full_sort_with_active_rows',
          'test_losses.py::test_paper_variant_matches_eq10_with_percentages',
          'test_losses.py::test_gradient_matches_full_sort_autodiff')
METRICS = ('test_metrics.py',)
IMRESIZE = ('test_imresize.py',)
TRAIN_STEP = ('test_train.py', '-k', 'not cli and not resume and not four_devices '
              'and not killed and not nan_loss and not best_checkpoint')
EVALUATE = ('test_evaluator.py', '-k', 'not cli')
PRECISION = ('test_precision.py',)
ATTENTION = ('test_attention.py',)
VISUALIZE = ('test_attention_maps.py',)
WORKDIR = 'test_workdir.py::'
RESEARCHER = 'test_researcher_functions.py::'
CADENCE = ('test_train.py::test_the_last_steps_are_saved_and_validated_when_cadences_do_not_'
           'divide_the_run')

MUTANTS: tuple[Mutant, ...] = (
    # --- random features and attention -------------------------------------------------------
    Mutant('kernel_eps_1e-3', 'SOFTMAX_KERNEL_EPS',
           'SOFTMAX_KERNEL_EPS = 1e-4', 'SOFTMAX_KERNEL_EPS = 1e-3', PARITY),
    Mutant('kernel_eps_0', 'SOFTMAX_KERNEL_EPS',
           'SOFTMAX_KERNEL_EPS = 1e-4', 'SOFTMAX_KERNEL_EPS = 0.0', PARITY),
    Mutant('feature_sqrt_m', 'softmax_kernel_features',
           'return (jnp.exp(_softmax_kernel_exponent(x, projection)) + eps) * (m ** -0.5)',
           'return (jnp.exp(_softmax_kernel_exponent(x, projection)) + eps) * (m ** -0.25)',
           FEATURES),
    Mutant('feature_norm_sign', '_softmax_kernel_exponent',
           'return proj - 0.5 * jnp.sum(x * x', 'return proj + 0.5 * jnp.sum(x * x', PARITY),
    Mutant('feature_half_norm', '_softmax_kernel_exponent',
           'return proj - 0.5 * jnp.sum(x * x', 'return proj - 1.0 * jnp.sum(x * x',
           FEATURES + PARITY),
    Mutant('chi_norms_constant', '_orthogonal_blocks',
           'norms = jnp.linalg.norm(jax.random.normal(norm_key, (m, d), jnp.float32), axis=-1)',
           'norms = jnp.full((m,), jnp.sqrt(d), jnp.float32)', FEATURES),
    Mutant('orthogonal_blocks_not_orthogonal', '_orthogonal_blocks',
           'q, r = jnp.linalg.qr(gaussian)',
           ('q, r = gaussian / jnp.sqrt(jnp.float32(d)), '
            'jnp.broadcast_to(jnp.eye(d), gaussian.shape)'), FEATURES),
    Mutant('relu_map_abs', 'relu_features',
           "(jax.nn.relu(jnp.einsum('...d,md->...m', x, projection)) + eps)",
           "(jnp.abs(jnp.einsum('...d,md->...m', x, projection)) + eps)", FEATURES),
    Mutant('normaliser_mean', '_key_summary',
           'jnp.sum(k_features, axis=0)', 'jnp.mean(k_features, axis=0)', PARITY),
    Mutant('normaliser_sqrt', '_normalised',
           'numerator / jnp.where(normaliser > 0, normaliser, 1.0)[:, None]',
           'numerator / jnp.sqrt(jnp.where(normaliser > 0, normaliser, 1.0))[:, None]', PARITY),
    Mutant('no_denominator_guard', 'linear_attention',
           'safe_normaliser = jnp.where(normaliser > 0, normaliser, 1.0)',
           'safe_normaliser = normaliser', REGISTRY),
    Mutant('no_denominator_guard_in_blocks', '_normalised',
           'numerator / jnp.where(normaliser > 0, normaliser, 1.0)[:, None]',
           'numerator / normaliser[:, None]', ATTENTION),
    Mutant('stable_keys_shifted_per_row', 'stable_softmax_kernel_features',
           'axes = -1 if is_query else', 'axes = -1 if True else', REGISTRY),
    Mutant('stable_eps_not_shifted', 'stable_softmax_kernel_features',
           '+ jnp.exp(log_eps - shift)) * (m ** -0.5)', '+ eps) * (m ** -0.5)', REGISTRY),
    Mutant('kernel_eps_not_bound', 'get_feature_map',
           "FEATURE_MAPS.get(spec, **sizes), 'eps', eps,",
           "FEATURE_MAPS.get(spec, **sizes), 'eps', None,", REGISTRY),
    Mutant('relu_default_eps', 'relu_features',
           'def relu_features(x: Array, projection: Array, eps: float = 1e-3)',
           'def relu_features(x: Array, projection: Array, eps: float = 1e-4)', REGISTRY),
    Mutant('exact_attention_temperature', 'exact_attention.attend',
           'jax.nn.softmax(q_block @ k.T, axis=-1,', 'jax.nn.softmax(q_block @ k.T / 2, axis=-1,',
           ('test_attention.py',)),
    # --- the network ---------------------------------------------------------------------------
    Mutant('amplification_not_sqrt', 'ENLCA.embed',
           'scale = jnp.sqrt(jnp.float32(cfg.amplification))',
           'scale = jnp.float32(cfg.amplification)', PARITY),
    Mutant('norm_clamp_added', 'l2_normalize',
           'return x / jnp.maximum(norm, eps)', 'return x / (norm + eps)',
           ('test_models.py',) + PARITY),
    Mutant('norm_clamp_constant', 'ENLCAConfig',
           'norm_eps: float = 5e-5\n', 'norm_eps: float = 5e-3\n',
           ('test_models.py',) + PARITY),
    Mutant('pixel_shuffle_order', 'pixel_shuffle',
           'x.transpose(0, 1, 4, 2, 5, 3)', 'x.transpose(0, 1, 5, 2, 4, 3)', PARITY),
    Mutant('upsampler_one_step_for_4', 'upsampling_factors',
           'return [2] * (scale.bit_length() - 1)', 'return [scale]', PARITY),
    Mutant('upsampler_no_scale_3', 'upsampling_factors',
           'if isinstance(scale, int) and scale == 3:', 'if isinstance(scale, int) and scale == 9:',
           PARITY),
    Mutant('resblock_res_scale', 'ResBlock.__call__',
           'return x + self.res_scale * y', 'return x + y', PARITY),
    Mutant('enlca_res_scale', 'ENLCA.__call__',
           'return y * self.res_scale + x, (q, k)', 'return y + x, (q, k)', PARITY),
    Mutant('no_mean_shift', 'ENLCN.__call__',
           '_masked((x.astype(jnp.float32) * self.rgb_range - mean) / std',
           '_masked((x.astype(jnp.float32) * self.rgb_range) / std', PARITY),
    Mutant('no_rgb_range_in', 'ENLCN.__call__',
           '_masked((x.astype(jnp.float32) * self.rgb_range - mean) / std',
           '_masked((x.astype(jnp.float32) - mean) / std', PARITY),
    Mutant('no_rgb_range_out', 'ENLCN.__call__',
           'sr = (y + mean) / std / self.rgb_range', 'sr = (y + mean) / std / 255.0', PARITY),
    Mutant('no_global_residual', 'ENLCN.__call__',
           "'body_conv', dtype)(res), mask) + x", "'body_conv', dtype)(res), mask)", PARITY),
    Mutant('conv_kernel_layout', '_conv',
           "weight.transpose(2, 3, 1, 0)", "weight.transpose(3, 2, 1, 0)", PARITY),
    # --- the contrastive loss ------------------------------------------------------------------
    Mutant('relevant_ranks_16', 'code_contrastive_loss',
           'relevant: int = 15', 'relevant: int = 16', LOSSES),
    Mutant('irrelevant_ranks_50_64', 'code_contrastive_loss',
           'irrelevant: tuple[int, int] = (50, 65)', 'irrelevant: tuple[int, int] = (50, 64)',
           LOSSES),
    Mutant('irrelevant_ranks_51_66', 'code_contrastive_loss',
           'irrelevant: tuple[int, int] = (50, 65)', 'irrelevant: tuple[int, int] = (51, 66)',
           LOSSES),
    Mutant('margin_0.9', 'code_contrastive_loss',
           'margin: float = 1.0, relevant', 'margin: float = 0.9, relevant', LOSSES),
    Mutant('no_hinge', '_row_losses',
           'return jax.nn.relu(loss) if hinge else loss', 'return loss', LOSSES),
    Mutant('loss_eps_1e-3', 'code_contrastive_loss',
           'hinge=True, eps=1e-6,', 'hinge=True, eps=1e-3,', LOSSES),
    Mutant('scores_not_exponentiated', '_row_losses',
           'exp_scores = jnp.exp(scores)', 'exp_scores = jnp.exp(0.5 * scores)', LOSSES),
    Mutant('paper_n1_3pct', 'paper_contrastive_loss',
           'n1: float = 0.02', 'n1: float = 0.03', LOSSES),
    Mutant('paper_n2_10pct', 'paper_contrastive_loss',
           'n2: float = 0.08', 'n2: float = 0.10', LOSSES),
    Mutant('loss_first_row_block_only', '_ranked_contrastive_loss',
           'blockwise.map_row_blocks(row_losses, q, block_size',
           'blockwise.map_row_blocks(row_losses, q[:7], block_size', LOSSES),
    # --- the contrastive loss as training chooses it ---------------------------------------------
    Mutant('contrastive_loss_spec_ignored', 'contrastive_loss_fn',
           'losses.get_contrastive_loss(contrastive.loss, contrastive.margin)',
           "losses.get_contrastive_loss('code', contrastive.margin)",
           (RESEARCHER + 'test_a_loss_given_on_the_command_line_trains_is_recorded_and_evaluates',)),
    Mutant('contrastive_margin_not_bound', 'get_contrastive_loss',
           "CONTRASTIVE_LOSSES.get(spec), 'margin', margin,",
           "CONTRASTIVE_LOSSES.get(spec), 'margin', None,",
           (RESEARCHER + 'test_the_configured_margin_reaches_the_loss',)),
    Mutant('recorded_variant_key_not_renamed', 'RENAMED_KEYS',
           "RENAMED_KEYS = {'train.contrastive.variant': 'train.contrastive.loss'}",
           'RENAMED_KEYS = {}',
           (WORKDIR + 'test_a_run_recorded_with_the_contrastive_variant_key_resumes',)),
    Mutant('non_finite_value_read_as_gradient', '_non_finite',
           "    if not _finite(out):\n        return 'value'", "    if False:\n        return 'value'",
           (RESEARCHER + 'test_a_nan_from_a_researcher_s_feature_map_stops_training_naming_the_map',)),
    # --- the evaluation protocol ---------------------------------------------------------------
    Mutant('ssim_k2', '_SSIM_K2', '_SSIM_K2 = 0.03', '_SSIM_K2 = 0.02', METRICS),
    Mutant('shave_off_by_one', 'shave',
           'return img[border:-border, border:-border]',
           'return img[border + 1:-border, border:-border]', METRICS),
    Mutant('rounding_only_at_the_end', 'imresize',
           '        if is_uint8:\n            out = _round_uint8(out)\n    return',
           '    if is_uint8:\n        out = _round_uint8(out)\n    return', IMRESIZE),
    # --- training -------------------------------------------------------------------------------
    Mutant('gradient_sign', 'train_step',
           'new_state = state.apply_gradients(grads=grads)',
           'new_state = state.apply_gradients(grads=jax.tree.map(jnp.negative, grads))',
           TRAIN_STEP),
    Mutant('contrastive_gradient_stopped', 'loss_fn',
           'lambda: contrastive_fn(embeddings),',
           'lambda: jax.lax.stop_gradient(contrastive_fn(embeddings)),', TRAIN_STEP),
    Mutant('contrastive_first_module_only', 'contrastive_term',
           'for q, k in embeddings]))', 'for q, k in embeddings[:1]]))', TRAIN_STEP),
    Mutant('contrastive_first_image_only', 'contrastive_term',
           'jnp.mean(per_image(q, k))', 'jnp.mean(per_image(q, k)[:1])', TRAIN_STEP),
    Mutant('contrastive_weight_unused', 'loss_fn',
           'return l1 + weight * cl, (l1, cl)', 'return l1 + 1e-3 * cl, (l1, cl)', TRAIN_STEP),
    Mutant('contrastive_starts_late', 'create_contrastive_weight_fn.weight_fn',
           'jnp.where(step >= start,', 'jnp.where(step > start,', TRAIN_STEP),
    Mutant('lr_decay_one_epoch_late', 'create_learning_rate_fn',
           'boundaries = {int(epoch) * train.steps_per_epoch:',
           'boundaries = {(int(epoch) + 1) * train.steps_per_epoch:', TRAIN_STEP),
    Mutant('redraw_index_shifted', 'redraw_index',
           'return step // period if step % period == 0 else None',
           'return step // period + 1 if step % period == 0 else None', TRAIN_STEP),
    Mutant('redraw_period_off_by_one', 'redraw_index',
           'return step // period if step % period == 0 else None',
           'return step // period if step % period == 1 else None', TRAIN_STEP),
    Mutant('padding_keys_attended', 'enla',
           'k_features = k_features * mask.astype(k_features.dtype)',
           'k_features = k_features', EVALUATE),
    Mutant('padding_not_zeroed', '_masked',
           'return x if mask is None else x * mask.astype(x.dtype)', 'return x', EVALUATE),
    Mutant('non_finite_loss_unchecked', 'StepMetrics.flush',
           "if not (math.isfinite(scalars['loss'])", "if False and not (math.isfinite(scalars['loss'])",
           ('test_train.py', '-k', 'nan_loss')),
    Mutant('shard_index_ignored', 'PatchLoader.__init__',
           'self.rows = range(index * batch_size // count,', 'self.rows = range(0 * batch_size // count,',
           ('test_distributed.py',)),
    Mutant('resume_not_checked', 'check_resume',
           '    changes = config_changes(old, config)\n', '    changes = []\n',
           ('test_workdir.py', '-k', 'refused')),
    Mutant('lock_not_exclusive', 'WorkdirLock.__enter__',
           'fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)', 'fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)',
           ('test_workdir.py', '-k', 'second_training')),
    Mutant('checksums_not_verified', 'verify_checksums',
           '        if saved.get(path) != value:', '        if False:',
           ('test_workdir.py', '-k', 'flipped')),
    Mutant('parameters_saved_unchecked', 'Checkpointing.require_finite',
           'if not process_0_value(_all_finite(state.params)):', 'if False:',
           ('test_workdir.py', '-k', 'diverged')),
    Mutant('cut_off_validation_not_redone', '_train_and_evaluate',
           'if (val_ds is not None and start_step and', 'if (False and',
           ('test_workdir.py', '-k', 'cut_off')),
    # --- bad input and outputs ---------------------------------------------------------------------
    Mutant('exif_orientation_ignored', 'load_image',
           'rgb = _to_rgb_array(ImageOps.exif_transpose(im))', 'rgb = _to_rgb_array(im)',
           ('test_image_io.py',)),
    Mutant('one_bad_training_image_aborts', 'load_folder',
           'if len(failed) == len(hr_paths):', 'if failed:', ('test_sources.py',)),
    Mutant('same_stem_same_name', 'evaluate_dataset',
           'path.stem if stems[path.stem] == 1 else path.name', 'path.stem',
           ('test_outputs.py', '-k', 'stem')),
    Mutant('unscored_dataset_exits_0', 'runner:run', '    if unscored:\n', '    if False:\n',
           ('test_outputs.py', '-k', 'no_scorable')),
    Mutant('upscale_overwrites', 'upscale:main',
           'if Path(args.output).exists() and not args.overwrite:', 'if False:',
           ('test_outputs.py', '-k', 'upscale')),
    # --- query-blocked ENLA and its written-out gradient --------------------------------------------
    Mutant('enla_grad_normaliser_sign', '_attend_backward',
           'jnp.where(has_weight, -jnp.sum(grad_out * out, axis=-1) / safe, 0.0)',
           'jnp.where(has_weight, jnp.sum(grad_out * out, axis=-1) / safe, 0.0)', ATTENTION),
    Mutant('enla_grad_key_sum_dropped', '_attend_backward',
           'v @ grad_summary[:, :-1].T + grad_summary[:, -1]', 'v @ grad_summary[:, :-1].T',
           ATTENTION),
    Mutant('enla_grad_projection_zero', '_attend_backward',
           'return grad_q, grad_projection, grad_k_features, grad_v',
           'return grad_q, 0 * grad_projection, grad_k_features, grad_v', ATTENTION),
    Mutant('enla_block_rows_unnormalised', '_normalised',
           'return numerator / jnp.where(normaliser > 0, normaliser, 1.0)[:, None]',
           'return numerator', ATTENTION),
    Mutant('profile_split_double_counts', 'train_step_profile',
           "'backward of the L1 path': ms['forward + backward, L1'] - ms['forward'],",
           "'backward of the L1 path': ms['forward + backward, L1'] - ms['EDSR forward'],",
           ('test_bench.py', '-k', 'profile')),
    # --- mixed precision ----------------------------------------------------------------------------
    Mutant('tail_conv_in_bfloat16', 'ENLCN.__call__',
           "conv3x3(3, 'tail_conv', jnp.float32)", "conv3x3(3, 'tail_conv', self.dtype)",
           PRECISION),
    Mutant('residual_stream_in_bfloat16', 'ENLCN.__call__',
           "(x).astype(jnp.float32), mask)", "(x), mask)", PRECISION),
    Mutant('dtype_ignored', 'ENLCN.__call__',
           "(self.enlca, self.res_scale, dtype,", "(self.enlca, self.res_scale, jnp.float32,",
           PRECISION),
    Mutant('embeddings_in_float32', 'ENLCA.embed',
           "axis=1).astype(self.dtype)", "axis=1).astype(jnp.float32)", PRECISION),
    Mutant('dtype_override_ignored', 'load_upscaler',
           'model = model.clone(dtype=dtype)', 'model = model.clone()', PRECISION),
    Mutant('float16_training_allowed', 'check_trains',
           "    if not precision.trains:", "    if False:", PRECISION),
    Mutant('study_not_on_unit_directions', 'approximation_study',
           'unit_q, unit_k = unit_directions(q), unit_directions(k)', 'unit_q, unit_k = q, k',
           ('test_kernel_study.py::test_the_study_sees_only_the_directions_of_the_queries_and_keys',)),
    Mutant('validation_bucket_unchecked', 'validate_config',
           'inference.ModelUpscaler.check_options(train.eval_bucket, None, 0)', 'pass',
           ('test_train.py', '-k', 'test_validate_config')),
    # --- inference --------------------------------------------------------------------------------
    Mutant('ensemble_two_transforms', 'ModelUpscaler.predict',
           'for k in range(8)]', 'for k in range(2)]', EVALUATE),
    Mutant('ensemble_not_inverted', 'ModelUpscaler.predict',
           'outputs = [transforms.inverse_dihedral(', 'outputs = [transforms.dihedral(', EVALUATE),
    Mutant('tile_cut_off_by_one', '_tile_spans',
           'cuts = [(a + tile + b) // 2 for a, b', 'cuts = [(a + tile + b) // 2 + 1 for a, b',
           EVALUATE),
    Mutant('tiles_ignore_overlap', '_tile_spans',
           'starts = list(range(0, length - tile, tile - overlap))',
           'starts = list(range(0, length - tile, tile))', EVALUATE),
    Mutant('bucket_crop_from_the_end', 'ModelUpscaler._run',
           'return np.asarray(y)[0, :h * self.scale, :w * self.scale]',
           'return np.asarray(y)[0, -h * self.scale:, -w * self.scale:]', EVALUATE),
    Mutant('bucket_pads_width_by_height', 'ModelUpscaler._padded',
           'pad = ((0, -h % self.bucket), (0, -w % self.bucket), (0, 0))',
           'pad = ((0, -h % self.bucket), (0, -h % self.bucket), (0, 0))', EVALUATE),
    Mutant('query_pixel_x_y_swapped', 'query_attention_maps',
           'i = y * w + x', 'i = x * w + y', VISUALIZE),
    Mutant('maps_enlca_panel_random_features', 'query_attention_maps',
           'configured_attention_row(config, q, k, projection, i, (h, w))',
           'random_feature_row(q[i], k, projection, config.feature_map_fn())',
           ('test_attention_maps.py::test_the_enlca_map_of_an_exact_attention_model_is_its_softmax_row',)),
    Mutant('float_image_divided_by_255', 'model_input',
           '    return image.astype(np.float32)\n', '    return image.astype(np.float32) / 255.0\n',
           ('test_attention_maps.py::test_a_float_image_in_0_1_gives_the_maps_of_the_same_uint8_image',)),
    # --- convert guards (round 2) ---
    Mutant('add_mean_multiplies_by_std', 'ENLCN.__call__',
           'sr = (y + mean) / std / self.rgb_range', 'sr = (y * std + mean) / self.rgb_range',
           ('test_convert.py::test_mean_shift_with_std_reproduces_the_release',)),
    Mutant('non_finite_weights_converted', 'convert_state_dict',
           '    _check_finite(state)\n    config = _infer_model_config(',
           '    config = _infer_model_config(',
           ('test_convert.py::test_non_finite_weights_are_refused_naming_the_first',
            'test_convert.py::test_cli_refuses_non_finite_weights_before_writing')),
    # --- training, resume and checkpoint guards (round 2) ---
    Mutant('best_saved_without_finite_check', 'Checkpointing.save_best',
           "        self.require_finite(step, state, 'as the best model')\n", '',
           (WORKDIR + 'test_best_never_holds_non_finite_weights',)),
    Mutant('lr_inf_accepted', 'validate_config',
           'if not (value > minimum and math.isfinite(value)):', 'if not value > minimum:',
           ('test_train.py', '-k', 'validate_config')),
    Mutant('num_workers_zero_accepted', 'validate_config',
           "batch_size=data.batch_size, num_workers=data.num_workers)",
           "batch_size=data.batch_size)",
           ('test_train.py', '-k', 'validate_config')),
    Mutant('empty_photos_accepted', 'validate_config',
           "if source == 'skimage' and not photos:", 'if False:',
           ('test_train.py', '-k', 'validate_config')),
    Mutant('unusable_data_traceback', 'load_datasets.load',
           "raise DataError(f'config.{key}: no image can be used ({e})') from e", 'raise',
           (WORKDIR + 'test_data_that_cannot_be_trained_on_is_a_one_line_error',)),
    Mutant('metrics_nan_written', 'json_record',
           'record[name] = value if finite else None', 'record[name] = value',
           (WORKDIR + 'test_metrics_are_strict_json_with_non_finite_values_flagged',)),
    Mutant('bad_metrics_line_kept', '_records',
           "if not (isinstance(record, dict) and type(record.get('step')) is int):",
           'if record is None:',
           (WORKDIR + 'test_lines_of_metrics_jsonl_that_are_not_records_are_left_out',)),
    Mutant('window_last_value', 'StepMetrics.flush',
           'float(np.mean([h[k] for h in history]))', 'float(history[-1][k])',
           ('test_train.py::test_a_resumed_run_repeats_the_straight_one_and_logs_window_means',)),
    Mutant('logged_lr_of_the_next_step', 'train_step',
           "'lr': learning_rate_fn(state.step),", "'lr': learning_rate_fn(state.step + 1),",
           ('test_train.py::test_the_logged_lr_is_the_schedule_s_value_at_each_step',)),
    Mutant('end_of_run_not_saved', '_train_and_evaluate',
           'is_due(done, train_cfg.checkpoint_every_steps, total_steps)',
           'is_due(done, train_cfg.checkpoint_every_steps, None)',
           (CADENCE,)),
    Mutant('final_step_not_validated', '_train_and_evaluate',
           'is_due(done, val_every, total_steps)', 'is_due(done, val_every, None)',
           (CADENCE,)),
    Mutant('lock_not_held_while_training', 'WorkdirLock.__enter__',
           '        self._file = handle\n',
           '        self._file = handle\n        fcntl.flock(handle, fcntl.LOCK_UN)\n', (CADENCE,)),
    Mutant('random_features_not_restored', 'TrainState.from_checkpoint_items',
           'random_features=variables.get(models.RANDOM_FEATURES, {}),',
           'random_features=self.random_features,',
           ('test_train.py::test_a_resumed_run_repeats_the_straight_one_and_logs_window_means',)),
    Mutant('metrics_not_logged_before_a_save', '_train_and_evaluate',
           'if save or validating or is_due(done, train_cfg.log_every, total_steps):',
           'if is_due(done, train_cfg.log_every, total_steps):',
           (WORKDIR + 'test_a_kill_right_after_a_save_loses_no_logged_step',)),
    Mutant('ctrl_c_does_not_save', '_train_and_evaluate',
           'save = stopping or is_due(', 'save = is_due(',
           (WORKDIR + 'test_ctrl_c_finishes_the_checkpoint_in_flight_and_exits_with_one_line',)),
    Mutant('ctrl_c_while_starting_traceback', 'run_training',
           '    except KeyboardInterrupt:\n        return', '    except ZeroDivisionError:\n        return',
           (WORKDIR + 'test_ctrl_c_while_starting_is_one_line',)),
    Mutant('resume_checked_against_config_json_only', '_recorded_config',
           "if record is not None and 'config' in record:", 'if False:',
           (WORKDIR + 'test_a_missing_config_json_does_not_turn_the_resume_check_off',)),
    Mutant('unrecorded_checkpoint_resumed', 'check_resume',
           '    if old is None:\n        if step is not None:', '    if old is None:\n        if False:',
           (WORKDIR + 'test_a_checkpoint_with_no_record_of_its_config_resumes_only_when_allowed',)),
    Mutant('changed_training_images_accepted', 'check_data',
           'if old is None or old == new:', 'if True:',
           (WORKDIR + 'test_changed_training_images_are_refused_and_changed_validation_restarts_best',)),
    Mutant('missing_checksums_read_as_old_format', '_saved_checksums',
           '        if (where / RECORD).exists():', '        if False:',
           (WORKDIR + 'test_deleted_checksums_are_damage_not_an_old_format',)),
    Mutant('model_dir_missing_checksums_accepted', 'load_model_dir',
           'elif (directory / FORMAT_FILE).exists():', 'elif False:',
           (WORKDIR + 'test_a_model_directory_without_its_checksums_is_damaged_unless_older',)),
    Mutant('optimizer_state_not_verified', 'restore_latest',
           'for name in target:', 'for name in [VARIABLES]:',
           (WORKDIR + 'test_a_damaged_optimizer_state_or_latest_step_names_the_folder_to_move',)),
    Mutant('truncated_model_config_unnamed', 'load_model',
           'config = _read_json(path / MODEL_CONFIG)',
           'config = json.loads((path / MODEL_CONFIG).read_text())',
           (WORKDIR + 'test_a_truncated_model_config_is_an_error_naming_it',)),
    Mutant('full_disk_as_orbax_traceback', 'wait_until_saved',
           '        manager.wait_until_finished()\n    except (OSError, ValueError) as e:',
           '        manager.wait_until_finished()\n    except OSError as e:',
           (WORKDIR + 'test_a_checkpoint_write_failing_in_the_background_is_one_write_error',)),
    Mutant('append_not_cut_back', 'append_line',
           'os.ftruncate(fd, size)', 'pass',
           ('test_files.py::test_an_append_failing_half_way_is_cut_back',)),
    Mutant('write_in_place', 'write_bytes',
           "with atomic_path(path) as temporary, open(temporary, 'wb') as f:",
           "with atomic_path(path) as temporary, open(path, 'wb') as f:",
           ('test_files.py',)),
    # --- eval / inference / outputs guards (round 2) ---
    Mutant('ambiguous_lr_allowed', 'list_hr_images',
           '    if lr_dir is not None:\n        by_stem', '    if False:\n        by_stem',
           ('test_sources.py::test_hr_files_sharing_a_stem_are_refused_with_an_lr_folder',
            'test_outputs.py::test_eval_refuses_hr_files_that_would_share_one_lr_file')),
    Mutant('save_image_in_place', 'save_image',
           'Image.fromarray(img).save(temporary)', 'Image.fromarray(img).save(path)',
           ('test_image_io.py::test_a_save_failing_half_way_leaves_the_previous_file',)),
    Mutant('results_json_in_place', 'evaluator:write_results',
           '    files.write_text(json_path, json.dumps(', '    json_path.write_text(json.dumps(',
           ('test_outputs.py::test_results_written_half_way_leave_the_previous_files',)),
    Mutant('eval_write_error_uncaught', 'eval:main',
           '    except (runner.EvalError, files.WriteError) as e:', '    except runner.EvalError as e:',
           ('test_outputs.py::test_eval_on_a_full_disk_says_so_in_one_line_and_keeps_the_old_results',)),
    Mutant('upscale_suffix_not_checked_first', 'upscale:main',
           '    if image_io.save_format(args.output) is None:', '    if False:',
           ('test_upscale.py::test_an_output_without_an_image_suffix_is_refused_before_the_model_loads',)),
    Mutant('memory_budget_not_the_least', 'free_memory_budget',
           'int(HOST_MEMORY_FRACTION * min(known))', 'int(HOST_MEMORY_FRACTION * known[0])',
           ('test_evaluator.py::test_the_cpu_memory_budget_is_40_percent_of_the_least_free_memory_known',)),
    Mutant('memory_stats_of_global_device_0', 'free_memory_budget',
           'stats = jax.local_devices()[0].memory_stats()', 'stats = jax.devices()[0].memory_stats()',
           ('test_evaluator.py::test_the_memory_budget_reads_this_process_s_own_device',)),
    Mutant('ensemble_not_tiled', 'ModelUpscaler.predict',
           'self._run_tiled(np.ascontiguousarray(transforms.dihedral(x, k))), k)',
           'self._run(np.ascontiguousarray(transforms.dihedral(x, k))), k)',
           ('test_evaluator.py::test_self_ensemble_with_tiles_tiles_every_transformed_image',)),
    Mutant('spec_options_dropped', 'Registry._resolve',
           '        return functools.partial(fn, **options)', '        return fn',
           ('test_research_api.py::test_an_option_string_is_the_function_with_that_keyword',)),
    Mutant('spatial_shape_not_passed', 'ENLCAConfig.attend',
           "        if registry.accepts(fn, 'spatial_shape'):", '        if False:',
           ('test_research_api.py::test_window_attention_gets_the_layout_and_equals_masked_softmax',)),
    Mutant('maps_checked_at_unit_norm', 'check_inputs',
           'jnp.linspace(0.05, 1.0, n) * CHECK_AMPLIFICATION', 'jnp.linspace(0.05, 1.0, n) / 6',
           ('test_research_api.py::test_feature_maps_that_fail_only_where_the_model_runs_them_are_refused',)),
    Mutant('query_rows_not_checked_in_blocks', '_check_feature_map_values',
           '    if not _close(blocked, queries):', '    if False:',
           ('test_research_api.py::test_feature_maps_that_fail_only_where_the_model_runs_them_are_refused',)),
    Mutant('is_query_never_passed_in_check', '_check_feature_map_values',
           "    if registry.accepts(fn, 'is_query'):", '    if False:',
           ('test_research_api.py::test_feature_maps_that_fail_only_where_the_model_runs_them_are_refused',)),
    Mutant('mask_not_checked', '_check_attention_values',
           "    if not registry.accepts(fn, 'mask'):", '    if True:',
           ('test_research_api.py::test_an_attention_that_takes_a_mask_must_honour_it',)),
    Mutant('maskless_attention_padded', 'ModelUpscaler.__init__',
           '        if bucket > 1 and not model.masks_padding():', '        if False:',
           ('test_research_api.py::test_a_model_whose_attention_takes_no_mask_is_evaluated_unpadded',)),
    Mutant('redraw_ignores_the_projection', 'ENLCN.redraw',
           '        sampler = self.enlca.projection_fn()',
           '        sampler = features.orthogonal_gaussian_projection',
           ('test_research_api.py::test_redraw_uses_the_model_s_projection_sampler',)),
    Mutant('block_ignored', 'ENLCN.__call__',
           '                res, qk = BLOCKS.get(self.block)(self.enlca', '                res, qk = ENLCA(self.enlca',
           ('test_research_api.py::test_a_block_of_ones_own_replaces_enlca_and_pads_exactly',)),
    Mutant('eval_json_without_step', 'runner:report',
           "{**options.record(), 'checkpoint_step': step, 'compiled': compiled}",
           "{**options.record(), 'compiled': compiled}",
           ('test_outputs.py::test_which_best_scores_the_best_step_and_the_results_name_it',)),
)


def definitions(tree: ast.Module) -> list[tuple[str, int, int]]:
    """`(qualname, first line, last line)` of every function, method and class (decorators
    included) and every module-level assignment of a parsed module."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                found.append((prefix + child.name, first, child.end_lineno))
                visit(child, f'{prefix}{child.name}.')
            elif not prefix and isinstance(child, (ast.Assign, ast.AnnAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                found.extend((t.id, child.lineno, child.end_lineno) for t in targets
                             if isinstance(t, ast.Name))

    visit(tree, '')
    return found


@functools.lru_cache(maxsize=None)
def _spans(text: str) -> tuple[tuple[str, int, int], ...]:
    """`definitions` of a module's source as character spans."""
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return tuple((name, offsets[first - 1], offsets[last])
                 for name, first, last in definitions(ast.parse(text)))


def source_files(root: Path) -> list[Path]:
    files = []
    for name in SEARCHED:
        path = root / name
        files += sorted(path.rglob('*.py')) if path.is_dir() else [path] if path.exists() else []
    return files


def locate(mutant: Mutant, root: Path) -> tuple[Path, int, int]:
    """The file under `root` that defines `mutant.target` and the character span of the
    definition (ValueError if it is defined nowhere or in several places, or if `old` does not
    occur exactly once in it)."""
    module, _, qualname = mutant.target.rpartition(':')
    hits = []
    for path in source_files(root):
        if module and path.stem != module:
            continue
        hits += [(path, start, end) for name, start, end in _spans(path.read_text())
                 if name == qualname]
    if len(hits) != 1:
        where = ', '.join(str(path.relative_to(root)) for path, _, _ in hits) or 'nowhere'
        raise ValueError(f'{mutant.name}: {mutant.target!r} is defined {len(hits)} times '
                         f'({where}); write it as <module>:<qualname>')
    path, start, end = hits[0]
    count = path.read_text()[start:end].count(mutant.old)
    if count != 1:
        raise ValueError(f'{mutant.name}: {mutant.old!r} occurs {count} times in '
                         f'{mutant.target} ({path.relative_to(root)})')
    return hits[0]


def apply(mutant: Mutant, root: Path) -> tuple[Path, str]:
    """Writes the mutated file under `root`; returns its path and original text."""
    path, start, end = locate(mutant, root)
    text = path.read_text()
    path.write_text(text[:start] + text[start:end].replace(mutant.old, mutant.new) + text[end:])
    return path, text


def test_paths(tests: tuple[str, ...], root: Path) -> list[str]:
    """`tests` with each test file name replaced by its path under `root / 'tests'`
    (ValueError if a name matches no file or several)."""
    resolved = []
    for arg in tests:
        file, sep, rest = arg.partition('::')
        if not file.endswith('.py'):
            resolved.append(arg)
            continue
        found = sorted((root / 'tests').rglob(file))
        if len(found) != 1:
            raise ValueError(f'test file {file!r}: {len(found)} matches under tests/')
        resolved.append(str(found[0].relative_to(root)) + sep + rest)
    return resolved


def run_tests(tests: tuple[str, ...], root: Path, env: dict) -> tuple[int, list[str], float]:
    """pytest `-x` on `tests` in `root`: (exit code, failed test ids, seconds)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', '-m', 'not slow',
         '-n', '0', '-W', 'ignore', *test_paths(tests, root)],
        cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    failed = re.findall(r'^(?:FAILED|ERROR) (\S+)', result.stdout, re.MULTILINE)
    return result.returncode, failed, time.perf_counter() - start


def markdown(rows: list[dict]) -> str:
    lines = ['| mutant | target | result | failing test | s |', '|---|---|---|---|---|']
    for row in rows:
        lines.append(f"| {row['name']} | {row['target']} | {row['result']} | "
                     f"{row['killed_by'] or '-'} | {row['seconds']:.0f} |")
    killed = sum(row['result'] == 'killed' for row in rows)
    lines.append(f'\n{killed} of {len(rows)} mutants killed.')
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', default='', help='comma-separated mutant names')
    parser.add_argument('--list', action='store_true', help='print the mutants and exit')
    parser.add_argument('--out_dir', default=str(REPO / 'workdirs' / 'mutants'))
    parser.add_argument('--no_baseline', action='store_true',
                        help='skip the check that the targeted tests pass unmutated')
    args = parser.parse_args()
    names = [n for n in args.only.split(',') if n]
    unknown = sorted(set(names) - {m.name for m in MUTANTS})
    if unknown:
        parser.error(f'unknown mutants {unknown}; see --list')
    mutants = [m for m in MUTANTS if not names or m.name in names]
    if args.list:
        for m in mutants:
            print(f'{m.name:34s} {m.target:28s} {" ".join(m.tests)}')
        return 0

    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'ENLCN_SHARED': str(REPO.parent / 'shared')}
    with tempfile.TemporaryDirectory(prefix='enlcn_mutants_') as tmp:
        root = Path(tmp) / 'repo'
        shutil.copytree(REPO, root, ignore=COPY_IGNORE)
        env['JAX_COMPILATION_CACHE_DIR'] = str(Path(tmp) / 'jax_cache')
        if not args.no_baseline:
            targets = sorted({m.tests for m in mutants})
            for tests in targets:
                code, failed, _ = run_tests(tests, root, env)
                if code != 0:
                    print(f'baseline fails ({" ".join(tests)}): {failed}', file=sys.stderr)
                    return 2
        rows = []
        for mutant in mutants:
            try:
                path, original = apply(mutant, root)
            except ValueError as error:
                rows.append({**dataclasses.asdict(mutant), 'result': 'NOT APPLIED',
                             'killed_by': str(error), 'seconds': 0.0})
                continue
            try:
                code, failed, seconds = run_tests(mutant.tests, root, env)
            finally:
                path.write_text(original)
            result = 'killed' if code == 1 and failed else 'SURVIVED' if code == 0 else f'error {code}'
            rows.append({**dataclasses.asdict(mutant), 'result': result,
                         'killed_by': failed[0] if failed else '', 'seconds': seconds})
            print(f"{mutant.name:34s} {result:9s} {rows[-1]['killed_by']}", flush=True)
    table = markdown(rows)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'mutants.md').write_text(table + '\n')
    (out_dir / 'mutants.json').write_text(json.dumps(rows, indent=2))
    print('\n' + table)
    return 0 if all(row['result'] == 'killed' for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
