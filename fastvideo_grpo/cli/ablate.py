"""CLI: the paper's ablations, as short trainings on CPU, on either of the two worlds.

    python -m fastvideo_grpo.ablate [--quick] [--experiments NAME ...] [--seeds 3] [--jobs 2]
        [--iterations N] [--config assets/configs/tiny_ablation.yaml] [--metric NAME]
        [--output outputs/ablations] [KEY=VALUE ...]

The config's reward picks the world and its experiments (`SUITES`): the random tiny model
rewarded on hue (`color`, tiny_ablation.yaml) or the pretrained shapes model with the
detector's six scores (`shapes`, shapes_t2v.yaml). Every setting of every experiment trains
the same model for `--seeds` training seeds (the seed changes prompt order and all sampling
noise), KEY=VALUE overrides applied to every run. The final weights are then evaluated with
the ODE sampler, `--eval-seeds` samples per prompt, on the held-out prompts of the config's
eval.prompts_file and on the training prompts, scored by every score of the world's rewards
(color and motion; the shapes reward's six) whatever the run trained on, so that settings that
change the reward still compare. The headline is `--metric` (the world's: color,
shapes_all). Settings shared by several experiments (each experiment's reference is its
first setting) run once. Writes OUTPUT/results.md (table: seed mean +- Student-t 95% CI,
paired deltas against the reference), OUTPUT/results.json and OUTPUT/curves.png (training
reward/<metric>, seed-averaged, moving average); where an experiment's runs evaluate during
training, the seconds each setting took to reach the reference's final held-out headline
and OUTPUT/eval_curves.png; for the monitored experiments (shapes: hacking) what each run's
in-loop held-out evaluation and health monitor reported. `--quick` is a CI-sized grid: one
seed, a few iterations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.cli.evaluate import evaluate
from fastvideo_grpo.config import Config, load_config
from fastvideo_grpo.shapes.detect import SCORES as SHAPES_SCORES
from fastvideo_grpo.stats import mean_ci
from fastvideo_grpo.training.health import HEALTH
from fastvideo_grpo.training.outputs import draw_reward_curves, read_metrics

logger = logging.getLogger(__name__)

BASELINE = "baseline"
MAX_KEY = 200


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Folder name of the run; equal overrides share a run. A name longer than a file name
        may be (255 bytes) keeps its start and ends with a hash of the whole."""
        key = re.sub(r"[^A-Za-z0-9_.=-]+", "", "__".join(sorted(self.overrides))) or BASELINE
        if len(key) <= MAX_KEY:
            return key
        return f"{key[:MAX_KEY - 18]}__{hashlib.sha256(key.encode()).hexdigest()[:16]}"


# An experiment: the paper's finding it tests, and its settings, the first the reference.
Experiments = dict[str, tuple[str, list[Setting]]]


def _eta(value: float) -> Setting:
    return Setting(f"eta {value}", (f"sampling.eta={value}",))


# The held-out ODE reward during training (eval.jsonl), for reward against wall-clock seconds.
EVAL_CURVE = ("eval.every=10", "eval.num_prompts=8", "eval.num_seeds=2", "eval.batch_size=8", "eval.grid_prompts=0")


def _nft(lr: str, *overrides: str, steps: int = 0, curve: tuple[str, ...] = EVAL_CURVE) -> Setting:
    """DiffusionNFT at learning rate `lr`: on the same rollout shape (8 deterministic Euler
    steps), or, with `steps`, on a cheaper `steps`-step DPM-Solver++(2M) rollout as the
    flagship NFT configs use; the held-out evaluation stays at the reference's 8 Euler steps.
    `overrides` change one NFT setting more; `curve`: the in-loop evaluation's settings."""
    cheaper = (f"sampling.num_steps={steps}", "sampling.ode_solver=dpmpp_2m", "eval.num_steps=8") if steps else ()
    name = ", ".join([f"DiffusionNFT lr {float(lr):g}", *([f"{steps} dpmpp_2m steps"] if steps else []),
                      *(o.split(".", 1)[1] for o in overrides)])
    return Setting(name, ("train.algorithm=nft", "sampling.shared_noise=false", f"train.lr={lr}", *cheaper,
                          *overrides, *curve))


INDEPENDENT_NOISE = Setting("independent", ("sampling.shared_noise=false",))
DDPO = Setting("DDPO-style (batch)", ("policy_update.advantage_mode=batch",))
SDE_WINDOW = Setting("window 2 progressive, dpmpp_2m", ("sampling.sde_window_size=2", "sampling.ode_solver=dpmpp_2m",
                                                        "policy_update.timestep_fraction=1.0"))

# The random tiny model rewarded on hue (tiny_ablation.yaml); the config's own setting is
# each experiment's reference (the first one listed with no overrides).
EXPERIMENTS: Experiments = {
    "initial_noise": ("shared initial noise within a group is essential; independent noise destabilises", [
        Setting("shared"), INDEPENDENT_NOISE]),
    "objective": ("GRPO (group-normalised advantages) trains; DDPO-style batch normalisation diverges on RF", [
        Setting("GRPO (group)"), DDPO]),
    "timesteps": ("random 60% keeps quality; first 30% matters most but alone degrades", [
        Setting("random 0.6"),
        Setting("first 0.3", ("grpo.timestep_selection=first", "policy_update.timestep_fraction=0.3")),
        Setting("random 0.3", ("policy_update.timestep_fraction=0.3",)),
        Setting("last 0.4", ("grpo.timestep_selection=last", "policy_update.timestep_fraction=0.4")),
        Setting("all 1.0", ("policy_update.timestep_fraction=1.0",))]),
    "eta": ("noise level: lower than 0.3 hurts (the tiny model's own default is 0.7)", [
        Setting("eta 0.7"), _eta(0.1), _eta(0.3), _eta(0.5)]),
    "rewards": ("several rewards: aggregate advantages; binary (thresholded) rewards also train", [
        Setting("color"), Setting("color + motion", ("reward.weights={color: 1.0, motion: 1.0}",)),
        Setting("binary color > 0.3", ("reward.binary_thresholds={color: 0.3}",))]),
    "sampler": ("an SDE window (MixGRPO, Flow-GRPO-Fast) trains as well as every-step SDE, at a fraction of the "
                "transformer calls", [
        Setting("every step SDE, 60%"), SDE_WINDOW,
        Setting("window 2 random, CPS", ("sampling.sde_window_size=2", "sampling.sde_window_schedule=random",
                                         "sampling.sde_type=cps", "policy_update.timestep_fraction=1.0"))]),
    "algorithm": ("DiffusionNFT (forward process, deterministic rollouts) reaches GRPO's final held-out ODE reward "
                  "in half the wall time", [
        Setting("GRPO", EVAL_CURVE), _nft("1.0e-3"), _nft("1.0e-3", steps=4), _nft("2.0e-3", steps=4),
        _nft("4.0e-3", steps=4)]),
    "nft": ("DiffusionNFT's knobs on the 4-step rollout: the reference's defaults (beta 1, decay type 1) against an "
            "old policy that is the last policy (type 0) or a slower average (type 2), a softer implicit policy "
            "(beta 0.5) and more trained levels (3 of 4, the reference's fraction 0.99)", [
        _nft("1.0e-3", steps=4), _nft("1.0e-3", "nft.decay_type=0", steps=4),
        _nft("1.0e-3", "nft.decay_type=2", steps=4), _nft("1.0e-3", "nft.beta=0.5", steps=4),
        _nft("1.0e-3", "policy_update.timestep_fraction=0.99", steps=4)]),
    "guards": ("the guards against collapse and hacking (GRPO-Guard's ratio normalisation and step reweighting, an "
               "adaptive KL to a reference that resets, early stop on the held-out reward) cost no final reward", [
        Setting("no guard"),
        Setting("ratio norm + step reweight", ("grpo.ratio_norm=true", "grpo.step_reweight=true")),
        Setting("adaptive KL + reset every 50", ("grpo.kl_weight=0.1", "grpo.kl_schedule=adaptive",
                                                  "grpo.kl_target=0.05", "grpo.reference_reset_every=50")),
        Setting("early stop (best of eval every 10)", ("eval.every=10", "eval.num_prompts=4",
                                                       "eval.early_stop_patience=5", "eval.early_stop_margin=0.05"))]),
    "best_of": ("best-of-N (top + bottom of N) converges faster for more sampling", [
        Setting("G=8"), Setting("N=16 -> best 4 + worst 4", ("sampling.group_size=16", "policy_update.best_of=8"))]),
}


def _only(score: str) -> Setting:
    """Trained on the shapes reward's `score` alone; its other scores are weighted 0, so the
    in-loop evaluation and the training logs still report them (the update is the same: a
    weight of 0 adds nothing to the advantages)."""
    weights = ", ".join(f"{s}: {1.0 if s == score else 0.0}" for s in SHAPES_SCORES)
    return Setting(f"{score.removeprefix('shapes_')} only", (f"reward.weights={{{weights}}}",))


# The pretrained shapes model with the detector's scores (shapes_t2v.yaml); every run
# evaluates during training (SUITES' overrides), so each experiment also reports the
# training seconds to reach its reference's final held-out accuracy.
SHAPES_EXPERIMENTS: Experiments = {
    "objective": ("GRPO (group-normalised advantages) trains; DDPO-style batch normalisation diverges on RF", [
        Setting("GRPO (group)"), DDPO]),
    "initial_noise": ("shared initial noise within a group is essential; independent noise destabilises", [
        Setting("shared"), INDEPENDENT_NOISE]),
    "timesteps": ("training a random 60% of the steps keeps quality; 30% degrades, all of them adds cost", [
        Setting("random 0.6"), Setting("random 0.3", ("policy_update.timestep_fraction=0.3",)),
        Setting("all 1.0", ("policy_update.timestep_fraction=1.0",))]),
    "sampler": ("an SDE window with DPM-Solver++ (MixGRPO) reaches every-step SDE's held-out accuracy in at most "
                "0.55x the wall time", [Setting("every step SDE, 60%"), SDE_WINDOW]),
    "algorithm": ("DiffusionNFT reaches GRPO's final held-out accuracy in at most half GRPO's wall time", [
        Setting("GRPO"), _nft("3.0e-4", curve=())]),
    # Shape is the attribute to hack: the base model already draws every colour right (1.0),
    # so a colour-only reward has flat groups and trains nothing.
    "hacking": ("a single-attribute reward raises its attribute while the others degrade (reward hacking), and the "
                "run's held-out evaluation and health monitor notice", [
        Setting("all attributes"), _only("shapes_shape")]),
}


@dataclass(frozen=True)
class Suite:
    """One world's experiments, the scores its runs are evaluated by, and the headline."""
    experiments: Experiments
    # The default of --metric: the headline score of the tables and curves.
    metric: str
    # Evaluated at weight 1 each; the evaluation adds every other score of their reward models.
    eval_rewards: tuple[str, ...]
    # Added to every run's overrides, before its setting's.
    overrides: tuple[str, ...] = ()
    # Experiments whose runs' own monitoring (in-loop evaluation, health.json) is tabulated.
    monitored: tuple[str, ...] = ()


# Keyed by the reward model the config's reward.weights use.
SUITES = {
    "color": Suite(EXPERIMENTS, "color", ("color", "motion")),
    # In-loop evaluation of all held-out captions before training and every 4 iterations:
    # held-out accuracy against training seconds for every experiment, and what the monitor
    # saw (its held-out check compares with the untrained policy's evaluation).
    "shapes": Suite(SHAPES_EXPERIMENTS, "shapes_all", ("shapes_all",),
                    ("eval.every=4", "eval.at_start=true", "eval.num_seeds=1", "eval.batch_size=8",
                     "eval.grid_prompts=0"), ("hacking",)),
}

QUICK = {"seeds": 1, "iterations": 4, "eval_prompts": 2, "eval_seeds": 1}


def suite_of(cfg: Config, path: str) -> Suite:
    """The suite of the first reward model among the config's reward.weights that has one."""
    from fastvideo_grpo.rewards import REGISTRY

    owners = {score: model.name for model in REGISTRY.values() for score in model.scores}
    for name in cfg.reward.weights:
        if owners.get(name) in SUITES:
            return SUITES[owners[name]]
    raise ValueError(f"{path}: reward.weights {sorted(cfg.reward.weights)} use no reward model with ablations; "
                     f"expected one of {sorted(SUITES)}'s scores")


def eval_overrides(suite: Suite) -> tuple[str, ...]:
    """The evaluation's reward: the suite's scores at weight 1, no thresholds."""
    weights = ", ".join(f"{name}: 1.0" for name in suite.eval_rewards)
    return (f"reward.weights={{{weights}}}", "reward.binary_thresholds={}")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std, the Student-t 95% CI half-width, min and max over seeds."""
    stats = mean_ci(values, student=True)
    return {"mean": stats["mean"], "std": stats["std"], "ci95": stats["ci95"], "min": min(values), "max": max(values),
            "n": len(values)}


def final_scores(cfg_path: Path, folder: Path, checkpoint: str | None, prompts: str, eval_prompts: int,
                 eval_seeds: int, rewards: tuple[str, ...]) -> dict[str, float]:
    """Mean of every evaluated score (`rewards`: the overrides that set them) over ODE samples of `prompts`."""
    cfg = load_config(cfg_path, list(rewards))
    summary = evaluate(cfg, folder, checkpoint=checkpoint, prompts=prompts, num_prompts=eval_prompts,
                       seeds=list(range(eval_seeds)), grid_prompts=0)
    return {name: s["mean"] for name, s in summary["rewards"].items()}


def run_one(config: str, overrides: tuple[str, ...], seed: int, folder: str, iterations: int,
            eval_prompts: int, eval_seeds: int, rewards: tuple[str, ...], metric: str) -> dict:
    """Train one setting for one seed, evaluate its final weights; runs in a worker process."""
    import torch

    from fastvideo_grpo.checkpoint import BEST, best_checkpoint, latest_checkpoint
    from fastvideo_grpo.training.trainer import train

    torch.set_num_threads(1)
    logging.getLogger("fastvideo_grpo").setLevel(logging.WARNING)
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    cfg = load_config(config, [*overrides, f"train.seed={seed}", f"train.output_dir={folder}",
                               f"train.iterations={iterations}", "train.progress_bar=false", "train.resume=never"])
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    # An early-stopped run is judged by its marked best checkpoint, as `export --best` would take it.
    checkpoint = str(best_checkpoint(folder) if (folder / "checkpoints" / BEST).is_file() else latest_checkpoint(folder))
    scores = {split: final_scores(folder / "config.yaml", folder / "eval" / split, checkpoint, prompts, eval_prompts,
                                  eval_seeds, rewards)
              for split, prompts in (("held_out", cfg.eval.prompts_file), ("train", cfg.data.prompts_file))}
    shutil.rmtree(folder / "checkpoints")  # only the scores are needed
    records = read_metrics(folder / "metrics.jsonl")
    tail = [r[f"reward/{metric}"] for r in records[-max(1, len(records) // 5):] if f"reward/{metric}" in r]
    evals = read_metrics(folder / "eval.jsonl") if (folder / "eval.jsonl").is_file() else []
    health = json.loads((folder / HEALTH).read_text())
    return {"eval": scores, "train_last": sum(tail) / len(tail) if tail else None, "seconds": seconds,
            "iteration_seconds": sum(r["time_iteration"] for r in records), "iterations": len(records),
            "eval_curve": eval_curve(records, evals, metric), "evals": evals,
            "trained_on": [name for name, w in cfg.reward.weights.items() if w],
            "health": {"fired": health["fired"], "early_stop": health["early_stop"],
                       "best_iteration": (health["best_eval"] or {}).get("iteration")}}


def eval_curve(records: list[dict], evals: list[dict], metric: str) -> list[list[float]]:
    """[training seconds, held-out ODE `metric`] after each in-loop evaluation (eval.jsonl;
    empty without eval.every or when it does not score `metric`). Seconds are the iterations'
    own (time_iteration summed), so the evaluations' time is not counted."""
    elapsed, seconds = 0.0, {0: 0.0}  # 0: eval.at_start's evaluation
    for record in records:
        elapsed += record["time_iteration"]
        seconds[record["iteration"] + 1] = elapsed
    return [[seconds[e["iteration"]], e[f"eval/{metric}_mean"]] for e in evals if f"eval/{metric}_mean" in e]


def time_to_reach(curve: list[list[float]], target: float) -> float | None:
    """Training seconds until the held-out reward first reaches `target` (None: never)."""
    return next((t for t, reward in curve if reward >= target), None)


def mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """The seed-averaged curve: mean seconds and mean reward at each evaluation."""
    return [[sum(point[0] for point in points) / len(points), sum(point[1] for point in points) / len(points)]
            for points in zip(*curves)]


def cell(values: list[float], signed: bool = True) -> str:
    """`mean +- 95% CI half-width` over seeds."""
    value = spread(values)
    return f"{value['mean']:+.3f} +- {value['ci95']:.3f}" if signed else f"{value['mean']:.3f} +- {value['ci95']:.3f}"


def wall_time_table(results: dict, experiments: Experiments, metric: str) -> list[str]:
    """For experiments whose runs evaluated during training: the seconds each setting took to
    reach the reference's final held-out `metric`, paired by seed, as a fraction of the
    reference's whole run; and the same for the seed-averaged curves, whose target does
    not swing with one seed's last evaluation."""
    lines = []
    for experiment, (_, settings) in experiments.items():
        reference = results[settings[0].key]
        if not all(r["eval_curve"] for s in settings for r in results[s.key]):
            continue
        reference_mean = mean_curve([r["eval_curve"] for r in reference])
        lines += ["", f"{experiment}: training seconds to reach {settings[0].name}'s final in-loop held-out ODE "
                      f"{metric} (seed by seed; seed-averaged curves against {settings[0].name}'s averaged final "
                      f"{reference_mean[-1][1]:+.3f} in {reference_mean[-1][0]:.0f} s)", "",
                  f"| setting | final held-out {metric} | s to reach | fraction of reference run | seeds reached "
                  "| averaged: s to reach | averaged: fraction |",
                  "|---|---|---|---|---|---|---|"]
        for setting in settings:
            runs = results[setting.key]
            reached = [(time_to_reach(r["eval_curve"], ref["eval_curve"][-1][1]), ref["eval_curve"][-1][0])
                       for r, ref in zip(runs, reference)]
            hits = [(t, total) for t, total in reached if t is not None]
            when = f"{sum(t for t, _ in hits) / len(hits):.0f}" if hits else "never"
            fraction = f"{sum(t / total for t, total in hits) / len(hits):.2f}" if hits else "-"
            averaged = time_to_reach(mean_curve([r["eval_curve"] for r in runs]), reference_mean[-1][1])
            averaged_cells = (f"{averaged:.0f} | {averaged / reference_mean[-1][0]:.2f}" if averaged is not None
                              else "never | -")
            lines.append(f"| {setting.name} | {cell([r['eval_curve'][-1][1] for r in runs])} | {when} | {fraction} "
                         f"| {len(hits)}/{len(runs)} | {averaged_cells} |")
    return lines


def first_last(runs: list[dict], name: str) -> tuple[float, float] | None:
    """Seed means of held-out `name` at the first and the last in-loop evaluation (None: some
    run did not evaluate it)."""
    ends = [[r["evals"][i].get(f"eval/{name}_mean") if r["evals"] else None for r in runs] for i in (0, -1)]
    if any(v is None for values in ends for v in values):
        return None
    return sum(ends[0]) / len(runs), sum(ends[1]) / len(runs)


def monitor_table(results: dict, experiments: Experiments, metric: str) -> list[str]:
    """What each setting's runs reported about themselves while training: the in-loop held-out
    evaluation of every score it holds (seed-averaged, first -> last), the evaluation the
    monitor ranks best by the trained (weighted) score, as early stop and `export --best`
    would keep it, and the health warnings fired."""
    lines = []
    for experiment, (_, settings) in experiments.items():
        first = (results[settings[0].key][0]["evals"] or [{}])[0]
        names = [k[len("eval/"):-len("_mean")] for k in first if k.endswith("_mean")]
        lines += ["", f"{experiment}: what each run's own monitor saw: its in-loop held-out ODE evaluation "
                      "(eval.jsonl, seed mean, first -> last evaluation), the evaluations the trained score ranks best "
                      f"(health.json best_eval, iteration per seed, and their mean held-out {metric}), and the "
                      "warnings fired (in how many seeds)", "",
                  "| setting | trained on | " + "".join(f"in-loop {name} | " for name in names)
                  + f"best evaluation: iteration | {metric} there | warnings |",
                  "|---|---|" + "---|" * len(names) + "---|---|---|"]
        for setting in settings:
            runs = results[setting.key]
            cells = [f"{end[0]:.3f} -> {end[1]:.3f}" if end else "-" for end in (first_last(runs, n) for n in names)]
            best = [r["health"]["best_iteration"] for r in runs]
            at_best = [next((e.get(f"eval/{metric}_mean") for e in r["evals"] if e["iteration"] == it), None)
                       for r, it in zip(runs, best)]
            fired: dict[str, int] = {}
            for r in runs:
                for warning in [*r["health"]["fired"], *(["stopped early"] if r["health"]["early_stop"] else [])]:
                    fired[warning] = fired.get(warning, 0) + 1
            warnings = ", ".join(f"{w} ({n}/{len(runs)})" for w, n in sorted(fired.items())) or "none"
            lines.append(f"| {setting.name} | {' + '.join(runs[0]['trained_on'])} | {''.join(c + ' | ' for c in cells)}"
                         f"{', '.join('-' if it is None else str(it) for it in best)} "
                         f"| {'-' if None in at_best else f'{sum(at_best) / len(runs):.3f}'} | {warnings} |")
    return lines


def evaluate_base(config: str, folder: Path, eval_prompts: int, eval_seeds: int,
                  rewards: tuple[str, ...]) -> dict[str, dict[str, float]]:
    cfg = load_config(config, list(rewards))
    return {split: final_scores(Path(config), folder / split, None, prompts, eval_prompts, eval_seeds, rewards)
            for split, prompts in (("held_out", cfg.eval.prompts_file), ("train", cfg.data.prompts_file))}


def table(results: dict, suite: Suite, experiments: Experiments, base: dict[str, dict[str, float]],
          metric: str) -> str:
    """The main table: per setting the held-out and training-prompt `metric` with paired deltas,
    every other evaluated score held out with its paired delta, the training reward, and time."""
    others = [name for name in base["held_out"] if name != metric]

    def score(run: dict, split: str, name: str = metric) -> float:
        return run["eval"][split][name]

    lines = [f"Base model (before training): ODE {metric} {base['held_out'][metric]:+.3f} on held-out prompts, "
             f"{base['train'][metric]:+.3f} on training prompts"
             + "".join(f"; held-out {name} {base['held_out'][name]:.4f}" for name in others) + ".", "",
             f"| experiment | setting | ODE {metric}, held-out | delta vs reference | ODE {metric}, train prompts "
             "| delta vs reference | " + "".join(f"ODE {name}, held-out (delta) | " for name in others)
             + f"SDE train reward/{metric}, last 20% | s / run | iteration s / run |",
             "|---|---|---|---|---|---|" + "---|" * len(others) + "---|---|---|"]
    for experiment, (_, settings) in experiments.items():
        reference = results[settings[0].key]
        for setting in settings:
            runs = results[setting.key]
            cells = []
            for split in ("held_out", "train"):
                cells.append(cell([score(r, split) for r in runs]))
                # Seed s of every setting draws the same prompts and noise: pair by seed.
                cells.append("(reference)" if setting is settings[0] else
                             cell([score(r, split) - score(ref, split) for r, ref in zip(runs, reference)]))
            for name in others:
                mean = sum(score(r, "held_out", name) for r in runs) / len(runs)
                delta = spread([score(r, "held_out", name) - score(ref, "held_out", name)
                                for r, ref in zip(runs, reference)])
                cells.append(f"{mean:.4f}" if setting is settings[0] else
                             f"{mean:.4f} ({delta['mean']:+.4f} +- {delta['ci95']:.4f})")
            train = [r["train_last"] for r in runs]
            cells.append("-" if None in train else cell(train))
            cells.append(f"{sum(r['seconds'] for r in runs) / len(runs):.0f}")
            cells.append(f"{sum(r['iteration_seconds'] for r in runs) / len(runs):.0f}")
            lines.append(f"| {experiment} | {setting.name} | {' | '.join(cells)} |")
    lines += wall_time_table(results, experiments, metric)
    lines += monitor_table(results, {e: experiments[e] for e in experiments if e in suite.monitored}, metric)
    lines += ["", "The paper's findings under test:"]
    lines += [f"- {experiment}: {finding}" for experiment, (finding, _) in experiments.items()]
    return "\n".join(lines)


def plot_curves(output: Path, experiments: Experiments, seeds: list[int], window: int, metric: str) -> None:
    """One panel per experiment: each setting's training reward/`metric` averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"reward/{metric}"
    columns = min(3, len(experiments))
    rows = -(-len(experiments) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (experiment, (_, settings)) in zip(axes.flat, experiments.items()):
        runs = {}
        for setting in settings:
            per_seed = [read_metrics(output / "runs" / setting.key / f"seed_{s}" / "metrics.jsonl") for s in seeds]
            length = min(len(m) for m in per_seed)
            runs[setting.name] = [{"iteration": i, key: sum(m[i][key] for m in per_seed) / len(per_seed)}
                                  for i in range(length) if all(key in m[i] for m in per_seed)]
        draw_reward_curves(ax, runs, key, window)
        ax.set_title(experiment)
    for ax in list(axes.flat)[len(experiments):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=90)
    plt.close(fig)


def plot_eval_curves(output: Path, results: dict, experiments: Experiments, metric: str) -> None:
    """OUTPUT/eval_curves.png: held-out ODE `metric` against training seconds, seed-averaged
    at each evaluation, for the experiments whose runs evaluated during training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e, (_, settings) in experiments.items() if all(r["eval_curve"] for s in settings
                                                                  for r in results[s.key])]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, experiment in zip(axes.flat, shown):
        for setting in experiments[experiment][1]:
            curves = [r["eval_curve"] for r in results[setting.key]]
            length = min(len(c) for c in curves)
            ax.plot([sum(c[i][0] for c in curves) / len(curves) for i in range(length)],
                    [sum(c[i][1] for c in curves) / len(curves) for i in range(length)], marker=".", label=setting.name)
        ax.set_xlabel("training seconds (seed mean)")
        ax.set_ylabel(f"held-out ODE {metric}")
        ax.set_title(experiment)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "eval_curves.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Short trainings over the paper's ablations")
    parser.add_argument("--config", default="assets/configs/tiny_ablation.yaml")
    parser.add_argument("--output", default="outputs/ablations")
    parser.add_argument("--experiments", nargs="+",
                        help="default: all of the config's world: " + "; ".join(
                            f"{name}: {' '.join(suite.experiments)}" for name, suite in SUITES.items()))
    parser.add_argument("--metric", help="the headline score (default: the world's, " + ", ".join(
        f"{suite.metric} for {name}" for name, suite in SUITES.items()) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per setting")
    parser.add_argument("--iterations", type=int, help="default: the config's train.iterations")
    parser.add_argument("--eval-prompts", type=int, default=0, help="prompts to evaluate (0: all)")
    parser.add_argument("--eval-seeds", type=int, default=4, help="ODE samples per evaluated prompt")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--window", type=int, default=10, help="moving-average window of the curves")
    parser.add_argument("--quick", action="store_true", help=f"CI grid: {QUICK}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.seeds, args.iterations = QUICK["seeds"], QUICK["iterations"]
        args.eval_prompts, args.eval_seeds = QUICK["eval_prompts"], QUICK["eval_seeds"]
    cfg = load_config(args.config, args.overrides)
    suite = suite_of(cfg, args.config)
    names = args.experiments or list(suite.experiments)
    unknown = [name for name in names if name not in suite.experiments]
    if unknown:
        raise ValueError(f"--experiments {' '.join(unknown)}: not an experiment of {args.config}'s world; expected "
                         f"some of {list(suite.experiments)} (KEY=VALUE overrides go before --experiments)")
    experiments = {name: suite.experiments[name] for name in names}
    rewards = eval_overrides(suite)
    metric = args.metric or suite.metric
    from fastvideo_grpo.rewards import with_all_scores

    scored = list(with_all_scores(load_config(args.config, [*args.overrides, *rewards]).reward).weights)
    if metric not in scored:
        raise ValueError(f"--metric {metric}: not a score the evaluation gives; expected one of {scored}")
    iterations = args.iterations or cfg.train.iterations
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    common = (*suite.overrides, *args.overrides)
    unique = {s.key: s for _, settings in experiments.values() for s in settings}
    # Costliest first (best-of samples twice as much), so parallel workers finish together.
    tasks = sorted(((s, seed) for s in unique.values() for seed in seeds),
                   key=lambda task: "policy_update.best_of=8" not in task[0].overrides)
    started = time.perf_counter()
    logger.info("%d settings x %d seeds, %d iterations each, %d parallel jobs", len(unique), len(seeds),
                iterations, args.jobs)
    results: dict[str, list[dict]] = {key: [None] * len(seeds) for key in unique}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        base = pool.submit(evaluate_base, args.config, output / "base_eval", args.eval_prompts, args.eval_seeds,
                           (*args.overrides, *rewards))
        futures = {pool.submit(run_one, args.config, (*common, *s.overrides), seed,
                               str(output / "runs" / s.key / f"seed_{seed}"), iterations, args.eval_prompts,
                               args.eval_seeds, rewards, metric): (s, seed) for s, seed in tasks}
        for done, (future, (setting, seed)) in enumerate(futures.items(), 1):
            results[setting.key][seed] = future.result()
            logger.info("%d/%d %s seed %d: ODE %s held-out %+.3f (%.0f s)", done, len(futures), setting.key, seed,
                        metric, results[setting.key][seed]["eval"]["held_out"][metric],
                        results[setting.key][seed]["seconds"])
        base_scores = base.result()
    elapsed = time.perf_counter() - started
    text = table(results, suite, experiments, base_scores, metric)
    header = (f"{len(unique)} settings x {len(seeds)} seeds, {iterations} iterations, {args.jobs} jobs: "
              f"{elapsed / 60:.1f} min wall-clock. Mean +- Student-t 95% CI half-width over seeds; deltas paired "
              "by seed.\n\n")
    (output / "results.md").write_text(header + text + "\n")
    (output / "results.json").write_text(json.dumps(
        {"iterations": iterations, "seeds": seeds, "minutes": elapsed / 60, "metric": metric, "base": base_scores,
         "overrides": list(common),
         "settings": {k: {"overrides": list(unique[k].overrides), "runs": v} for k, v in results.items()}}, indent=1))
    plot_curves(output, experiments, seeds, args.window, metric)
    plot_eval_curves(output, results, experiments, metric)
    sys.stdout.write(header + text + "\n")
    return 0


def command() -> int:
    """`fastvideo-grpo-ablate` and `python -m fastvideo_grpo.ablate`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
