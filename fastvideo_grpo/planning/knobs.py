"""Single changes that lower a rank's memory, each re-planned (or bounded from below without
re-planning) when a plan does not fit."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from fastvideo_grpo.algorithms.registry import algorithm_of
from fastvideo_grpo.config import Config, ConfigError
from fastvideo_grpo.models import model_family
from fastvideo_grpo.planning.cluster import Cluster

logger = logging.getLogger(__name__)


def knob_candidates(cfg: Config, cluster: Cluster, heads: int | None) -> list[tuple[list[str], Cluster]]:
    """Single changes that lower a rank's memory, cheapest to re-plan first: (overrides, cluster)."""
    p, s = cfg.parallel, cfg.sampling
    candidates = []
    if not p.activation_checkpointing:
        candidates.append((["parallel.activation_checkpointing=true"], cluster))
    if not p.reduce_grads_every_micro_batch:
        candidates.append((["parallel.reduce_grads_every_micro_batch=true"], cluster))
    if s.trajectory_device != "cpu":
        candidates.append((["sampling.trajectory_device=cpu"], cluster))
    if s.decode_batch_size > 1:
        candidates.append((["sampling.decode_batch_size=1"], cluster))
    candidates += [([knob], cluster) for knob in algorithm_of(cfg).memory_knobs(cfg)]
    if s.rollout_batch_size > 1:
        candidates.append((["sampling.rollout_batch_size=1"], cluster))
    if model_family(cfg.model).sequence_parallel is not None:
        for sp in (2, 4, 8):
            if sp > p.sp_size and cluster.world_size % (sp * p.dp_replicate) == 0 and (heads or sp) % sp == 0:
                candidates.append(([f"parallel.sp_size={sp}"], cluster))
    for factor in (2, 4):
        candidates.append(([], dataclasses.replace(cluster, nodes=cluster.nodes * factor)))
    if not p.cpu_offload:
        candidates.append((["parallel.cpu_offload=true"], cluster))
    return candidates


# What a knob that re-tracks the micro-batch leaves as it is: when that alone is over the
# budget, the knob is reported as a lower bound without re-planning (a re-plan at 13B costs
# ~30 s). Sequence parallelism, more nodes and CPU offload change neither the unsharded
# gradient nor a dp rank's samples.
UNCHANGED = ("accumulated_gradient", "trajectory", "vae_weights", "reward_model", "cuda_context", "reserved")
UNCHANGED_BY = {"parallel.activation_checkpointing": UNCHANGED + ("sharded_parameters", "gradients", "optimizer_state",
                                                                 "old_policy"),
                "parallel.sp_size": UNCHANGED, "--nodes": UNCHANGED, "parallel.cpu_offload": UNCHANGED}


def check_knobs(base: dict, cfg: Config, cluster: Cluster, heads: int | None,
                replan_with: Callable[[list[str], Cluster], dict]) -> list[dict]:
    """Re-plan with each knob (sequence-parallel degrees and node counts up to the first that
    fits); if none fits alone, the ones that keep the cluster and sp, together. `replan_with`
    (overrides added, cluster) plans the base config and its overrides again, without knobs."""
    checked, settled = [], set()
    train = base["memory_by_phase_gb"]["train"]

    def replan(extra: list[str], target: Cluster, kind: str) -> None:
        name = " ".join(extra) if extra else f"--nodes {target.nodes}"
        floor = sum(train.get(k, 0.0) for k in UNCHANGED_BY.get(kind, ()))
        if floor > cluster.gpu_memory_gb:
            checked.append({"override": name, "peak_gb": round(floor, 6), "headroom_gb": round(
                cluster.gpu_memory_gb - floor, 6), "fits": False, "lower_bound": True})
            return
        logger.info("re-planning with %s", name)
        try:
            result = replan_with(extra, target)
        except (ConfigError, ValueError) as e:
            logger.info("knob %s does not apply: %s", name, e)
            return
        checked.append({"override": name, "peak_gb": result["peak_gb"], "headroom_gb": result["headroom_gb"],
                        "fits": result["fits"], "lower_bound": False})

    candidates = knob_candidates(cfg, cluster, heads)
    for extra, target in candidates:
        kind = extra[0].split("=")[0] if extra else "--nodes"
        if kind not in settled:
            replan(extra, target, kind)
            if checked and checked[-1]["fits"] and kind in ("parallel.sp_size", "--nodes"):
                settled.add(kind)
    if not any(k["fits"] for k in checked):
        together = [extra[0] for extra, target in candidates
                    if extra and target == cluster and not extra[0].startswith("parallel.sp_size")]
        if len(together) > 1:
            replan(together, cluster, "together")
    return checked
