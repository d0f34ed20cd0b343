import ast
import importlib
import logging

import pytest
from conftest import ROOT


def console_scripts() -> dict[str, str]:
    """setup.py's console_scripts, name -> "module:function", read without running setup()."""
    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return dict(line.replace(" ", "").split("=") for line in entry_points["console_scripts"])


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# Each script and a flag only its own command line has.
SCRIPTS = {"fastvideo-grpo-train": "--print-config", "fastvideo-grpo-evaluate": "--videos",
           "fastvideo-grpo-export": "--base-model", "fastvideo-grpo-plan": "--gpus-per-node",
           "fastvideo-grpo-plot": "--window", "fastvideo-grpo-ablate": "--experiments",
           "fastvideo-grpo-preprocess": "--family"}


def test_setup_declares_one_console_script_per_command():
    assert set(console_scripts()) == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_console_script_runs_its_own_command_line(script, monkeypatch, capsys):
    command = resolve(console_scripts()[script])
    monkeypatch.setattr("sys.argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit:
        command()
    usage = capsys.readouterr().out
    assert exit.value.code == 0 and usage.startswith(f"usage: {script}") and SCRIPTS[script] in usage


# A command line whose mistake main raises (a missing input) and the file it names.
USER_ERRORS = {
    "fastvideo-grpo-export": (["--checkpoint", "{tmp}/no_run", "--output", "{tmp}/out"], "no_run"),
    "fastvideo-grpo-plot": (["{tmp}/no_run"], "no_run"),
    "fastvideo-grpo-ablate": (["--config", "{tmp}/no.yaml", "--output", "{tmp}/out"], "no.yaml"),
    "fastvideo-grpo-evaluate": (["--config", "{tmp}/no.yaml"], "no.yaml"),
    "fastvideo-grpo-preprocess": (["--family", "hunyuan_video", "--model-path", "{tmp}/model", "--prompts",
                                   "{tmp}/no.txt", "--output", "{tmp}/out"], "no.txt"),
    "fastvideo-grpo-plan": (["--config", "{tmp}/no.yaml"], "no.yaml"),
}


@pytest.mark.parametrize("script", USER_ERRORS)
def test_a_console_script_ends_a_user_error_with_one_line_and_status_2(script, tmp_path, monkeypatch, caplog):
    command = resolve(console_scripts()[script])
    args, named = USER_ERRORS[script]
    monkeypatch.delenv("FVGRPO_TRACEBACK", raising=False)
    monkeypatch.setattr("sys.argv", [script, *(a.format(tmp=tmp_path) for a in args)])
    with caplog.at_level(logging.ERROR, logger="fastvideo_grpo"):
        assert command() == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and named in errors[0]


def test_the_preprocess_script_runs_the_named_familys_encoder_command_line(monkeypatch, capsys):
    """--family picks the family's encoder through the registry: its own flags follow."""
    command = resolve(console_scripts()["fastvideo-grpo-preprocess"])
    monkeypatch.setattr("sys.argv", ["fastvideo-grpo-preprocess", "--family", "hunyuan_video", "--help"])
    with pytest.raises(SystemExit) as exit:
        command()
    usage = capsys.readouterr().out
    assert exit.value.code == 0 and "model.family hunyuan_video's text encoders" in usage
    assert "--model-path" in usage and "--prompt-template" in usage  # hunyuan_video's own flag
    monkeypatch.setattr("sys.argv", ["fastvideo-grpo-preprocess", "--family", "no_such_family", "--help"])
    with pytest.raises(SystemExit) as exit:
        command()
    assert exit.value.code == 2 and "no_such_family" in capsys.readouterr().err
