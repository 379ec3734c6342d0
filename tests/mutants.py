#!/usr/bin/env python
"""Mutation check: do the tests catch one-line bugs in the trainer's critical paths?

    python tests/mutants.py              # every mutant
    python tests/mutants.py NAME ...     # some of them (--list names them all)

Each mutant changes one line of a scratch copy of the working tree (tracked and untracked files,
uncommitted edits included) and runs the tests named for it, which must then fail. A mutant they
pass with SURVIVES: a claim nothing pins. First the same tests run on the unmutated copy (--no-baseline
skips that), so a broken suite cannot pass for a killed mutant. Exit status: 0 when every mutant is
killed; 1 when one survives, its tests were all skipped, or they could not run; 2 for bad input (an
unknown name, a stale mutant whose text is no longer exactly once in its file).

Not part of CI: it takes minutes. Run it before closing an issue that touches these paths, and add
a mutant here for each new claim (see "Tests" in README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import CACHE, REPO, SHARED
from procs import ProcessFailure, run_bounded


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repo root
    old: str  # text found exactly once in the file, within one line
    new: str  # what replaces it
    tests: tuple[str, ...]  # pytest node ids that must fail


TRAIN, FAULTS = "tests/test_train.py::", "tests/test_faults.py::"
CLI, NEWCOMER = "tests/test_cli_errors.py::", "tests/test_newcomer.py::"
LR_TEST = TRAIN + "test_applied_and_logged_lr_follow_the_schedule"
EVAL_TEST = TRAIN + "test_two_process_evaluation_counts_each_image_once_with_known_accuracy"
PURGE_TEST = FAULTS + "test_resume_purges_what_the_crashed_attempt_logged_after_the_checkpoint"
GLOO_TEST = TRAIN + "test_two_process_gloo_run_logs_one_eval_per_epoch[torchvision]"

MUTANTS = [
    # the learning rate the trainer applies and logs
    Mutant("lr_applied_halved", "training/loop.py", "set_lr(opt, lr)", "set_lr(opt, lr / 2)", (LR_TEST,)),
    Mutant("lr_logged_halved", "training/loop.py", 'log.scalar("sizes/lr", lr, step)',
           'log.scalar("sizes/lr", lr / 2, step)', (LR_TEST,)),
    Mutant("lr_ramp_counts_from_0", "training/phases.py", "epoch, iteration + 1, iters_per_epoch)",
           "epoch, iteration, iters_per_epoch)", ("tests/test_phases.py",)),
    # evaluation: every image once, summed over ranks
    Mutant("eval_no_cross_rank_sum", "training/loop.py", "dist.all_reduce_sum(sums)", "sums.clone()", (EVAL_TEST,)),
    Mutant("eval_top1_top5_swapped", "training/loop.py", "return hits[:, 0].sum(), hits.any(dim=1).sum()",
           "return hits.any(dim=1).sum(), hits[:, 0].sum()", (EVAL_TEST,)),
    Mutant("val_shards_overlap", "training/data/rectval.py", "chunks[rank * per:(rank + 1) * per]",
           "chunks[rank * per:(rank + 2) * per]",
           ("tests/test_imagefolder.py::test_two_ranks_cover_train_at_least_once_and_validation_exactly_once",)),
    # training shards: one global permutation per epoch, dealt to the ranks
    Mutant("dali_shard_seeded_per_rank", "training/data/dali.py",
           "shard_indices(self.num_images, spec.seed, self.epoch,",
           "shard_indices(self.num_images, spec.seed * (spec.rank + 1), self.epoch,",
           ("tests/test_dali.py::test_two_ranks_read_every_training_image_each_epoch",)),
    # DALI: one pipeline per phase, but crops a function of (seed, epoch, image); the shared geometry
    Mutant("dali_crops_from_pipeline_epoch", "training/data/dali.py",
           "self._batches[j], self.epoch if self.train", "self._batches[j], info.epoch_idx if self.train",
           ("tests/test_dali.py::test_a_fresh_loader_at_epoch_2_yields_what_the_long_lived_one_does",)),
    Mutant("dali_val_anchor_shifted", "training/data/dali.py", "np.array([g.anchor_yx for g in geo], np.int32)",
           "np.array([g.anchor_yx for g in geo], np.int32) + 1",
           ("tests/test_dali.py::test_same_pixels_as_torchvision_train_and_validation",)),
    # DALI's GPU graph, checked against DALI's schema without a GPU: labels must leave on the device
    Mutant("dali_gpu_labels_on_host", "training/data/dali.py",
           "return self._normalize(images, mirror=mirror), labels.gpu() if decode == \"mixed\" else labels",
           "return self._normalize(images, mirror=mirror), labels",
           ("tests/test_dali.py::test_gpu_graph_is_valid_dali_without_a_gpu",)),
    Mutant("val_centre_floored", "training/data/rectval.py", "else int(round((side - crop) / 2.0))",
           "else (side - crop) // 2",
           ("tests/test_rectval.py::test_val_geometry_is_torchvisions_resize_and_center_crop",)),
    Mutant("shard_same_every_epoch", "training/data/tree.py", "g.manual_seed(seed + epoch)", "g.manual_seed(seed)",
           ("tests/test_imagefolder.py::test_two_ranks_cover_train_at_least_once_and_validation_exactly_once",)),
    Mutant("val_resized_side_rounded", "training/data/rectval.py", "rw, rh = short, int(short * height / width)",
           "rw, rh = short, round(short * height / width)",
           ("tests/test_rectval.py::test_val_geometry_is_torchvisions_resize_and_center_crop",)),
    Mutant("shard_padding_repeats_the_order_once", "training/data/tree.py",
           "order += (order * math.ceil(total / n))[: total - n]", "order += order[: total - n]",
           ("tests/test_imagefolder.py::test_fewer_images_than_ranks_are_dealt_as_distributed_sampler_deals_them",)),
    Mutant("hidden_files_listed", "training/files.py", 'yield dirpath, sorted(f for f in filenames if not f.startswith("."))',
           "yield dirpath, sorted(filenames)", ("tests/test_imagefolder.py::test_the_walk_skips_hidden_files_and_folders",)),
    Mutant("hidden_folder_is_a_class", "training/data/tree.py", 'if e.is_dir() and not e.name.startswith(".")',
           "if e.is_dir()", ("tests/test_imagefolder.py::test_hidden_folders_beside_the_classes_are_no_class",)),
    # RandomResizedCrop's rule and RandomHorizontalFlip's coin, shared by every backend
    Mutant("rrc_window_filling_a_side_refused", "training/data/imagefolder.py",
           "if 0 < w <= width and 0 < h <= height:", "if 0 < w < width and 0 < h < height:",
           ("tests/test_imagefolder.py::test_rrc_window_is_torchvisions_random_resized_crop_rule",)),
    Mutant("rrc_fallback_ratio_inverted", "training/data/imagefolder.py",
           "w, h = width, round(width / RRC_RATIO[0])", "w, h = width, round(width * RRC_RATIO[0])",
           ("tests/test_imagefolder.py::test_rrc_window_is_torchvisions_random_resized_crop_rule",)),
    Mutant("rrc_fallback_in_the_corner", "training/data/imagefolder.py",
           "return (width - w) // 2, (height - h) // 2, w, h", "return 0, 0, w, h",
           ("tests/test_imagefolder.py::test_rrc_window_is_torchvisions_random_resized_crop_rule",)),
    Mutant("train_never_mirrored", "training/data/imagefolder.py", "return window, rng.random() < 0.5",
           "return window, False", ("tests/test_imagefolder.py::test_about_half_the_training_crops_are_mirrored",)),
    Mutant("train_draft_request_floored", "training/data/imagefolder.py",
           "whole = _draft(im, (math.ceil(width * self.size / w), math.ceil(height * self.size / h)))",
           "whole = _draft(im, (width * self.size // w, height * self.size // h))",
           ("tests/test_imagefolder.py::test_a_crop_is_drafted_only_while_it_keeps_size_px_per_side",)),
    Mutant("step_ignores_world_size", "training/loop.py", "state.step += batch * ctx.dist.world_size",
           "state.step += batch", (GLOO_TEST,)),
    Mutant("imagenet_label_smoothing_dropped", "training/recipes/imagenet.py",
           "loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)", "loss_fn=nn.CrossEntropyLoss()",
           ("tests/test_train.py::test_the_imagenet_loss_is_cross_entropy_with_the_configs_label_smoothing",)),
    Mutant("every_rank_writes_events", "training/recipes/imagenet.py", "writes = info.is_main and not cfg.train.evaluate",
           "writes = not cfg.train.evaluate", (GLOO_TEST,)),
    # resume: exact, and one run in the logs
    Mutant("no_reseed_per_epoch", "training/loop.py",
           "torch.manual_seed(ctx.seed * 1_000_003 + epoch + ctx.dist.rank * 7_919_113)", "pass",
           (TRAIN + "test_resume_is_exact_for_a_model_drawing_random_numbers",)),
    Mutant("resume_no_event_purge", "training/recipes/imagenet.py", "purge = state.step + 1 if ckpt",
           "purge = None if ckpt", (PURGE_TEST,)),
    Mutant("resume_purge_off_by_one", "training/recipes/imagenet.py", "purge = state.step + 1 if ckpt",
           "purge = state.step if ckpt", (PURGE_TEST,)),
    Mutant("resume_keeps_crashed_log_rows", "training/recipes/imagenet.py",
           "_trim_human_log(cfg.train.logdir, start_epoch if ckpt else None)",
           "_trim_human_log(cfg.train.logdir, start_epoch + 1 if ckpt else None)", (PURGE_TEST,)),
    # checkpoints and failures
    Mutant("checkpoint_keeps_one_too_many", "training/checkpoint.py", "list_checkpoints(logdir)[:-keep]",
           "list_checkpoints(logdir)[:-keep - 1]",
           ("tests/test_checkpoint.py::test_save_load_round_trip_and_keep_last_k",)),
    Mutant("checkpoint_crc_ignored", "training/checkpoint.py", "if tensors and (bad := z.testzip()) is not None:",
           "if tensors and (bad := z.testzip()) is not None and False:", ("tests/test_checkpoint.py",)),
    Mutant("keep_1_keeps_all", "training/checkpoint.py", "if keep > 0 else []", "if keep > 1 else []",
           ("tests/test_checkpoint.py::test_keep_1_keeps_only_the_newest",)),
    Mutant("min_interval_exclusive", "training/checkpoint.py", "self.clock() - self._last_start >= self.min_interval_s",
           "self.clock() - self._last_start > self.min_interval_s",
           ("tests/test_checkpoint.py::test_checkpoint_every_and_min_interval",)),
    # the epoch before a due one left as "not written" (its clearing line is twice in the file): the exit writes it
    Mutant("exit_writes_an_epoch_older_than_the_last", "training/checkpoint.py", "            self._submit(epoch, snap)",
           "            self._submit(epoch, snap); self._unwritten = (epoch - 1, snap)",
           ("tests/test_checkpoint.py::test_the_exit_writes_nothing_older_than_the_last_written_epoch",)),
    Mutant("checkpoint_format_unchecked", "training/checkpoint.py", '    if ckpt["format"] != FORMAT:', "    if False:",
           ("tests/test_checkpoint.py::test_a_checkpoint_of_another_format_or_missing_a_key_is_refused_by_name",)),
    Mutant("checkpoint_keys_unchecked", "training/checkpoint.py",
           'required = ("format", "model", "optimizer", "epoch", "step", "config", "arch")', 'required = ("format", "model")',
           ("tests/test_checkpoint.py::test_a_checkpoint_of_another_format_or_missing_a_key_is_refused_by_name",)),
    Mutant("nonfinite_skip_steps_anyway", "training/loop.py",
           'if ctx.nonfinite == "skip" and not _step_finite(loss):', 'if ctx.nonfinite == "skip" and False:',
           (FAULTS + "test_nonfinite_skip_skips_only_that_step",)),
    Mutant("nonfinite_first_bad_step_reduced_by_max", "training/dist.py", "dist.all_reduce(t, op=dist.ReduceOp.MIN)",
           "dist.all_reduce(t, op=dist.ReduceOp.MAX)",
           (FAULTS + "test_a_nonfinite_loss_on_any_rank_stops_every_rank_at_the_first_bad_step_of_any",)),
    # bad input: refused before it runs anything; one run per logdir
    Mutant("phases_nesting_unbounded", "training/bounded.py", "if bracket_depth(text) > max_depth:", "if False:",
           (CLI + "test_train_bad_command_line[0]",)),
    Mutant("schedule_epochs_unbounded", "training/phases.py", "if max(start, end or 0) > MAX_EPOCHS:", "if False:",
           (CLI + "test_huge_schedule_dry_run_answers_at_once_as_a_process",)),
    Mutant("cifar_pickle_unrestricted", "training/data/cifar.py", "if (module, name) not in _PICKLE_GLOBALS:",
           "if False:", (CLI + "test_tampered_cifar_pickle_runs_nothing",)),
    Mutant("logdir_reused", "training/logs.py", "    if found:", "    if False:",
           (NEWCOMER + "test_a_fresh_run_refuses_a_logdir_holding_a_run_and_changes_nothing",)),
    Mutant("restart_resumes_another_jobs_run", "training/recipes/imagenet.py",
           "if not cfg.train.resume and not attempt.own_run:", "if not cfg.train.resume and not attempt.restarted:",
           (NEWCOMER + "test_a_restart_does_not_resume_a_run_another_launch_started",)),
    Mutant("config_yaml_keeps_ignored_phases", "training/recipes/imagenet.py",
           "cfg = dataclasses.replace(cfg, phases=saved)", "pass",
           (NEWCOMER + "test_resume_with_other_phases_warns_and_config_yaml_keeps_the_schedule_that_trains",)),
    # the DAWN export
    Mutant("dawn_epoch_is_row_index", "dawn/prepare_dawn_tsv.py",
           "epoch = int(_checked(EPOCH, epochs[t5.step]).value) if t5.step in epochs else len(rows)",
           "epoch = len(rows)", ("tests/test_dawn.py::test_epoch_column_is_the_logged_epoch_not_the_row_index",)),
    Mutant("cifar_dry_run_keeps_partial_batches", "training/train.py",
           "drop_last = cifar and cfg.cifar.drop_last", "drop_last = False",
           (NEWCOMER + "test_dry_run_of_a_cifar_config_plans_cifars_images",
            NEWCOMER + "test_plot_schedule_plans_the_recipes_images")),
    Mutant("optimizer_mismatch_traceback", "training/recipes/imagenet.py",
           "except ValueError:  # torch's message", "except KeyError:  # torch's message",
           ("tests/test_train.py::test_checkpoint_with_other_weight_decay_groups_is_refused_in_one_line",)),
    Mutant("cifar_trace_profiles_the_first_variant", "training/bench/cifar.py",
           'attempt(entry, "trace", lambda: trace_run(trainer,', 'attempt(entry, "trace", lambda: trace_run(trainers[0],',
           ("tests/test_bench_cifar.py::test_trace_profiles_one_extra_run_of_each_variant",)),
    Mutant("plan_of_no_steps_divides_by_zero", "training/phases.py", "            if not full:", "            if False:",
           (CLI + "test_train_bad_command_line[22]",)),
    Mutant("cifar_batch_past_the_data_trains_nothing", "training/recipes/cifar.py",
           "if ph.batch_size > self.train.num_images:", "if False:",
           (CLI + "test_cifar_batch_larger_than_the_data_trains_nothing_and_says_so",)),
    Mutant("plot_accepts_any_target", "dawn/plot.py", 'type=percent_arg, default=93.0', 'type=float, default=93.0',
           ("tests/test_plot.py::test_curves_bad_flags_are_one_line_exit_2",)),
    Mutant("plot_disk_error_a_traceback", "dawn/plot.py", "except (EventsError, OSError) as e:", "except EventsError as e:",
           ("tests/test_plot.py::test_a_figure_that_fails_midway_leaves_the_old_file",)),
    Mutant("plot_top5_curve_is_top1", "dawn/plot.py", '[r.top5 for r in rows], "-"', '[r.top1 for r in rows], "-"',
           ("tests/test_plot.py::test_curves_plot_top5_solid_top1_dashed_and_mark_the_first_hit",)),
    Mutant("plot_marker_on_the_target_line", "dawn/plot.py", 'ax.plot([hit.hours], [hit.top5], "o"',
           'ax.plot([hit.hours], [target_top5], "o"', ("tests/test_plot.py::test_curves_plot_top5_solid_top1_dashed_and_mark_the_first_hit",)),
    Mutant("plot_xlabel_hides_ignore_eval", "dawn/plot.py",
           'ax.set_xlabel("hours" + (" (evaluation time excluded)" if ignore_eval else ""))', 'ax.set_xlabel("hours")',
           ("tests/test_plot.py::test_curves_plot_top5_solid_top1_dashed_and_mark_the_first_hit",)),
    Mutant("dawn_summary_best_is_the_last", "dawn/prepare_dawn_tsv.py", "best = max(rows, key=lambda r: r.top5)",
           "best = rows[-1]",
           ("tests/test_dawn.py::test_summary_of_a_run_short_of_the_target_names_its_best_evaluation_not_its_last",)),
    # training on the CPU, and the loop's reports
    Mutant("hostmem_keeps_mmap", "training/hostmem.py", "M_MMAP_MAX = -4", "M_MMAP_MAX = -3",
           ("tests/test_cpu.py::test_large_blocks_are_reused_instead_of_faulted_in_every_step",)),
    Mutant("auto_precision_ignores_the_cpu", "training/loop.py",
           'return "bf16" if native_bf16(device) else "fp32"', 'return "bf16"',
           ("tests/test_cpu.py::test_auto_precision_is_bf16_only_where_the_cpu_computes_it",)),
    Mutant("ranks_share_dropout_masks", "training/loop.py", " + ctx.dist.rank * 7_919_113)", ")",
           ("tests/test_loop.py::test_each_rank_draws_its_own_dropout_masks_and_draws_them_again_on_a_rerun",)),
    Mutant("first_step_reported_every_epoch", "training/loop.py",
           "shapes_seen.add(tuple(images.shape))", "pass",
           ("tests/test_loop.py::test_first_step_of_each_shape_is_timed_once",)),
    Mutant("nan_watch_names_another_bad_step", "training/loop.py",
           "first = torch.where(torch.isfinite(losses), never, steps).min()",
           "first = torch.where(torch.isfinite(losses), never, steps.flip(0)).min()",
           ("tests/test_faults.py::test_nonfinite_stop_names_epoch_and_first_bad_step",)),
    # hostile input and bad data (2026-11-26, second pass)
    Mutant("config_accepts_nan", "training/config.py", "if not math.isfinite(value):", "if False:",
           (CLI + "test_train_bad_command_line[24]",)),
    Mutant("phase_copies_classes_unchecked", "training/recipes/imagenet.py", "        if train != first:",
           "        if False:", ("tests/test_faults.py::test_bad_data_one_line_exit_2_no_partial_output",)),
    Mutant("resume_settings_unnamed", "training/recipes/imagenet.py", "and k in old and old[k] != v]",
           "and False]", (NEWCOMER + "test_resume_with_other_settings_names_them",)),
    Mutant("dry_run_val_batch_ignores_keep_dl", "training/phases.py",
           "if p.start <= epoch and not p.keep_dl][-1]", "if p.start <= epoch][-1]",
           (NEWCOMER + "test_dry_run_shows_the_validation_batch",)),
    Mutant("loader_draws_the_global_rng", "training/data/imagefolder.py", "generator=torch.Generator(), worker_init_fn",
           "generator=None, worker_init_fn", ("tests/test_imagefolder.py::test_iterating_leaves_the_global_rng_alone",)),
    Mutant("normalise_rounds_twice", "training/data/imagefolder.py",
           "return torch.mul(shifted, self._inv_std, out=out)",
           "return torch.mul(shifted.to(out.dtype), self._inv_std.to(out.dtype), out=out)",
           ("tests/test_imagefolder.py::test_half_batches_are_the_fp32_values_rounded_once",)),
    Mutant("cached_bad_files_never_probed_again", "training/data/tree.py",
           "again = sorted(set(changed) | set(bad))", "again = sorted(set(changed))",
           ("tests/test_rectval.py::test_a_bad_file_is_read_again_even_with_its_stat_unchanged",)),
    Mutant("index_cache_ignores_replaced_files", "training/data/tree.py",
           "changed = np.flatnonzero((cached_stat != stat).any(axis=1)).tolist()", "changed = []",
           ("tests/test_rectval.py::test_a_file_replaced_in_place_is_read_again_from_a_cached_index",)),
    Mutant("index_cache_keyed_on_size_only", "training/data/tree.py", "out.append((st.st_size, st.st_mtime_ns))",
           "out.append((st.st_size, 0))",
           ("tests/test_rectval.py::test_a_file_replaced_in_place_is_read_again_from_a_cached_index",)),
    Mutant("val_decode_drafted", "training/data/imagefolder.py", "        geo = val_geometry(*im.size, self.size, (h, w))",
           "        geo = val_geometry(*im.size, self.size, (h, w)); _draft(im, (geo.resize_hw[1], geo.resize_hw[0]))",
           ("tests/test_imagefolder.py::test_validation_decodes_in_full_as_dali_and_imagenet18_do",)),
    Mutant("index_walk_order_not_imagefolders", "training/data/tree.py",
           "for dirpath, filenames in sorted(files.walk(os.path.join(split_dir, name))):",
           "for dirpath, filenames in files.walk(os.path.join(split_dir, name)):",
           ("tests/test_imagefolder.py::test_index_order_is_imagefolders_in_nested_folders",)),
    Mutant("bad_images_error_names_the_last", "training/data/tree.py", "i = min(bad)", "i = max(bad)",
           ("tests/test_imagefolder.py::test_bad_images_error_names_the_first_unreadable_file",)),
    Mutant("cifar_default_threads_inherited", "training/recipes/cifar.py",
           "return (self.cfg.cifar.threads or DEFAULT_THREADS) if", "return (self.cfg.cifar.threads or "
           "torch.get_num_threads()) if", ("tests/test_bench_cifar.py::test_each_variant_runs_with_its_own_threads",)),
    Mutant("lookahead_copies_at_every_epoch_end", "training/recipes/cifar.py",
           "and (cfg.lookahead_epoch_end or epoch == len(self.steps) - 1):", "and True:",
           ("tests/test_cifar_recipe.py::test_lookahead_sets_the_weights_to_the_ema_only_at_the_runs_end_as_airbench",)),
    Mutant("whiten_bias_lr_is_the_bn_biases", "training/recipes/cifar.py",
           'sgd_group(whiten_bias, cfg.whiten_bias_lr_scale, "whiten_bias")',
           'sgd_group(whiten_bias, cfg.bias_lr_scale, "whiten_bias")',
           ("tests/test_cifar_recipe.py::test_param_groups_bias_lr_and_decoupled_weight_decay",)),
    Mutant("resume_keeps_abandoned_checkpoints", "training/recipes/imagenet.py",
           "if writes and (ckpt or resume) and (moved := checkpoint.set_aside_after(", "if False and (moved := checkpoint.set_aside_after(",
           (NEWCOMER + "test_resuming_an_older_checkpoint_sets_the_later_ones_aside",)),
    Mutant("requeue_without_checkpoint_keeps_the_log", "training/recipes/imagenet.py",
           "(0 if attempt.restarted or resume else None)", "(0 if attempt.restarted else None)",
           (NEWCOMER + "test_resume_auto_without_a_checkpoint_starts_the_run_over",)),
    Mutant("corrupt_event_record_ends_the_file", "dawn/events.py",
           'raise EventsError(f"{path}: corrupt record at byte {offset} (bad data checksum)")', "break",
           ("tests/test_dawn.py::test_corrupt_record_is_an_error_naming_its_offset",)),
    Mutant("dawn_accepts_nan", "dawn/prepare_dawn_tsv.py", "if not (math.isfinite(s.value) and s.value >= minimum):",
           "if False:", ("tests/test_dawn.py::test_value_not_a_finite_number_is_an_error_naming_tag_step_and_file",)),
    Mutant("clock_starts_after_the_set_up", "training/recipes/imagenet.py", "started=launched, purge_step=purge)",
           "purge_step=purge)", (NEWCOMER + "test_the_clock_starts_before_the_set_up_as_imagenet18s",)),
    Mutant("start_logged_at_the_resume_time", "training/logs.py",
           'self.writer.add_scalar("first", self.start_time, 0, walltime=self.start_time)',
           'self.writer.add_scalar("first", self.start_time, 0)',
           (NEWCOMER + "test_a_run_resumed_into_a_new_logdir_exports_with_the_original_clock",)),
    Mutant("resumed_into_a_new_logdir_has_no_start", "training/logs.py", "if start_time is None or new_dir:",
           "if start_time is None:", (NEWCOMER + "test_a_run_resumed_into_a_new_logdir_exports_with_the_original_clock",)),
    # launching (2026-11-26, a review of the launchers and the CLI)
    Mutant("logdir_refusal_on_rank_0_only", "training/recipes/imagenet.py",
           "if refused := dist.broadcast_object(refused):", "if info.is_main and (refused := refused):",
           ("tests/test_faults.py::test_a_refused_logdir_under_torchrun_is_one_line_and_blames_no_rank",)),
    Mutant("fault_drill_that_never_fires", "training/dist.py", "if world_size is not None and target >= world_size:",
           "if False:", ("tests/test_checkpoint.py::test_fault_drill_spec",)),
    Mutant("nccl_collective_error_not_a_peer_failure", "training/dist.py", '("gloo" in text or "nccl" in text)',
           '"gloo" in text',
           ("tests/test_checkpoint.py::test_a_collective_error_from_either_backend_in_a_group_is_a_peer_failure",)),
    Mutant("data_given_twice_dropped", "training/train.py",
           "if data_dirs and args.data is not None and args.data != data_dirs[0]:", "if False:",
           (NEWCOMER + "test_data_given_twice_is_refused",)),
    Mutant("launch_checks_nothing_first", "launch/common.sh", '  [ -n "${LAUNCH_DRY_RUN:-}" ] && return 0',
           "  return 0", ("tests/test_launch.py::test_a_bad_command_line_is_said_once_before_torchrun",)),
    Mutant("main_job_always_runs_pip", "launch/cifar10.sh", "if ! python3 launch/requirements_met.py requirements.txt &&",
           "if ! false &&", ("tests/test_launch.py::test_the_main_job_asks_pip_and_torch_only_when_needed",)),
    Mutant("main_job_stops_without_dali", "launch/cifar10.sh", "requirements_met.py --without nvidia-dali-cuda130",
           "requirements_met.py", ("tests/test_launch.py::test_the_main_job_goes_on_without_dali_where_pip_cannot_install_it",)),
    Mutant("main_job_goes_on_without_torch", "launch/cifar10.sh", "requirements.txt || exit 1", "requirements.txt || true",
           ("tests/test_launch.py::test_the_main_job_goes_on_without_dali_where_pip_cannot_install_it",)),
    Mutant("requirements_met_without_skips_all", "launch/requirements_met.py", "canonicalize_name(req.name) in skip:",
           "bool(skip):", ("tests/test_launch.py::test_requirements_met_answers_only_what_it_can_read",)),
    Mutant("requirements_met_ignores_versions", "launch/requirements_met.py",
           "if not req.specifier.contains(installed, prereleases=True):", "if False:",
           ("tests/test_launch.py::test_requirements_met_answers_only_what_it_can_read",)),
    Mutant("cifar_labels_of_any_type", "training/data/cifar.py",
           'if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):', "if False:",
           (CLI + "test_cifar_pickle_with_bad_labels_is_one_line",)),
    Mutant("cifar_label_one_past_the_classes", "training/data/cifar.py", "y.max() >= len(classes)",
           "y.max() > len(classes)", ("tests/test_cifar_data.py::test_missing_and_corrupt_data_are_one_line_errors",)),
    Mutant("cifar_same_shuffle_every_epoch", "training/data/cifar.py",
           "g.manual_seed(self.seed * 1_000_003 + epoch + 1)", "g.manual_seed(self.seed * 1_000_003 + 1)",
           ("tests/test_cifar_data.py::test_each_epoch_is_a_new_shuffle_and_the_same_one_for_the_same_epoch",)),
    Mutant("dawn_event_decode_error_raw", "dawn/events.py", "except DecodeError:  # checksums", "except KeyError:  #",
           (CLI + "test_dawn_export_of_a_hostile_event_file_is_one_line",)),
    Mutant("dawn_metadata_not_the_latest", "dawn/events.py", "text = texts[-1].text", "text = texts[0].text",
           ("tests/test_dawn.py::test_run_metadata_is_the_latest_logged",)),
    Mutant("dawn_event_length_read_at_once", "dawn/events.py", "data = _read_upto(f, length)", "data = f.read(length)",
           (CLI + "test_dawn_export_of_a_hostile_event_file_is_one_line",)),
    Mutant("resize_into_its_own_input", "training/resize.py",
           "if os.path.commonpath([data_real, out_real]) == data_real:", "if False:",
           (CLI + "test_resize_into_its_own_data_dir_is_refused",)),
    Mutant("tree_follows_symlink_loops", "training/files.py", "if (key := (st.st_dev, st.st_ino)) in seen:",
           "if False:", (CLI + "test_symlink_loop_in_a_class_folder_is_refused",)),
    Mutant("cifar_bool_or_huge_widths", "training/models/cifar.py",
           "type(w) is int and 0 < w <= MAX_WIDTH for w in widths", "isinstance(w, int) and w > 0 for w in widths",
           (CLI + "test_train_bad_command_line",)),
    Mutant("empty_logdir_accepted", "training/config.py", "if name in NONEMPTY and not value:", "if False:",
           (CLI + "test_train_bad_command_line",)),
    Mutant("cifar_negative_lr_accepted", "training/recipes/cifar.py",
           '"brightness", "lr", "weight_decay",', '"brightness",', (CLI + "test_train_bad_command_line",)),
    Mutant("cifar_cutout_past_the_image", "training/recipes/cifar.py", "if c.cutout > ph.size:", "if False:",
           (CLI + "test_train_bad_command_line",)),
    Mutant("cifar_data_keys_ignored", "training/recipes/cifar.py", '("optim", "model", "data")', '("optim", "model")',
           (CLI + "test_train_bad_command_line",)),
    Mutant("resume_world_size_unsaid", "training/recipes/imagenet.py",
           'if ckpt.get("world_size", info.world_size) != info.world_size:', "if False:",
           ("tests/test_faults.py::test_resume_under_another_world_size_says_so",)),
    Mutant("start_over_leaves_unusable_checkpoints", "training/recipes/imagenet.py",
           "if writes and (ckpt or resume) and (moved", "if writes and ckpt and (moved",
           (NEWCOMER + "test_a_start_over_past_unusable_checkpoints_keeps_its_own",)),
    Mutant("pipeline_window_inside_a_worker_round", "training/bench/pipeline.py",
           "skip = -(-(skip + 1) // workers) * workers - 1", "pass",
           ("tests/test_bench.py::test_pipeline_window_of_worker_processes_counts_only_what_it_waited_for",)),
    Mutant("end_to_end_rate_from_the_warm_up", "training/bench/pipeline.py", "steady = mine[1:]  #",
           "steady = mine[1:] or mine  #", ("tests/test_bench.py::test_end_to_end_gives_no_img_s_from_a_warm_up_epoch",)),
    Mutant("epoch_augment_made_twice", "training/data/cifar.py", "self.epoch_images = self.epoch_labels = None  # made when iterated:",
           "self.epoch_images, self.epoch_labels = self.augment(self.perm), self.labels[self.perm]  #",
           ("tests/test_cifar_speed.py::test_epoch_augment_augments_each_epoch_once_in_a_timed_run",)),
    Mutant("unsynced_profile_syncs", "training/loop.py", "        if self.sync:", "        if True:",
           ("tests/test_loop.py::test_an_unsynced_profile_lets_the_host_run_ahead",)),
    Mutant("end_to_end_profile_synced", "training/bench/pipeline.py", '"train.profile_sync=false",', "",
           ("tests/test_bench.py::test_end_to_end_times_the_trainer_unsynced",)),
    Mutant("end_to_end_drops_the_logging_sync", "training/bench/pipeline.py", '"optimizer", "logging")', '"optimizer")',
           ("tests/test_bench.py::test_end_to_end_times_the_trainer_unsynced",)),
    Mutant("dali_first_batch_error_raw", "training/data/dali.py", "raise self._decode_error(e, 0) from None", "raise",
           ("tests/test_dali.py::test_image_failing_to_decode_in_the_first_batch_is_named",)),
    Mutant("later_phase_copies_indexed_late", "training/recipes/imagenet.py",
           "        index_later_phases(dataclasses.replace(loaders.base, phase=loaders.active), schedule.data_phases)",
           "        pass", ("tests/test_faults.py::test_bad_data_one_line_exit_2_no_partial_output",)),
    Mutant("fractional_epoch_share_of_undropped_batches", "training/phases.py",
           "return self.share_of_epoch(epoch, self.batches_per_epoch(epoch, num_images, world_size, drop_last))",
           "return self.share_of_epoch(epoch, self.batches_per_epoch(epoch, num_images, world_size))",
           ("tests/test_cifar_recipe.py::test_the_lr_of_each_step_is_airbenchs",)),
    Mutant("cifar_lr_one_step_late", "training/recipes/cifar.py", "parse_schedule(cfg.phases, step_start=True)",
           "parse_schedule(cfg.phases)", ("tests/test_cifar_recipe.py::test_the_lr_of_each_step_is_airbenchs",)),
    Mutant("step_start_ignored", "training/phases.py", "        if self.step_start:", "        if False:",
           ("tests/test_cifar_recipe.py::test_the_lr_of_each_step_is_airbenchs",)),
    Mutant("config_dump_leaves_numeric_strings_plain", "training/config.py",
           "return bounded.dump_yaml(to_dict(cfg), sort_keys=False)",
           "return bounded.yaml.safe_dump(to_dict(cfg), sort_keys=False)", (CLI + "test_the_resolved_config_loads_back_as_itself",)),
    Mutant("yaml_duplicate_keys_kept", "training/bounded.py", "                    if key in seen:",
           "                    if False:", (CLI + "test_config_file_bounds",)),
    Mutant("phases_duplicate_keys_kept", "training/phases.py", "        _refuse_duplicate_keys(code)", "        pass",
           (CLI + "test_train_bad_command_line",)),
    Mutant("keep_dl_of_any_type", "training/phases.py", "    if not isinstance(keep_dl, bool):", "    if False:",
           (CLI + "test_train_bad_command_line",)),
    Mutant("imagenet_ignores_cifar_keys", "training/recipes/imagenet.py",
           'refuse_unread(cfg, "imagenet", ("cifar",),', 'refuse_unread(cfg, "imagenet", (),', (CLI + "test_train_bad_command_line",)),
    Mutant("unread_sections_accepted", "training/config.py",
           'if f"{section}.{key}" not in keep and value != getattr(default, key):', "if False:",
           (CLI + "test_train_bad_command_line",)),
    Mutant("device_error_said_by_rank_0_only", "training/train.py", 'if getattr(e, "per_rank", False):', "if False:",
           ("tests/test_multinode.py::test_a_rank_whose_machine_has_too_few_gpus_says_so",)),
    Mutant("slurm_keeps_a_stale_node_rank", "launch/slurm.sbatch", "unset NODE_RANK MASTER_ADDR MASTER_PORT", "true",
           ("tests/test_launch.py::test_slurm_ignores_a_node_rank_left_in_the_environment",)),
    Mutant("resume_into_new_logdir_without_metadata", "training/recipes/imagenet.py",
           "if not ckpt or logger.new_events:", "if not ckpt:",
           (NEWCOMER + "test_a_run_resumed_into_a_new_logdir_exports_with_the_original_clock",)),
    Mutant("dawn_unreadable_tensor_raw", "dawn/events.py", "except (TypeError, KeyError, ValueError) as e:", "except OSError as e:",
           ("tests/test_dawn.py::test_a_tensor_that_cannot_be_read_is_skipped_or_one_line",)),
    Mutant("dawn_vector_tensor_read_as_a_scalar", "dawn/events.py",
           'if plugin == "text" or array.size != 1 or array.dtype.kind not in "fiub":',
           'if plugin == "text" or array.dtype.kind not in "fiub":',
           ("tests/test_dawn.py::test_tensors_that_are_neither_scalar_nor_text_are_left_out",)),
    Mutant("dawn_strings_claimed_as_scalars_read_as_text", "dawn/events.py",
           '        if plugin == "scalars":', '        if False:',
           ("tests/test_dawn.py::test_tensors_that_are_neither_scalar_nor_text_are_left_out",)),
    Mutant("dawn_other_plugins_tensors_read", "dawn/events.py",
           'if kind != "tensor" or plugin not in (None, "scalars", "text"):', 'if kind != "tensor":',
           ("tests/test_dawn.py::test_tensors_that_are_neither_scalar_nor_text_are_left_out",)),
    Mutant("dawn_bool_and_unsigned_tensors_dropped", "dawn/events.py", 'array.dtype.kind not in "fiub":',
           'array.dtype.kind not in "fi":',
           ("tests/test_dawn.py::test_one_element_tensors_of_every_number_kind_are_scalars",)),
    Mutant("dawn_text_lines_joined_by_spaces", "dawn/events.py", 'return Text(step, wall_time, "\\n".join(',
           'return Text(step, wall_time, " ".join(',
           ("tests/test_dawn.py::test_a_text_of_several_strings_is_their_lines_in_order",)),
    Mutant("dawn_failed_write_leaves_its_temp_file", "dawn/prepare_dawn_tsv.py", "        tmp.unlink(missing_ok=True)",
           "        pass", ("tests/test_dawn.py::test_a_failed_write_leaves_the_old_file_and_no_temp_file",)),
    Mutant("dawn_directory_read_as_an_event_file", "dawn/events.py", "if p.match(EVENT_GLOB) and p.is_file())",
           "if p.match(EVENT_GLOB))",
           ("tests/test_dawn.py::test_a_directory_named_like_an_event_file_is_not_read_as_one",)),
    Mutant("dawn_export_broken_pipe_traceback", "dawn/prepare_dawn_tsv.py",
           "    except BrokenPipeError:  # the reader stopped early", "    except KeyError:  #",
           ("tests/test_dawn.py::test_a_reader_that_stops_early_ends_the_export_quietly",)),
    Mutant("phases_duplicate_yaml_key_misnamed", "training/phases.py",
           "    except (bounded.LimitError, bounded.DuplicateKeyError) as e:  # YAML", "    except bounded.LimitError as e:  #",
           (CLI + "test_train_bad_command_line",)),
    Mutant("plotted_lr_counts_the_dropped_batch", "dawn/plot.py",
           "full_iters = schedule.batches_per_epoch(row.epoch, num_images, world_size, drop_last)",
           "full_iters = schedule.batches_per_epoch(row.epoch, num_images, world_size)",
           ("tests/test_plot.py::test_plotted_lr_is_the_cifar_runs",)),
    Mutant("nproc_ignores_visible_devices", "launch/local.sh", 'if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then',
           "if false; then", ("tests/test_launch.py::test_visible_devices_set_the_process_count",)),
    Mutant("slurm_requeue_rolls_back_to_its_resume_path", "training/dist.py",
           '("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")', '("TORCHELASTIC_RESTART_COUNT",)',
           (NEWCOMER + "test_a_requeued_slurm_job_continues_the_logdir_not_its_first_resume_path",)),
    Mutant("restart_count_max_not_sum", "training/dist.py", "return sum(int(c) if c.isdigit() else 0 for c in counts)",
           "return max(int(c) if c.isdigit() else 0 for c in counts)",
           ("tests/test_multinode.py::test_each_attempt_of_a_requeued_slurm_job_gets_its_own_store_keys",)),
    Mutant("restart_decided_by_rank_0s_count", "training/dist.py", "Attempt(max(count for count, *_ in everyone) > 0 or own",
           "Attempt(everyone[0][0] > 0 or own", ("tests/test_multinode.py::test_any_ranks_restart_count_makes_it_a_restart",)),
    Mutant("blank_recorded_agent_is_an_agent", "training/dist.py", 'earlier = set(everyone[0][2]) - {""}',
           "earlier = set(everyone[0][2])", ("tests/test_multinode.py::test_a_record_naming_no_agent_of_this_attempt_is_a_new_run",)),
    Mutant("recorded_agents_of_any_shape", "training/dist.py",
           "return [a for a in agents if isinstance(a, str)] if isinstance(agents, list) else []", "return list(agents)",
           ("tests/test_multinode.py::test_a_record_naming_no_agent_of_this_attempt_is_a_new_run",)),
    Mutant("rank_reports_its_oldest_checkpoint", "training/dist.py",
           "newest = checkpoint.epoch_of(checkpoint.list_checkpoints(logdir)[-1])",
           "newest = checkpoint.epoch_of(checkpoint.list_checkpoints(logdir)[0])",
           ("tests/test_multinode.py::test_each_rank_reports_the_newest_checkpoint_it_sees",)),
    Mutant("logdir_one_epoch_newer_passes", "training/dist.py", "    if epoch > epoch0:", "    if epoch > epoch0 + 1:",
           ("tests/test_multinode.py::test_only_a_rank_seeing_newer_checkpoints_than_rank_0_stops_the_group",)),
    Mutant("local_rank_equal_to_gpu_count_passes", "training/dist.py", "if local_rank >= torch.cuda.device_count():",
           "if local_rank > torch.cuda.device_count():", ("tests/test_checkpoint.py::test_a_rank_beyond_the_visible_gpus_is_one_line",)),
    Mutant("projection_compiles_once_per_phase", "training/bench/project.py", "        compiled |= new_shapes",
           "        compiled = set()", ("tests/test_projection.py::test_a_warm_up_per_new_batch_shape",)),
    Mutant("projection_evaluates_evenly", "training/bench/project.py",
           "phase.size, 0, gpus, rect=False))", "phase.size, 0, 1, rect=False)) / gpus",
           ("tests/test_projection.py::test_evaluation_takes_as_long_as_its_busiest_rank",)),
    Mutant("projection_unmeasured_eval_at_training_rate", "training/bench/project.py", "else EVAL_SPEEDUP * img_s",
           "else img_s", ("tests/test_projection.py::test_an_unmeasured_eval_rate_is_three_times_the_training_rate",)),
    Mutant("projection_one_gpu_loses_10_percent", "training/bench/project.py",
           "1.0 if args.gpus == 1 else DEFAULT_EFFICIENCY", "DEFAULT_EFFICIENCY",
           ("tests/test_projection.py::test_cli_efficiency_defaults_to_1_on_one_gpu_and_0_9_on_more",)),
    Mutant("launch_checks_only_the_config_types", "launch/common.sh", '"$@" --check || exit $?',
           '"$@" --print-config > /dev/null || exit $?',
           ("tests/test_launch.py::test_a_bad_command_line_is_said_once_before_torchrun",)),
    Mutant("check_skips_the_arch", "training/recipes/imagenet.py", "    resnet.check_arch(cfg.model.arch)",
           "    pass", (CLI + "test_train_bad_command_line",)),
    Mutant("init_bn0_zeroes_bn1_of_basic_blocks", "training/models/resnet.py",
           "else m.bn2 if isinstance(m, BasicBlock) else None", "else m.bn1 if isinstance(m, BasicBlock) else None",
           ("tests/test_resnet.py::test_init_bn0_zeroes_the_second_bn_of_each_basic_block",)),
    Mutant("cifar_plain_accuracy_by_argmax", "training/recipes/cifar.py", "p1 = loop.topk_correct(plain, labels)[0]",
           "p1 = (plain.argmax(1) == labels).sum()",
           ("tests/test_cifar_recipe.py::test_plain_accuracy_breaks_ties_as_the_tta_accuracy",)),
    Mutant("workers_die_on_group_sigterm", "training/data/imagefolder.py", "worker_init_fn=_ignore_sigterm)",
           "worker_init_fn=None)",
           ("tests/test_checkpoint.py::test_sigterm_to_the_process_group_with_loader_workers_still_saves",)),
    Mutant("resize_into_another_size", "training/resize.py", "if isinstance(made, dict) and made != settings:",
           "if False:", ("tests/test_resize.py::test_another_size_into_the_same_output_is_refused",)),
    Mutant("resize_reencodes_the_exact_size", "training/resize.py", "if min(w, h) <= size:", "if min(w, h) < size:",
           ("tests/test_resize.py::test_exact_size_copied_long_side_rounded_and_quality_applied",)),
    Mutant("resize_long_side_floored", "training/resize.py", "else (max(1, round(w * scale)), size)",
           "else (max(1, int(w * scale)), size)", ("tests/test_resize.py::test_exact_size_copied_long_side_rounded_and_quality_applied",)),
    Mutant("resize_quality_ignored", "training/resize.py",
           'params = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}', "params = {}", ("tests/test_resize.py::test_exact_size_copied_long_side_rounded_and_quality_applied",)),
    Mutant("resize_failure_leaves_a_stale_part", "training/resize.py", "            os.unlink(part)", "            pass",
           ("tests/test_resize.py::test_an_input_failing_mid_decode_leaves_no_part_file",)),
    Mutant("resize_keeps_cmyk", "training/resize.py",
           'img = im.convert("RGB") if fmt == "JPEG" and im.mode not in ("RGB", "L") else im', "img = im",
           ("tests/test_resize.py::test_a_cmyk_jpeg_is_written_as_rgb_with_its_colours",)),
    Mutant("cifar_progress_counts_the_dropped_batch", "training/loop.py",
           "iters = sched.share_of_epoch(epoch, full_iters)",
           "iters = sched.iters_per_epoch(epoch, loader.num_images, ctx.dist.world_size)",
           ("tests/test_cifar_recipe.py::test_cifar100_end_to_end_on_generated_data",)),
    Mutant("eta_counts_the_dropped_batch", "training/loop.py",
           "iters = sched.iters_per_epoch(e, ctx.num_train, world, ctx.drop_last)",
           "iters = sched.iters_per_epoch(e, ctx.num_train, world)",
           ("tests/test_loop.py::test_eta_counts_the_steps_the_drop_last_loader_yields",)),
    Mutant("epoch_steps_from_the_first_phase_count", "training/loop.py",
           "iters = sched.share_of_epoch(epoch, full_iters)",
           "iters = min(sched.iters_per_epoch(epoch, ctx.num_train, ctx.dist.world_size), full_iters)",
           ("tests/test_faults.py::test_a_phase_on_a_data_copy_with_more_images_trains_them_all_and_resumes_exactly",)),
    Mutant("resume_keeps_the_checkpoints_optimizer_settings", "training/recipes/imagenet.py",
           "            group.update(settings)", "            pass",
           ("tests/test_faults.py::test_resume_with_changed_optimizer_settings_trains_with_the_new_ones",)),
    Mutant("yaml_1_1_numbers", "training/bounded.py", "return yaml.load(text, Loader=_Loader)",
           "return yaml.safe_load(text)", (NEWCOMER + "test_numbers_read_as_python_reads_them",)),
    Mutant("check_skips_the_data", "training/recipes/imagenet.py", "    if cfg.data.dir:", "    if False:",
           (CLI + "test_check_reads_every_phase_data_dir",
            "tests/test_launch.py::test_what_a_start_meets_on_disk_is_said_once_before_torchrun")),
    Mutant("check_skips_the_logdir", "training/recipes/imagenet.py", "    if not resume:  # (",
           "    if False:  # (", (CLI + "test_check_refuses_a_logdir_holding_a_run_unless_resuming",)),
    # values as typed: a text override whole, a YAML comment or a stray underscore refused, not dropped
    Mutant("text_override_read_as_yaml", "training/config.py", "    if not is_text(path):",
           "    if True:", (CLI + "test_a_text_override_is_taken_whole_and_numbers_still_read",)),
    Mutant("override_comment_dropped", "training/config.py", "    if (at := bounded.comment_at(raw)) is not None:",
           "    if (at := None) is not None:", (CLI + "test_a_value_yaml_would_read_otherwise_is_refused",)),
    Mutant("yaml_1_1_underscores", "training/bounded.py", '_MORE = r"(?:_?[0-9])*"', '_MORE = r"[0-9_]*"',
           (CLI + "test_numbers_read_as_python_reads_them_and_a_stray_underscore_stays_text",
            CLI + "test_a_value_yaml_would_read_otherwise_is_refused")),
    # a data phase that never runs
    Mutant("data_phase_past_the_end_accepted", "training/phases.py",
           "if ph.start >= schedule.total_epochs and not trained:", "if False:",
           ("tests/test_phases.py::test_a_data_phase_at_or_past_the_schedules_end_is_refused",)),
    Mutant("data_phase_in_the_last_epoch_refused", "training/phases.py",
           "if ph.start >= schedule.total_epochs and not trained:",
           "if ph.start >= schedule.num_epochs - 1 and not trained:",
           ("tests/test_phases.py::test_a_data_phase_in_the_last_epoch_runs",)),
    # the schedule's edges (a mutation pass, 2026-11-27)
    Mutant("sampler_padding_ignored", "training/phases.py", "per_rank, bs = math.ceil(num_images / world_size), self",
           "per_rank, bs = num_images // world_size, self",
           ("tests/test_phases.py::test_iterations_per_epoch_follow_distributed_sampler",)),
    Mutant("shape_of_a_batch_never_run", "training/phases.py", "if row.iters == full and (last, row.size) != shapes[0]:",
           "if (last, row.size) != shapes[0]:",
           ("tests/test_phases.py::test_batch_shapes_are_each_phases_full_and_partial_batch",)),
    Mutant("step_start_epoch_step_ramps_per_step", "training/phases.py", "        position = float(epoch)", "        pass",
           ("tests/test_phases.py::test_epoch_step_holds_lr_through_an_epoch_with_airbenchs_arithmetic_too",)),
    Mutant("min_scale_1_refused", "training/phases.py", "not 0 < min_scale <= 1:", "not 0 < min_scale < 1:",
           ("tests/test_phases.py::test_min_scale_1_is_accepted",)),
    Mutant("lr_ramp_to_a_negative_lr_accepted", "training/phases.py",
           "if min(lr_start, lr_end if lr_end is not None else lr_start) < 0:", "if lr_start < 0:",
           ("tests/test_phases.py::test_validation_errors_name_phase_and_key",)),
    Mutant("lr_phase_of_no_length_accepted", "training/phases.py", "        if end <= start:", "        if end < start:",
           ("tests/test_phases.py::test_validation_errors_name_phase_and_key",)),
    Mutant("two_data_phases_at_one_epoch_accepted", "training/phases.py", "if prev and start <= prev[-1].start:",
           "if prev and start < prev[-1].start:", ("tests/test_phases.py::test_validation_errors_name_phase_and_key",)),
    Mutant("resume_refuses_the_schedule_it_trains", "training/recipes/imagenet.py",
           "schedule = parse_schedule(saved, trained=True)", "schedule = parse_schedule(saved)",
           (NEWCOMER + "test_a_checkpoints_schedule_is_resumed_as_it_was_written",)),
    # a resumed run's data check reads the phases that train: the checkpoint's
    Mutant("resume_checks_the_given_phases_data", "training/recipes/imagenet.py",
           "    if not cfg.train.resume:  # resuming", "    if True:  # resuming",
           (NEWCOMER + "test_resume_checks_the_data_of_the_phases_it_trains",)),
    Mutant("resume_data_checked_by_the_loaders_alone", "training/recipes/imagenet.py",
           "    if cfg.train.resume:  # main left it to here", "    if False:  # main left it to here",
           (NEWCOMER + "test_resume_checks_the_data_of_the_phases_it_trains",)),
    Mutant("check_reads_the_given_phases_on_resume", "training/recipes/imagenet.py",
           "trains = saved_schedule(resume, cfg.train.logdir) if own_disk and resume else None", "trains = None",
           (NEWCOMER + "test_resume_checks_the_data_of_the_phases_it_trains",)),
    Mutant("bench_measures_a_part_generated_tree", "training/bench/pipeline.py",
           'redo = made is not None and not made.get("complete")', "redo = False",
           ("tests/test_bench.py::test_an_interrupted_generation_or_copy_is_made_again_not_measured",)),
    Mutant("jpegtree_complete_before_its_images", "training/bench/jpegtree.py", '"complete": False, "copies"',
           '"complete": True, "copies"',
           ("tests/test_bench.py::test_a_killed_generation_leaves_its_tree_marked_unfinished",)),
    Mutant("tta_plain_overwritten_by_cuda_graphs", "training/recipes/cifar.py", "plain = model(images).clone()",
           "plain = model(images)",
           ("tests/test_cifar_recipe.py::test_tta_holds_when_each_call_overwrites_the_last_output",)),
    Mutant("whiten_bias_of_zero_epochs_trains_a_step", "training/recipes/cifar.py",
           "if cfg.whiten_bias_epochs <= 0:", "if False:",
           ("tests/test_cifar_recipe.py::test_a_whitening_bias_of_zero_epochs_never_trains",)),
    Mutant("selective_tta_views_the_most_confident", "training/recipes/cifar.py", "topk(k, largest=False)",
           "topk(k, largest=True)",
           ("tests/test_cifar_recipe.py::test_selective_tta_views_only_the_least_confident_in_whole_batches",)),
    Mutant("selective_tta_partial_batch", "training/recipes/cifar.py", "if len(part) < batch_size else part",
           "if False else part",
           ("tests/test_cifar_recipe.py::test_selective_tta_views_only_the_least_confident_in_whole_batches",)),
    Mutant("evaluate_ignores_tta_fraction", "training/recipes/cifar.py", "            if fraction >= 1:",
           "            if True:",
           ("tests/test_cifar_recipe.py::test_evaluate_scores_the_selective_tta_over_the_whole_test_set",)),
    Mutant("jitter_shift_not_scaled", "training/data/cifar.py", ".to(self.dtype) * self.scale  # (x + b)",
           ".to(self.dtype)  # (x + b)",
           ("tests/test_cifar_data.py::test_colour_jitter_is_one_brightness_shift_and_contrast_scale_per_image",)),
    Mutant("unit_std_head_ignores_width", "training/models/cifar.py",
           "head_scale / widths[2] if head_unit_std", "head_scale if head_unit_std",
           ("tests/test_cifar_recipe.py::test_a_unit_std_head_divides_the_logits_by_its_width",)),
    Mutant("whiten_bias_random_at_reset", "training/models/cifar.py", "        self.whiten.bias.zero_()",
           "        pass", ("tests/test_cifar_recipe.py::test_reset_zeroes_the_whitening_bias",)),
    Mutant("cifar_label_smoothing_ignored", "training/recipes/cifar.py",
           'labels, label_smoothing=label_smoothing, reduction="sum")', 'labels, reduction="sum")',
           ("tests/test_cifar_recipe.py::test_the_loss_is_the_summed_label_smoothed_cross_entropy",)),
    Mutant("tta_shifted_views_zero_padded", "training/recipes/cifar.py", '(1, 1, 1, 1), mode="reflect")',
           "(1, 1, 1, 1))", ("tests/test_cifar_recipe.py::test_tta_shifted_views_reflect_at_the_border",)),
    Mutant("lookahead_ema_not_copied_into_the_weights", "training/recipes/cifar.py",
           "                torch._foreach_copy_(self.tensors, self.ema)", "                pass",
           ("tests/test_cifar_recipe.py::test_lookahead_ema_follows_airbenchs_schedule",)),
    Mutant("lookahead_decay_per_update_not_per_step", "training/recipes/cifar.py",
           "decay = cfg.lookahead_decay ** cfg.lookahead_every *", "decay = cfg.lookahead_decay *",
           ("tests/test_cifar_recipe.py::test_lookahead_ema_follows_airbenchs_schedule",)),
    Mutant("lookahead_from_the_first_epoch", "training/recipes/cifar.py",
           "if epoch >= cfg.lookahead_start_epoch and", "if epoch >= 0 and",
           ("tests/test_cifar_recipe.py::test_lookahead_ema_follows_airbenchs_schedule",)),
    Mutant("cifar_muon_without_nesterov", "training/recipes/cifar.py",
           "return Muon(groups, lr=0.0, momentum=cfg.momentum, nesterov=True)",
           "return Muon(groups, lr=0.0, momentum=cfg.momentum, nesterov=False)",
           ("tests/test_cifar_recipe.py::test_muon_steps_the_orthogonalised_nesterov_momentum",)),
    Mutant("muon_nesterov_ignored", "training/muon.py", 'g = g.add(buf, alpha=m) if group["nesterov"] else buf',
           "g = buf", ("tests/test_cifar_recipe.py::test_muon_steps_the_orthogonalised_nesterov_momentum",)),
    Mutant("muon_momentum_never_decays", "training/muon.py", "            buf.mul_(m).add_(g)",
           "            buf.add_(g)", ("tests/test_cifar_recipe.py::test_muon_steps_the_orthogonalised_nesterov_momentum",)),
    Mutant("newton_schulz_coefficient", "training/muon.py", "NS_COEFFS = (3.4445, -4.7750, 2.0315)",
           "NS_COEFFS = (3.4445, -4.7750, 2.0415)",
           ("tests/test_cifar_recipe.py::test_newton_schulz_applies_the_muon_quintic_to_each_singular_value",)),
    Mutant("cpu_timer_reads_the_clock_not_the_interval", "training/recipes/cifar.py",
           "            self.seconds = time.perf_counter() - self._start", "            self.seconds = time.perf_counter()",
           ("tests/test_cifar_recipe.py::test_the_cpu_timer_measures_the_elapsed_seconds",)),
    Mutant("results_no_tta_mean_is_the_tta_mean", "training/recipes/cifar.py",
           '"mean_accuracy_no_tta": plain["mean"]', '"mean_accuracy_no_tta": acc["mean"]',
           ("tests/test_cifar_recipe.py::test_results_json_means_each_accuracy_separately",)),
    Mutant("results_median_time_is_the_mean", "training/recipes/cifar.py",
           '"median_train_seconds": statistics.median(r.train_seconds for r in results)',
           '"median_train_seconds": statistics.fmean(r.train_seconds for r in results)',
           ("tests/test_cifar_recipe.py::test_results_json_means_each_accuracy_separately",)),
    Mutant("warmup_keeps_the_noise_labels", "training/recipes/cifar.py", "            self.train.labels = true_labels",
           "            pass", ("tests/test_cifar_speed.py::test_a_warmup_run_gives_the_true_labels_back",)),
    Mutant("rejoin_checks_the_logdir_anyway", "training/train.py", "check(cfg, own_disk=not args.rejoin)",
           "check(cfg, own_disk=True)",
           ("tests/test_launch.py::test_a_machine_rejoining_its_group_is_not_refused_for_its_own_run",)),
    Mutant("check_takes_any_logdir", "training/logs.py",
           'if (problem := output_problem(os.path.join(logdir, "train.log"))) is not None:', "if False:",
           (CLI + "test_check_refuses_a_logdir_holding_a_run_unless_resuming",)),
    Mutant("bench_takes_stale_copies", "training/bench/pipeline.py", "if stale and not redo:", "if False:",
           ("tests/test_bench.py::test_an_interrupted_generation_or_copy_is_made_again_not_measured",)),
    Mutant("selective_tta_float_rounding", "training/recipes/cifar.py", "math.ceil(round(fraction * len(images), 6))",
           "math.ceil(fraction * len(images))",
           ("tests/test_cifar_recipe.py::test_selective_tta_views_only_the_least_confident_in_whole_batches",)),
    Mutant("evaluate_tta_batch_is_the_whole_set", "training/recipes/cifar.py", "fraction, len(batches[0][0]),",
           "fraction, len(images),",
           ("tests/test_cifar_recipe.py::test_evaluate_scores_the_selective_tta_over_the_whole_test_set",)),
    Mutant("jitter_by_batch_slot", "training/data/cifar.py",
           "torch.addcmul(self.shift[idx].view(-1, 1, 1, 1), out, self.scale[idx].view(-1, 1, 1, 1))",
           "torch.addcmul(self.shift[:len(idx)].view(-1, 1, 1, 1), out, self.scale[:len(idx)].view(-1, 1, 1, 1))",
           ("tests/test_cifar_data.py::test_colour_jitter_is_one_brightness_shift_and_contrast_scale_per_image",)),
    Mutant("rescore_ignores_the_fraction", "training/recipes/cifar.py", "self.channels_last, fraction)(self.model, self.val)",
           "self.channels_last, 1.0)(self.model, self.val)",
           ("tests/test_bench_cifar.py::test_tta_fractions_rescore_the_same_weights",)),
    Mutant("mirror_window_not_mirrored", "training/data/cifar.py", "dx = torch.where(flips, 2 * self.translate - dx, dx)",
           "dx = torch.where(flips, dx, dx)",
           ("tests/test_cifar_data.py::test_each_image_is_its_drawn_window_of_the_padded_image_mirrored_per_its_flip",)),
    Mutant("phase_size_ignored", "training/recipes/cifar.py", "self.train.set_size(phase.size)",
           "self.train.set_size(32)",
           ("tests/test_cifar_recipe.py::test_each_data_phase_trains_at_its_size_and_evaluation_at_32",)),
    Mutant("resize_aliased", "training/data/cifar.py", 'mode="bilinear", antialias=True,',
           'mode="bilinear", antialias=False,',
           ("tests/test_cifar_data.py::test_a_smaller_phase_size_scales_the_crops_down",)),
    Mutant("cifar_any_phase_size", "training/recipes/cifar.py", "if not smallest <= ph.size <= 32:", "if False:",
           ("tests/test_cifar_recipe.py::test_configs_parse_and_reject_unused_sections",)),
    Mutant("cifar_imagenet_phase_keys_ignored", "training/recipes/cifar.py", "            if key in phase:",
           "            if False:", ("tests/test_cifar_recipe.py::test_configs_parse_and_reject_unused_sections",)),
    Mutant("cifar_check_skips_the_model", "training/recipes/cifar.py", "    cmodel.build(c, 10)  # the model's",
           "    pass  # the model's", ("tests/test_cifar_recipe.py::test_configs_parse_and_reject_unused_sections",)),
    Mutant("cutout_centres_not_scaled", "training/data/cifar.py", "self.cut_centres[idx] * self.size // self.side",
           "self.cut_centres[idx]", ("tests/test_cifar_data.py::test_a_smaller_phase_size_scales_the_crops_down",)),
    Mutant("cutout_columns_by_the_row_centre", "training/data/cifar.py",
           "inside_x = (ar[None, :] >= start[:, 1:]) & (ar[None, :] < start[:, 1:] + self.cutout)",
           "inside_x = (ar[None, :] >= start[:, :1]) & (ar[None, :] < start[:, :1] + self.cutout)",
           ("tests/test_cifar_data.py::test_cutout_zeroes_one_clipped_square",)),
    Mutant("resized_epoch_images_stale", "training/data/cifar.py", "self.epoch_images = None  # with epoch_augment",
           "pass  # with epoch_augment",
           ("tests/test_cifar_data.py::test_a_smaller_phase_size_scales_the_crops_down",)),
    Mutant("cpu_images_in_fp32", "training/recipes/cifar.py", "dtype = loop.AMP_DTYPES.get(precision, torch.float32)",
           "dtype = loop.AMP_DTYPES.get(precision, torch.float32) if on_gpu or c.half_weights else torch.float32",
           ("tests/test_cifar_recipe.py::test_the_images_are_kept_in_the_dtype_the_first_conv_computes_in",)),
    Mutant("rejoining_machine_refused", "launch/multinode.sh", "REJOINING=1 train_args", "train_args",
           ("tests/test_launch.py::test_a_machine_rejoining_its_group_is_not_refused_for_its_own_run",)),
    # torch 2.11 deadlocked at exit when a dropped DDP wrapper outlived its process group (gloo)
    Mutant("ddp_wrapper_outlives_the_group", "training/dist.py", "        gc.collect()", "        pass",
           (TRAIN + "test_teardown_collects_a_dropped_ddp_wrapper_before_the_group_goes",)),
    # what a lent GPU's 600 s call and 8 returned files of 16 MiB allow
    Mutant("pipeline_steps_past_the_budget", "launch/bench_pipeline.sh", '  if [ "$left" -lt 20 ]; then',
           "  if false; then", ("tests/test_launch.py::test_gpu_pipeline_script_makes_the_tree_first_and_keeps_to_its_budget",)),
    Mutant("pipeline_step_not_cut_to_the_budget", "launch/bench_pipeline.sh", '[ "$secs" -le "$left" ] ||', "true ||",
           ("tests/test_launch.py::test_gpu_pipeline_script_makes_the_tree_first_and_keeps_to_its_budget",)),
    Mutant("cifar_trace_any_number_of_names", "launch/bench_cifar.sh", "[ $# -le 3 ] ||", "true ||",
           ("tests/test_bench_cifar.py::test_launch_script_trace_brings_back_at_most_8_files",)),
    Mutant("trace_kept_whole", "training/bench/cifar.py", "    if size <= limit:", "    if True:",
           ("tests/test_bench_cifar.py::test_a_trace_over_the_device_calls_file_limit_is_cut_to_its_start",)),
    # the final review's findings (2026-11-26)
    Mutant("unlockable_logdir_keeps_its_lock_file", "training/logs.py", "                path.unlink(missing_ok=True)",
           "                pass", (FAULTS + "test_a_filesystem_that_cannot_lock_warns_and_leaves_no_lock_file",)),
    Mutant("stale_nfs_lock_file_runs_unguarded", "training/logs.py", "if e.errno == errno.ESTALE:", "if False:",
           (FAULTS + "test_a_lock_file_gone_stale_on_nfs_is_locked_anew",)),
    Mutant("text_override_keeps_its_quotes", "training/config.py", "raw = raw.strip()", "pass",
           (CLI + "test_a_text_override_is_taken_whole_and_numbers_still_read",)),
    Mutant("int_flag_refuses_its_upper_end", "training/cli.py", "(high is not None and value > high)",
           "(high is not None and value >= high)", (CLI + "test_integer_flags_accept_both_ends_of_their_range",)),
    Mutant("logdir_of_only_checkpoints_is_free", "training/logs.py", '"events.out.tfevents.*", "checkpoints/epoch_*.pt",',
           '"events.out.tfevents.*",', (CLI + "test_each_file_a_run_leaves_marks_its_logdir_as_holding_one",)),
    Mutant("keep_all_checkpoints_refused", "training/config.py", '"train.keep_checkpoints": (0, None),',
           '"train.keep_checkpoints": (1, None),', (CLI + "test_the_ends_of_each_range_are_accepted",)),
    Mutant("momentum_past_1_accepted", "training/config.py", '"optim.momentum": (0, 1),', '"optim.momentum": (0, None),',
           (CLI + "test_train_bad_command_line[59]",)),
    Mutant("override_split_at_its_last_equals", "training/config.py", 'key, _, raw = text.partition("=")',
           'key, _, raw = text.rpartition("=")', (CLI + "test_an_override_splits_at_its_first_equals_sign",)),
    Mutant("later_config_file_replaces_a_section", "training/config.py", "                value = {**data[key], **value}",
           "                pass", (CLI + "test_config_files_merge_by_key_and_an_empty_one_sets_nothing",)),
    Mutant("empty_config_file_refused", "training/config.py", "    if data is None:", "    if False:",
           (CLI + "test_config_files_merge_by_key_and_an_empty_one_sets_nothing",)),
    Mutant("user_cache_shared_by_hosts", "training/data/tree.py", 'f"{socket.gethostname()}:{split_dir}"', "split_dir",
           ("tests/test_rectval.py::test_the_user_cache_is_one_per_host_and_the_one_beside_the_data_is_shared",)),
    Mutant("cifar_job_told_a_live_logdir_holds_a_run", "training/recipes/cifar.py",
           "        check_logdir_free(cfg.train.logdir)  # first:", "        pass  # first:",
           (FAULTS + "test_a_logdir_in_use_refuses_a_second_run_until_its_holder_dies",)),
    # the shape docs/DESIGN.md states
    Mutant("schedule_imports_torch", "training/phases.py", "import math", "import math, torch",
           ("tests/test_design.py::test_the_schedule_parsers_and_exporter_import_without_torch",)),
    Mutant("loader_imports_a_model", "training/data/tree.py", "from training import files",
           "from training import files, models", ("tests/test_design.py",)),
    # one run per logdir, and one logdir for all nodes (2026-11-26)
    Mutant("logdir_not_locked", "training/recipes/imagenet.py", "lock = lock_logdir(cfg.train.logdir)  # held",
           "lock = None  # held", (FAULTS + "test_a_logdir_in_use_refuses_a_second_run_until_its_holder_dies",)),
    Mutant("check_ignores_the_logdir_lock", "training/recipes/imagenet.py",
           "        check_logdir_free(cfg.train.logdir)", "        pass",
           (FAULTS + "test_a_logdir_in_use_refuses_a_second_run_until_its_holder_dies",)),
    Mutant("unshared_logdir_starts_over", "training/recipes/imagenet.py",
           "dist.check_logdir_shared(attempt, cfg.train.logdir)", "pass",
           ("tests/test_multinode.py::test_a_rank_0_blind_to_the_runs_checkpoints_stops_the_group_rather_than_start_over",)),
    Mutant("resume_refuses_the_config_it_began_with", "training/recipes/imagenet.py",
           "parse_schedule(cfg.phases, trained=bool(cfg.train.resume))", "parse_schedule(cfg.phases)",
           ("tests/test_newcomer.py::test_a_run_is_resumed_with_the_config_it_began_with",)),
    Mutant("fresh_job_told_to_resume_a_live_run", "training/recipes/imagenet.py",
           "                lock = lock_logdir(cfg.train.logdir)  # held until",  # refused before it locks
           "                check_fresh(cfg, attempt); lock = lock_logdir(cfg.train.logdir)  # held until",
           (FAULTS + "test_a_logdir_in_use_refuses_a_second_run_until_its_holder_dies",)),
    Mutant("eta_ignores_max_epochs", "training/loop.py", "train_epoch(state, train, hooks, ctx, epoch, timer, shapes_seen, end)",
           "train_epoch(state, train, hooks, ctx, epoch, timer, shapes_seen)",
           ("tests/test_loop.py::test_the_progress_line_eta_counts_to_max_epochs",)),
    Mutant("eta_counts_a_partial_batch_as_full", "training/loop.py", "left += (min(iters * bs, per_rank) - skip) * world",
           "left += (iters * bs - skip) * world",
           ("tests/test_loop.py::test_eta_counts_the_steps_the_drop_last_loader_yields",)),
    Mutant("eta_at_one_ranks_speed", "training/loop.py", "eta = left / max(ips * ctx.dist.world_size, 1e-9)",
           "eta = left / max(ips, 1e-9)", ("tests/test_loop.py::test_the_eta_is_all_ranks_images_over_all_ranks_speed",)),
    Mutant("eval_of_one_image_halved", "training/loop.py", "    n = max(n, 1.0)", "    n = max(n, 2.0)",
           ("tests/test_loop.py::test_evaluate_known_answers_down_to_a_single_image",)),
    Mutant("eval_loss_sums_batch_means", "training/loop.py", 'F.cross_entropy(logits, labels, reduction="sum").double()',
           "F.cross_entropy(logits, labels).double()",
           ("tests/test_loop.py::test_evaluate_known_answers_down_to_a_single_image",)),
    Mutant("no_eval_after_the_last_epoch", "training/loop.py", "final = state.epoch == sched.num_epochs", "final = False",
           ("tests/test_loop.py::test_eval_every_k_epochs_and_always_after_the_last",)),
    Mutant("eval_every_counts_from_epoch_0", "training/loop.py", "state.epoch % hooks.eval_every == 0",
           "epoch % hooks.eval_every == 0", ("tests/test_loop.py::test_eval_every_k_epochs_and_always_after_the_last",)),
    Mutant("summed_loss_logged_unscaled", "training/loop.py",
           "mean_loss = loss.item() / (batch if hooks.loss_is_sum else 1)", "mean_loss = loss.item()",
           ("tests/test_loop.py::test_a_summed_loss_is_logged_as_the_batch_mean",)),
    Mutant("after_step_counts_from_1", "training/loop.py", "hooks.after_step(state, i)", "hooks.after_step(state, i + 1)",
           ("tests/test_loop.py::test_after_step_gets_each_steps_index_in_its_epoch",)),
    Mutant("short_epoch_runs_whole_epochs", "training/loop.py", "        if i >= iters:",
           "        if i >= sched.share_of_epoch(epoch, full_iters):",
           ("tests/test_loop.py::test_short_epoch_steps_cap_each_epoch",)),
    Mutant("phase_said_every_epoch", "training/loop.py", "            last_phase = phase", "            pass",
           ("tests/test_loop.py::test_each_data_phase_is_said_once_when_it_starts",)),
    Mutant("exporter_refuses_the_phases_a_run_trained", "dawn/prepare_dawn_tsv.py",
           'parse_schedule(meta["phases"], trained=True)', 'parse_schedule(meta["phases"])',
           ("tests/test_dawn.py::test_a_run_whose_phases_predate_the_end_of_schedule_check_still_exports",)),
    Mutant("bench_loader_workers_spawned", "training/bench/pipeline.py",
           "mp.set_start_method(start_method, force=True)", "pass",
           ("tests/test_bench.py::test_pipeline_cli_measures_each_loader_in_whole_epoch_windows",)),
    Mutant("auto_precision_ignores_cpu_flags", "training/loop.py",
           "return bool(set(probes.values()) & cpu_flags())", "return False",
           ("tests/test_cpu.py::test_auto_precision_reads_the_cpu_flags_where_torch_has_no_probe",)),
    Mutant("full_disk_in_torch_save_kills_the_run", "training/checkpoint.py",
           "if isinstance(e, Exception) and (failed := _write_error(e)) is not e:", "if False:",
           ("tests/test_checkpoint.py::test_recipe_save_on_full_disk_warns_and_training_goes_on",)),
    Mutant("fault_drill_unchecked_after_a_restart", "training/dist.py", "fault = check_fault(num_epochs, world_size)",
           "fault = None if restarted else check_fault(num_epochs, world_size)",
           ("tests/test_checkpoint.py::test_fault_drill_spec",)),
    Mutant("check_passes_a_fault_drill_that_cannot_fire", "training/recipes/imagenet.py",
           "dist.check_fault(schedule.num_epochs)  # the drill's spec", "pass  #",
           ("tests/test_cli_errors.py::test_check_refuses_a_fault_drill_that_cannot_fire",)),
    Mutant("export_replaces_the_link_it_writes_through", "dawn/prepare_dawn_tsv.py",
           "out = Path(os.path.realpath(out))", "pass",
           ("tests/test_dawn.py::test_out_through_a_symlink_or_into_a_pipe_keeps_what_out_names",)),
    Mutant("nonfinite_weights_said_twice", "training/recipes/imagenet.py",
           'raise loop.NonFiniteLoss(f"weights became non-finite in epoch {state.epoch - 1}; not checkpointed")',
           'raise loop.NonFiniteLoss(f"weights became non-finite in epoch {state.epoch - 1}; not checkpointed (the last good checkpoint is kept)")',
           ("tests/test_faults.py::test_nonfinite_weights_with_skipped_steps_stop_in_one_line",)),
    Mutant("static_rendezvous_restarts_by_default", "launch/multinode.sh", "  MAX_RESTARTS=${MAX_RESTARTS:-0}", "  :",
           ("tests/test_launch.py::test_multinode_static_node_rank",)),
]


class StaleMutant(ValueError):
    """A mutant whose text is not exactly once in its file: the code moved on; update the list."""


def scratch_copy(dest: Path) -> None:
    """The working tree as it is (tracked and untracked files, not ignored ones) into ``dest``."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout
    for rel in filter(None, listing.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a deleted but still tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def mutate(m: Mutant, root: Path, write: bool = True) -> None:
    """Apply ``m`` to the copy at ``root`` (with write=False: only check that it applies)."""
    path = root / m.path
    text = path.read_text(encoding="utf-8")
    if text.count(m.old) != 1 or "\n" in m.old + m.new:
        raise StaleMutant(f"mutant {m.name}: {m.old!r} is in {m.path} {text.count(m.old)} times, expected once "
                          "on one line")
    if write:
        path.write_text(text.replace(m.old, m.new), encoding="utf-8")


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """('passed' | 'failed' | 'skipped' | 'error' | 'timeout', the log's last line)."""
    env = {**os.environ, "SHARED_DIR": str(SHARED), "TEST_DATA_CACHE": str(CACHE), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        r = run_bounded(cmd, cwd=root, timeout=timeout, env=env)
    except ProcessFailure as e:
        return "timeout", str(e).splitlines()[0]
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode == 1:
        return "failed", last
    if r.returncode == 0:
        return ("passed" if " passed" in last else "skipped"), last
    return "error", f"pytest exit {r.returncode}: {last}"


def check(mutants: list[Mutant], timeout: float, baseline: bool, keep: bool) -> int:
    parent = Path(tempfile.mkdtemp(prefix="fastimagenet-mutants-"))
    try:
        if baseline:
            clean = parent / "baseline"
            scratch_copy(clean)
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            outcome, last = run_tests(clean, tests, timeout * 2)
            if outcome != "passed":
                print(f"baseline: the unmutated tests did not pass ({outcome}: {last}); fix them first")
                return 1
            print(f"baseline: {len(tests)} test target(s) pass unmutated ({last})", flush=True)
        results = {}
        for m in mutants:
            root = parent / m.name
            scratch_copy(root)
            mutate(m, root)
            start = time.monotonic()
            outcome, last = run_tests(root, m.tests, timeout)
            verdict = {"failed": "killed", "timeout": "killed (timeout)", "passed": "SURVIVED"}.get(outcome, outcome)
            results[m.name] = verdict
            print(f"{verdict:<17} {m.name:<30} {time.monotonic() - start:6.1f} s  {m.path}: {m.new}"
                  + ("" if verdict.startswith("killed") else f"  [{last}]"), flush=True)
            if not keep:
                shutil.rmtree(root)
    finally:
        if not keep:
            shutil.rmtree(parent, ignore_errors=True)
    bad = [n for n, v in results.items() if not v.startswith("killed")]
    print(f"{len(results)} mutants: {len(results) - len(bad)} killed"
          + (f"; not killed: {', '.join(bad)}" if bad else "") + (f" (scratch copies in {parent})" if keep else ""))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: all)")
    p.add_argument("--list", action="store_true", help="name every mutant and its tests, run nothing")
    p.add_argument("--timeout", type=float, default=300, help="seconds per mutant's tests (default 300)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip running the tests unmutated first")
    p.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = p.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"error: unknown mutant {unknown[0]!r} (--list names them)", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.names] or MUTANTS
    if args.list:
        for m in chosen:
            print(f"{m.name:<30} {m.path}: {m.old!r} -> {m.new!r}  tests: {' '.join(m.tests)}")
        return 0
    try:
        for m in chosen:  # every mutant must still apply before anything runs
            mutate(m, REPO, write=False)
        return check(chosen, args.timeout, args.baseline, args.keep)
    except StaleMutant as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
