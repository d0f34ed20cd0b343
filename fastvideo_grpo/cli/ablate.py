"""CLI: the paper's ablations, as short tiny-model trainings on CPU.

    python -m fastvideo_grpo.ablate [--quick] [--experiments NAME ...] [--seeds 3] [--jobs 2]
        [--iterations N] [--config assets/configs/tiny_ablation.yaml] [--output outputs/ablations]

Every setting of every experiment trains the same seeded tiny model for `--seeds` training
seeds (the seed changes prompt order and all sampling noise). The final weights are then
evaluated with the ODE sampler, `--eval-seeds` samples per prompt, on the held-out prompts
of the config's eval.prompts_file and on the training prompts, scored by the raw color and
motion rewards whatever the run trained on, so that settings that change the reward
still compare. Settings shared by several experiments (each experiment's reference is its
first setting) run once. Writes OUTPUT/results.md (table), OUTPUT/results.json and
OUTPUT/curves.png (training reward/color, seed-averaged, moving average); where an
experiment's runs evaluate during training (`EVAL_CURVE`), the seconds each setting took to
reach the reference's final held-out reward and OUTPUT/eval_curves.png. `--quick` is a
CI-sized grid: one seed, a few iterations.
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
from fastvideo_grpo.config import load_config
from fastvideo_grpo.stats import mean_ci
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


def _eta(value: float) -> Setting:
    return Setting(f"eta {value}", (f"sampling.eta={value}",))


# The held-out ODE reward during training (eval.jsonl), for reward against wall-clock seconds.
EVAL_CURVE = ("eval.every=10", "eval.num_prompts=8", "eval.num_seeds=2", "eval.batch_size=8", "eval.grid_prompts=0")


def _nft(lr: str, *overrides: str, steps: int = 0) -> Setting:
    """DiffusionNFT at learning rate `lr`: on the same rollout shape (8 deterministic Euler
    steps), or, with `steps`, on a cheaper `steps`-step DPM-Solver++(2M) rollout as the
    flagship NFT configs use; the held-out evaluation stays at the reference's 8 Euler steps.
    `overrides` change one NFT setting more."""
    cheaper = (f"sampling.num_steps={steps}", "sampling.ode_solver=dpmpp_2m", "eval.num_steps=8") if steps else ()
    name = ", ".join([f"DiffusionNFT lr {float(lr):g}", *([f"{steps} dpmpp_2m steps"] if steps else []),
                      *(o.split(".", 1)[1] for o in overrides)])
    return Setting(name, ("train.algorithm=nft", "sampling.shared_noise=false", f"train.lr={lr}", *cheaper,
                          *overrides, *EVAL_CURVE))


# Each experiment's settings, the paper's finding it tests, and the config's own setting
# as the reference (the first one listed with no overrides).
EXPERIMENTS: dict[str, tuple[str, list[Setting]]] = {
    "initial_noise": ("shared initial noise within a group is essential; independent noise destabilises", [
        Setting("shared"), Setting("independent", ("sampling.shared_noise=false",))]),
    "objective": ("GRPO (group-normalised advantages) trains; DDPO-style batch normalisation diverges on RF", [
        Setting("GRPO (group)"), Setting("DDPO-style (batch)", ("policy_update.advantage_mode=batch",))]),
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
        Setting("every step SDE, 60%"),
        Setting("window 2 progressive, dpmpp_2m", ("sampling.sde_window_size=2", "sampling.ode_solver=dpmpp_2m",
                                                   "policy_update.timestep_fraction=1.0")),
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

QUICK = {"seeds": 1, "iterations": 4, "eval_prompts": 2, "eval_seeds": 1}
EVAL_REWARDS = ("reward.weights={color: 1.0, motion: 1.0}", "reward.binary_thresholds={}")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std, min and max over seeds."""
    stats = mean_ci(values)
    return {"mean": stats["mean"], "std": stats["std"], "min": min(values), "max": max(values), "n": len(values)}


def final_scores(cfg_path: Path, folder: Path, checkpoint: str | None, prompts: str, eval_prompts: int,
                 eval_seeds: int) -> dict[str, float]:
    """Mean raw color and motion rewards of ODE samples of `prompts`."""
    cfg = load_config(cfg_path, list(EVAL_REWARDS))
    summary = evaluate(cfg, folder, checkpoint=checkpoint, prompts=prompts, num_prompts=eval_prompts,
                       seeds=list(range(eval_seeds)), grid_prompts=0)
    return {name: s["mean"] for name, s in summary["rewards"].items()}


def run_one(config: str, overrides: tuple[str, ...], seed: int, folder: str, iterations: int,
            eval_prompts: int, eval_seeds: int) -> dict:
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
                                  eval_seeds)
              for split, prompts in (("held_out", cfg.eval.prompts_file), ("train", cfg.data.prompts_file))}
    shutil.rmtree(folder / "checkpoints")  # only the scores are needed
    records = read_metrics(folder / "metrics.jsonl")
    tail = records[-max(1, len(records) // 5):]
    return {"eval": scores, "train_color_last": sum(r["reward/color"] for r in tail) / len(tail), "seconds": seconds,
            "iterations": len(records), "eval_curve": eval_curve(folder, records)}


def eval_curve(folder: Path, records: list[dict]) -> list[list[float]]:
    """[training seconds, held-out ODE color] after each in-loop evaluation (eval.jsonl; empty
    without eval.every). Seconds are the iterations' own (time_iteration summed), so the
    evaluations' time is not counted."""
    path = folder / "eval.jsonl"
    if not path.is_file():
        return []
    elapsed, seconds = 0.0, {}
    for record in records:
        elapsed += record["time_iteration"]
        seconds[record["iteration"] + 1] = elapsed
    return [[seconds[e["iteration"]], e["eval/color_mean"]] for e in read_metrics(path)]


def time_to_reach(curve: list[list[float]], target: float) -> float | None:
    """Training seconds until the held-out reward first reaches `target` (None: never)."""
    return next((t for t, reward in curve if reward >= target), None)


def mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """The seed-averaged curve: mean seconds and mean reward at each evaluation."""
    return [[sum(point[0] for point in points) / len(points), sum(point[1] for point in points) / len(points)]
            for points in zip(*curves)]


def wall_time_table(results: dict, experiments: list[str]) -> list[str]:
    """For experiments whose runs evaluated during training: the seconds each setting took to
    reach the reference's final held-out reward, paired by seed, as a fraction of the
    reference's whole run; and the same for the seed-averaged curves, whose target does
    not swing with one seed's last evaluation."""
    lines = []
    for experiment in experiments:
        settings = EXPERIMENTS[experiment][1]
        reference = results[settings[0].key]
        if not all(r["eval_curve"] for s in settings for r in results[s.key]):
            continue
        reference_mean = mean_curve([r["eval_curve"] for r in reference])
        lines += ["", f"{experiment}: training seconds to reach {settings[0].name}'s final in-loop held-out ODE color "
                      f"(seed by seed; seed-averaged curves against {settings[0].name}'s averaged final "
                      f"{reference_mean[-1][1]:+.3f} in {reference_mean[-1][0]:.0f} s)", "",
                  "| setting | final held-out color | s to reach | fraction of reference run | seeds reached "
                  "| averaged: s to reach | averaged: fraction |",
                  "|---|---|---|---|---|---|---|"]
        for setting in settings:
            runs = results[setting.key]
            reached = [(time_to_reach(r["eval_curve"], ref["eval_curve"][-1][1]), ref["eval_curve"][-1][0])
                       for r, ref in zip(runs, reference)]
            hits = [(t, total) for t, total in reached if t is not None]
            final = spread([r["eval_curve"][-1][1] for r in runs])
            when = f"{sum(t for t, _ in hits) / len(hits):.0f}" if hits else "never"
            fraction = f"{sum(t / total for t, total in hits) / len(hits):.2f}" if hits else "-"
            averaged = time_to_reach(mean_curve([r["eval_curve"] for r in runs]), reference_mean[-1][1])
            averaged_cells = (f"{averaged:.0f} | {averaged / reference_mean[-1][0]:.2f}" if averaged is not None
                              else "never | -")
            lines.append(f"| {setting.name} | {final['mean']:+.3f} +- {final['std']:.3f} | {when} | {fraction} "
                         f"| {len(hits)}/{len(runs)} | {averaged_cells} |")
    return lines


def evaluate_base(config: str, folder: Path, eval_prompts: int, eval_seeds: int) -> dict[str, dict[str, float]]:
    cfg = load_config(config)
    return {split: final_scores(Path(config), folder / split, None, prompts, eval_prompts, eval_seeds)
            for split, prompts in (("held_out", cfg.eval.prompts_file), ("train", cfg.data.prompts_file))}


def table(results: dict, experiments: list[str], base: dict[str, dict[str, float]]) -> str:
    def color(run: dict, split: str) -> float:
        return run["eval"][split]["color"]

    lines = [f"Base model (before training): ODE color {base['held_out']['color']:+.3f} on held-out prompts, "
             f"{base['train']['color']:+.3f} on training prompts.", "",
             "| experiment | setting | ODE color, held-out | delta vs reference | ODE color, train prompts "
             "| delta vs reference | ODE motion, held-out | SDE train reward/color, last 20% | s / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for experiment in experiments:
        _, settings = EXPERIMENTS[experiment]
        reference = results[settings[0].key]
        for setting in settings:
            runs = results[setting.key]
            cells = []
            for split in ("held_out", "train"):
                value = spread([color(r, split) for r in runs])
                cells.append(f"{value['mean']:+.3f} +- {value['std']:.3f}")
                if setting is settings[0]:
                    cells.append("(reference)")
                else:
                    # Seed s of every setting draws the same prompts and noise: pair by seed.
                    delta = spread([color(r, split) - color(ref, split) for r, ref in zip(runs, reference)])
                    cells.append(f"{delta['mean']:+.3f} +- {delta['std']:.3f}")
            motion = spread([r["eval"]["held_out"]["motion"] for r in runs])
            train_color = spread([r["train_color_last"] for r in runs])
            seconds = sum(r["seconds"] for r in runs) / len(runs)
            lines.append(f"| {experiment} | {setting.name} | {' | '.join(cells)} | {motion['mean']:.4f} "
                         f"| {train_color['mean']:+.3f} +- {train_color['std']:.3f} | {seconds:.0f} |")
    lines += wall_time_table(results, experiments)
    lines += ["", "The paper's findings under test:"]
    lines += [f"- {experiment}: {EXPERIMENTS[experiment][0]}" for experiment in experiments]
    return "\n".join(lines)


def plot_curves(output: Path, experiments: list[str], seeds: list[int], window: int) -> None:
    """One panel per experiment: each setting's training reward/color averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(experiments))
    rows = -(-len(experiments) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, experiment in zip(axes.flat, experiments):
        runs = {}
        for setting in EXPERIMENTS[experiment][1]:
            per_seed = [read_metrics(output / "runs" / setting.key / f"seed_{s}" / "metrics.jsonl") for s in seeds]
            length = min(len(m) for m in per_seed)
            runs[setting.name] = [{"iteration": i, "reward/color": sum(m[i]["reward/color"] for m in per_seed)
                                   / len(per_seed)} for i in range(length)]
        draw_reward_curves(ax, runs, "reward/color", window)
        ax.set_title(experiment)
    for ax in list(axes.flat)[len(experiments):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=90)
    plt.close(fig)


def plot_eval_curves(output: Path, results: dict, experiments: list[str]) -> None:
    """OUTPUT/eval_curves.png: held-out ODE color against training seconds, seed-averaged at
    each evaluation, for the experiments whose runs evaluated during training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in experiments if all(r["eval_curve"] for s in EXPERIMENTS[e][1] for r in results[s.key])]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, experiment in zip(axes.flat, shown):
        for setting in EXPERIMENTS[experiment][1]:
            curves = [r["eval_curve"] for r in results[setting.key]]
            length = min(len(c) for c in curves)
            ax.plot([sum(c[i][0] for c in curves) / len(curves) for i in range(length)],
                    [sum(c[i][1] for c in curves) / len(curves) for i in range(length)], marker=".", label=setting.name)
        ax.set_xlabel("training seconds (seed mean)")
        ax.set_ylabel("held-out ODE color")
        ax.set_title(experiment)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "eval_curves.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Short tiny-model trainings over the paper's ablations")
    parser.add_argument("--config", default="assets/configs/tiny_ablation.yaml")
    parser.add_argument("--output", default="outputs/ablations")
    parser.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per setting")
    parser.add_argument("--iterations", type=int, help="default: the config's train.iterations")
    parser.add_argument("--eval-prompts", type=int, default=0, help="prompts to evaluate (0: all)")
    parser.add_argument("--eval-seeds", type=int, default=4, help="ODE samples per evaluated prompt")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--window", type=int, default=10, help="moving-average window of the curves")
    parser.add_argument("--quick", action="store_true", help=f"CI grid: {QUICK}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.seeds, args.iterations = QUICK["seeds"], QUICK["iterations"]
        args.eval_prompts, args.eval_seeds = QUICK["eval_prompts"], QUICK["eval_seeds"]
    iterations = args.iterations or load_config(args.config).train.iterations
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    unique = {s.key: s for e in args.experiments for s in EXPERIMENTS[e][1]}
    # Costliest first (best-of samples twice as much), so parallel workers finish together.
    tasks = sorted(((s, seed) for s in unique.values() for seed in seeds),
                   key=lambda task: "policy_update.best_of=8" not in task[0].overrides)
    started = time.perf_counter()
    logger.info("%d settings x %d seeds, %d iterations each, %d parallel jobs", len(unique), len(seeds),
                iterations, args.jobs)
    results: dict[str, list[dict]] = {key: [None] * len(seeds) for key in unique}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        base = pool.submit(evaluate_base, args.config, output / "base_eval", args.eval_prompts, args.eval_seeds)
        futures = {pool.submit(run_one, args.config, s.overrides, seed, str(output / "runs" / s.key / f"seed_{seed}"),
                               iterations, args.eval_prompts, args.eval_seeds): (s, seed) for s, seed in tasks}
        for done, (future, (setting, seed)) in enumerate(futures.items(), 1):
            results[setting.key][seed] = future.result()
            logger.info("%d/%d %s seed %d: ODE color held-out %+.3f (%.0f s)", done, len(futures), setting.key, seed,
                        results[setting.key][seed]["eval"]["held_out"]["color"], results[setting.key][seed]["seconds"])
        base_scores = base.result()
    elapsed = time.perf_counter() - started
    text = table(results, args.experiments, base_scores)
    header = (f"{len(unique)} settings x {len(seeds)} seeds, {iterations} iterations, {args.jobs} jobs: "
              f"{elapsed / 60:.1f} min wall-clock. Mean +- std over seeds [min, max].\n\n")
    (output / "results.md").write_text(header + text + "\n")
    (output / "results.json").write_text(json.dumps(
        {"iterations": iterations, "seeds": seeds, "minutes": elapsed / 60, "base": base_scores,
         "settings": {k: {"overrides": list(unique[k].overrides), "runs": v} for k, v in results.items()}}, indent=1))
    plot_curves(output, args.experiments, seeds, args.window)
    plot_eval_curves(output, results, args.experiments)
    sys.stdout.write(header + text + "\n")
    return 0


def command() -> int:
    """`fastvideo-grpo-ablate` and `python -m fastvideo_grpo.ablate`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
