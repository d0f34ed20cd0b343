"""What a new user meets first: documented values that parse as written, a log a batch job
can read, files a team can share."""

import logging
import os
import stat

import pytest
import torch

from fastvideo_grpo.config import load_config, parse_override


@pytest.mark.parametrize("value", ["off", "on", "auto"])
def test_documented_enum_values_parse_as_written_in_overrides_and_files(tmp_path, value):
    from conftest import ROOT

    assert load_config(ROOT / "assets/configs/tiny_t2v.yaml", [f"model.vae_tiling={value}"]).model.vae_tiling == value
    config = tmp_path / "c.yaml"
    text = (ROOT / "assets/configs/tiny_t2v.yaml").read_text().replace("model:\n", f"model:\n  vae_tiling: {value}\n", 1)
    config.write_text(text)
    assert load_config(config).model.vae_tiling == value


def test_only_true_and_false_are_booleans():
    assert parse_override("a.b=no") == {"a": {"b": "no"}}
    assert parse_override("a.b=False") == {"a": {"b": False}}
    assert parse_override("a.b=true") == {"a": {"b": True}}


def test_a_batch_log_gets_one_line_per_iteration(tiny_cfg, caplog):
    from fastvideo_grpo.training.trainer import train

    tiny_cfg.train.iterations = 2
    tiny_cfg.train.progress_bar = True  # stderr is captured here: no terminal, so lines instead of a bar
    with caplog.at_level(logging.INFO, logger="fastvideo_grpo.training.trainer"):
        train(tiny_cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all(" reward " in line and " loss " in line and " kl " in line and " s/it ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0:00:00")


def files_under(path):
    return [p for p in [path, *path.rglob("*")] if p.is_file()]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_embedding_shards_and_tiny_folders_honour_the_umask(tmp_path, capsys, umask_022):
    from fastvideo_grpo.data.embeddings import write_shard
    from fastvideo_grpo.models.tiny.__main__ import main as tiny_main

    write_shard(tmp_path / "shard.safetensors", {"x": torch.zeros(2)})
    assert tiny_main(["hunyuan_video", str(tmp_path / "tiny")]) == 0
    capsys.readouterr()
    written = files_under(tmp_path)
    assert len(written) > 5
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o644 for p in written}


def test_a_cli_run_logs_iterations_to_a_pipe_and_no_library_noise(tmp_path):
    from helpers import run

    result = run(["-m", "fastvideo_grpo.train", "--config", "assets/configs/tiny_t2v.yaml", "train.iterations=2",
                  "train.sample_every=0", f"train.output_dir={tmp_path / 'run'}"])
    log = result.stdout + result.stderr
    assert "iteration 2/2 reward " in log
    for noise in ("torch.distributed is disabled", "should be kept in float32: []", "\r"):
        assert noise not in log


def test_the_preflight_reports_every_problem_of_a_job_at_once(tmp_path, monkeypatch, caplog):
    """A full-size job with six mistakes: all six in one message, before any model is built."""
    import json
    import shutil
    import sys

    from conftest import ROOT
    from fastvideo_grpo.models.hunyuan_video.tiny import write_folder
    from fastvideo_grpo.cli.train import main

    sys.path.insert(0, str(ROOT / "data_preprocess"))
    import preprocess_hunyuan_embeddings as encoder_cli

    folder = write_folder(tmp_path / "tiny")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na dog running\n")
    with caplog.at_level(logging.INFO):
        encoder_cli.run(["--model-path", str(folder), "--prompts", str(prompts), "--output", str(tmp_path / "emb"),
                         "--max-tokens", "12", "--device", "cpu"])
    assert any("(2 items; 1 of its 1 shards, ETA 0:00:00)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    config = json.loads((broken / "transformer/config.json").read_text())
    config["text_embed_dim"] += 1
    (broken / "transformer/config.json").write_text(json.dumps(config))
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("NPROC_PER_NODE", "3")
    with caplog.at_level(logging.ERROR):
        code = main(["--check", "--config", str(ROOT / "assets/configs/tiny_t2v.yaml"), "model.size=full",
                     f"model.path={broken}", f"data.embeddings_dir={tmp_path / 'emb'}", "sampling.eta=0",
                     f"train.output_dir={tmp_path / 'a_file'}", "parallel.sp_size=2"])
    assert code == 2
    (message,) = [r.getMessage() for r in caplog.records]
    assert "6 problem(s)" in message
    for expected in ("sampling.eta: 0.0 is invalid", "lacks vae/ named in model_index.json",
                     f"holds prompt_embeds of width {config['text_embed_dim'] - 1}", "is a file",
                     "1 of 2 training prompts lack what it needs, the first: the color reward needs a colour word",
                     "does not divide the 3 ranks"):
        assert expected in message


def test_the_preflight_passes_the_demo_config():
    from conftest import ROOT
    from fastvideo_grpo.preflight import preflight

    assert preflight(ROOT / "assets/configs/tiny_t2v.yaml", []) == []


def test_the_preflight_checks_the_model_family():
    """What the train CLI refuses before launching, the preflight reports: an unknown family,
    and sequence parallelism on a family without it."""
    from conftest import ROOT
    from fastvideo_grpo.preflight import preflight

    config = ROOT / "assets/configs/tiny_t2v.yaml"
    assert any(p.startswith("model.family: 'wan9'") for p in preflight(config, ["model.family=wan9"]))
    problems = preflight(ROOT / "assets/configs/tiny_sd_t2i.yaml", ["parallel.sp_size=2"])
    assert any(p.startswith("parallel.sp_size: 2 is invalid; expected 1 for model.family 'stable_diffusion'")
               for p in problems), problems


FAKE_TORCHRUN = """#!/usr/bin/env bash
printf '%s\\n' "$PWD" "$@" > "$RECORD"
# A preempted trainer leaves the launch script's marker and exits non-zero, as torchrun does.
if [ -n "${PREEMPT:-}" ]; then touch "$FVGRPO_PREEMPT_MARKER"; fi
exit "${EXIT_STATUS:-0}"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$*" in
  "show job"*) echo "   Command=$ORIGINAL_SCRIPT train.lr=1e-5" ;;
  "show hostnames"*) echo localhost ;;
  requeue*) echo "$*" >> "$RECORD.scontrol" ;;
esac
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""


def fake_slurm_tools(tmp_path):
    """A folder of stand-ins for torchrun, scontrol and srun (put it first on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("torchrun", FAKE_TORCHRUN), ("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("under_slurm", [False, True])
def test_the_launch_script_takes_relative_paths_from_the_callers_folder(tmp_path, under_slurm):
    """Submitted from outside the repository with a relative CONFIG: under sbatch (a spool copy
    of the script, SLURM's variables) as under bash, the config is found, the preflight runs
    on it, and torchrun starts in the caller's folder."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    caller = tmp_path / "elsewhere"
    caller.mkdir()
    shutil.copy(ROOT / "assets/configs/tiny_t2v.yaml", caller / "mine.yaml")
    bin_dir = fake_slurm_tools(tmp_path)
    script = ROOT / "train_scripts/train_flux_t2i.sh"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "CONFIG": "mine.yaml", "NPROC_PER_NODE": "1", "RECORD": str(tmp_path / "record"),
           "TORCHRUN": "torchrun", "OUTPUT_DIR": "runs/a"}
    if under_slurm:
        spool = tmp_path / "spool"
        spool.mkdir()
        shutil.copy(script, spool / "slurm_script")
        env.update(SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=str(caller), SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost",
                   ORIGINAL_SCRIPT=str(script))
        command = ["bash", str(spool / "slurm_script")]
    else:
        command = ["bash", str(script)]
    result = subprocess.run(command, cwd=caller, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preflight of mine.yaml: no problems" in result.stderr
    cwd, *args = (tmp_path / "record").read_text().splitlines()
    assert cwd == str(caller)
    assert args[args.index("--config") + 1] == "mine.yaml" and "train.output_dir=runs/a" in args


@pytest.mark.parametrize("preempted", [True, False])
def test_under_slurm_only_this_starts_preemption_requeues_and_another_jobs_marker_stays(tmp_path, preempted):
    """Another cluster's job 7 submitted from the same folder has its marker there: starting
    this job 7 keeps it, and only this start's own marker (the trainer's) requeues."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    bin_dir = fake_slurm_tools(tmp_path)
    caller = tmp_path / "submit"
    (caller / ".fvgrpo").mkdir(parents=True)
    others = caller / ".fvgrpo" / "preempted-7"
    others.touch()
    shutil.copy(ROOT / "assets/configs/tiny_t2v.yaml", caller / "mine.yaml")
    spool = tmp_path / "spool"
    spool.mkdir()
    script = ROOT / "train_scripts/train_flux_t2i.sh"
    shutil.copy(script, spool / "slurm_script")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "CONFIG": "mine.yaml", "NPROC_PER_NODE": "1", "RECORD": str(tmp_path / "record"), "TORCHRUN": "torchrun",
           "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(caller), "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "localhost", "ORIGINAL_SCRIPT": str(script), "EXIT_STATUS": "1",
           **({"PREEMPT": "1"} if preempted else {})}
    result = subprocess.run(["bash", str(spool / "slurm_script")], cwd=caller, env=env, capture_output=True,
                            text=True, timeout=120)
    requeues = tmp_path / "record.scontrol"
    if preempted:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "preempted after a checkpoint: requeueing" in result.stdout
        assert requeues.read_text() == "requeue 7\n"
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "torchrun exited with 1, not preempted: no requeue" in result.stderr
        assert not requeues.exists()
    assert others.is_file()
    assert sorted(p.name for p in (caller / ".fvgrpo").iterdir()) == ["preempted-7"]


def test_a_model_folder_beside_the_tiny_model_is_refused_not_ignored():
    from conftest import ROOT
    from fastvideo_grpo.config import ConfigError

    with pytest.raises(ConfigError, match="model.path: '/models/hv' is invalid; expected empty with model.size: tiny"):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["model.path=/models/hv"])


def test_evaluate_and_plot_write_beside_their_inputs_not_into_the_current_folder(tmp_path, monkeypatch):
    import json

    from conftest import REWARD_PLUGINS, ROOT
    from fastvideo_grpo.cli.evaluate import main as evaluate_main
    from fastvideo_grpo.cli.plot import main as plot_main
    from test_video_files import frames, write

    clips = tmp_path / "clips"
    clips.mkdir()
    write(clips / "a.mp4", frames(16, 16, 3))
    (tmp_path / "captions.txt").write_text("caption of a\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "reward_mean": i}) + "\n" for i in range(3)))
    typed_in = tmp_path / "typed_in"
    typed_in.mkdir()
    monkeypatch.chdir(typed_in)
    evaluate_main(["--config", str(ROOT / "assets/configs/tiny_t2v.yaml"), "--videos", str(clips), "--captions",
                   str(tmp_path / "captions.txt"), "reward.weights={test_echo: 1.0}", f"reward.plugins=[{REWARD_PLUGINS}]",
                   "reward.mode=inline"])
    assert (clips / "eval" / "clips" / "summary.json").is_file()
    plot_main([str(run)])
    assert (run / "reward_curves.png").is_file()
    assert list(typed_in.iterdir()) == []
    with pytest.raises(SystemExit):
        plot_main([str(run), str(run / "metrics.jsonl")])


def test_user_errors_end_a_command_with_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    from test_video_files import frames, write

    (tmp_path / "run/checkpoints/step_1").mkdir(parents=True)
    clips = tmp_path / "clips"
    clips.mkdir()
    write(clips / "a.mp4", frames(16, 16, 3))
    (tmp_path / "captions.txt").write_text("one\ntwo\n")
    config = str(ROOT / "assets/configs/tiny_t2v.yaml")
    commands = {
        "holds checkpoints of an earlier run": ["fastvideo_grpo.train", "--config", config, "train.resume=never",
                                                f"train.output_dir={tmp_path / 'run'}"],
        "2 captions for 1 videos": ["fastvideo_grpo.evaluate", "--config", config, "--videos", str(clips),
                                    "--captions", str(tmp_path / "captions.txt"), "reward.mode=inline"],
    }
    for expected, command in commands.items():
        result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        errors = [line for line in result.stderr.splitlines() if " ERROR " in line or "error:" in line]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_plan_refuses_a_model_folder_that_is_not_there_and_says_what_it_plans(tmp_path, capsys, caplog):
    from conftest import ROOT
    from fastvideo_grpo.cli.plan import main as plan_main

    config = str(ROOT / "assets/configs/tiny_t2v.yaml")
    with caplog.at_level(logging.ERROR):
        assert plan_main(["--config", str(ROOT / "assets/configs/hunyuan_t2v.yaml"), f"model.path={tmp_path / 'typo'}",
                          "--gpu-memory-gb", "80"]) == 2
    assert f"model.path={tmp_path / 'typo'}: no such folder" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastvideo_grpo.cli.plan"):
        assert plan_main(["--config", config, "--nodes", "1", "--gpus-per-node", "1", "--gpu-memory-gb", "80",
                          "train.prompts_per_iteration=2"]) == 0
    assert "planning" in caplog.text and "traced on fake tensors" in caplog.text
    group = load_config(config).sampling.group_size
    assert f"global batch: 2 prompts per dp rank x G={group} x 1 dp ranks = {2 * group} videos" in capsys.readouterr().out
