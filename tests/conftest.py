import os
import sys
from pathlib import Path

# One thread in this process and in every subprocess: float reductions then run in the same
# order everywhere, so runs split over processes can be compared bit for bit.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The test rewards (test_echo, test_fail, test_sleep), for reward.plugins.
REWARD_PLUGINS = str(ROOT / "tests" / "reward_plugins.py")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_cfg(tmp_path):
    """The tiny CPU config, pointed at a temporary output folder and shortened."""
    from fastvideo_grpo.config import load_config

    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}",
    ])


@pytest.fixture(scope="session")
def one_rank_run(tmp_path_factory):
    """(config file, *overrides) -> the output folder of tests/dist/train_run.py run in one
    process with them: the reference of the 2-rank comparisons, run once per session
    (test_distributed and test_families compare against the same tiny T2V run)."""
    from helpers import DIST, run

    runs = {}

    def get(config, *overrides):
        key = (str(config), overrides)
        if key not in runs:
            out = tmp_path_factory.mktemp("one_rank")
            run([DIST / "train_run.py", "--config", config, *overrides, f"train.output_dir={out}"])
            runs[key] = out
        return runs[key]

    return get


# The slow tier, skipped by `make test-fast` (pytest -m "not slow"), run by `make test` and CI:
# whole modules of multi-process, SLURM, compile and ablation runs, and each test that took
# over 5 s on 2 shared cores (`pytest --durations=80`): full training runs, 2-rank
# comparisons, signals and reward-process restarts.
SLOW_MODULES = {"test_ablate", "test_compile", "test_distributed", "test_gpu_smoke", "test_setup_memory", "test_slurm",
                "test_watchdog"}
SLOW_TESTS = {
    "test_a_batch_log_gets_one_line_per_iteration",
    "test_a_cli_run_logs_iterations_to_a_pipe_and_no_library_noise",
    "test_a_healthy_run_fires_nothing",
    "test_a_lock_left_by_a_killed_run_is_not_stale",
    "test_a_restart_resends_every_batch_in_flight_not_only_the_awaited_one",
    "test_a_restart_resends_the_pending_requests",
    "test_a_resumed_nft_run_is_bit_exact",
    "test_a_resumed_run_is_bit_exact",
    "test_a_resumed_run_with_resets_and_an_adaptive_weight_is_bit_exact",
    "test_a_reward_process_killed_while_starting_names_the_signal",
    "test_a_second_ctrl_c_stops_at_once",
    "test_ctrl_c_and_hangup_checkpoint_then_stop_and_the_run_resumes",
    "test_demo_script_encodes_prompts_offline_then_trains",
    "test_detector_reads_generated_videos_at_least_98_percent_right",
    "test_early_stop_stops_with_a_checkpoint_and_marks_the_best",
    "test_ema_export_holds_the_ema_weights_in_bf16",
    "test_eval_in_loop_matches_checkpoint_and_diffusers_evaluation",
    "test_every_family_trains_with_nft",
    "test_export_loads_into_the_network_and_pipeline_classes",
    "test_fsdp_two_ranks_match_one_rank",
    "test_full_path_from_a_tiny_folder_with_offline_embeddings",
    "test_full_size_forwards_are_what_flop_counter_mode_counts_on_the_meta_device",
    "test_json_keys_and_knobs_when_it_does_not_fit",
    "test_killed_reward_process_is_a_clear_error_within_the_timeout",
    "test_lora_trains_only_adapters_and_exports_merged_weights_and_a_pipeline_adapter",
    "test_models_do_not_import_rewards",
    "test_nft_micro_batch_and_store_match_a_real_nft_update",
    "test_nft_old_policy_is_a_full_copy_or_with_lora_an_adapter",
    "test_nft_trains_without_guidance",
    "test_process_mode_scores_equal_inline_and_overlap_with_rollout",
    "test_ranks_with_different_configs_are_refused_naming_the_keys",
    "test_ratio_normalisation_and_reweighting_train_with_ratio_one_at_the_first_update",
    "test_resume_trims_every_log_and_survives_a_cut_last_line",
    "test_sequence_parallel_flash_equals_masked_sdpa",
    "test_sigkill_while_writing_leaves_latest_on_the_previous_checkpoint",
    "test_sigterm_during_the_last_iteration_ends_the_completed_run_with_0",
    "test_sigterm_to_the_process_group_checkpoints_exits_75_and_leaves_no_reward_process",
    "test_sigusr1_checkpoints_and_exits_with_the_preemption_code",
    "test_the_adaptive_kl_weight_follows_the_measured_kl",
    "test_the_cli_refuses_a_changed_resume_with_exit_2",
    "test_the_cli_reports_the_setup_and_host_peaks",
    "test_the_demo_script_evaluates_trains_with_nft_and_compares_and_a_rerun_reuses_the_run",
    "test_the_export_cli_writes_a_folder_the_pipeline_samples_from",
    "test_the_export_cli_writes_a_folder_wan_pipeline_samples_from",
    "test_the_export_samples_text_to_video_and_image_to_video",
    "test_the_launch_script_takes_relative_paths_from_the_callers_folder",
    "test_the_plan_says_whether_the_rollout_holds_the_network_gathered",
    "test_the_reward_process_exits_when_its_trainer_is_sigkilled",
    "test_the_right_warning_fires_within_five_iterations_of_a_faulty_run",
    "test_the_tiny_cli_writes_the_moe_folder",
    "test_the_train_cli_refuses_an_unknown_family_as_a_config_error",
    "test_tiny_plan_matches_the_real_model_and_step",
    "test_train_cli_runs_with_flash_on_cpu",
    "test_two_iterations_train_with_ratio_one_at_the_first_update",
    "test_under_slurm_only_this_starts_preemption_requeues_and_another_jobs_marker_stays",
    "test_two_rank_evaluation_writes_the_one_rank_grid_and_only_the_writer_gets_videos",
    "test_two_rank_resume_and_resume_on_one_rank",
    "test_two_ranks_split_prompts_in_loop_and_standalone",
    "test_two_ranks_train_what_one_does_with_nft",
    "test_two_ranks_with_every_guard_match_one_rank",
    "test_two_ranks_write_the_same_dataset",
    "test_user_errors_end_a_command_with_one_line_not_a_traceback",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~5 s; skipped by make test-fast")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # xdist groups run first: the real-SLURM tests spend minutes waiting on SLURM itself, and
    # test_families (one worker, its runs shared) is the longest single share; both then
    # overlap the other worker's tests instead of trailing the suite.
    items.sort(key=lambda item: 0 if item.get_closest_marker("xdist_group") else 1)
