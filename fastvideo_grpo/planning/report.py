"""A plan as a small text table."""

from __future__ import annotations

from fastvideo_grpo.planning.memory import ASSUMED, CATEGORIES


def _flops(value: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value / 1e6:.1f} MFLOP"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def render(result: dict) -> str:
    """The plan as a small text table (MB where the whole plan is under a GB)."""
    w, phases = result["world"], result["memory_by_phase_gb"]
    unit, scale = ("GB", 1) if result["peak_gb"] >= 1 else ("MB", 1024)
    estimated = set(result["estimated"])
    lines = [
        f"{result['config']} {' '.join(result['overrides'])}".rstrip(),
        f"  {result['family']}: {_count(result['parameters'])} parameters ({_count(result['trainable_parameters'])} "
        f"trained); architecture: {result['architecture']}",
        f"  {w['nodes']} nodes x {w['gpus_per_node']} GPUs of {result['gpu_memory_gb']:g} GB: dp_replicate "
        f"{w['dp_replicate']} x dp_shard {w['dp_shard']} x sp {w['sp_size']}",
        f"  global batch: {w['prompts_per_dp_rank']} prompts per dp rank x G={w['group_size']} x "
        f"{w['dp_replicate'] * w['dp_shard']} dp ranks = {w['global_batch']} videos per iteration",
        "",
        f"  {'per-rank memory, ' + unit:<26}{'setup':>10}{'training step':>14}{'rollout/decode':>16}  source",
    ]
    columns = (("setup", 10), ("train", 14), ("decode", 16))
    for name in CATEGORIES:
        row = [phases[phase].get(name, 0.0) * scale for phase, _ in columns]
        if any(row):
            cells = "".join(f"{v:>{width}.2f}" if v else f"{'-':>{width}}" for v, (_, width) in zip(row, columns))
            source = "assumed" if name in ASSUMED else "estimate" if name in estimated else "tracked"
            lines.append(f"  {name.replace('_', ' '):<26}{cells}  {source}")
    totals = "".join(f"{sum(phases[phase].values()) * scale:>{width}.2f}" for phase, width in columns)
    lines.append(f"  {'total':<26}{totals}")
    host = {k: v for k, v in result["host_gb"].items() if v}
    if host:
        lines.append(f"  host memory per rank, {unit}: " + ", ".join(f"{k.replace('_', ' ')} {v * scale:.2f}"
                                                                   for k, v in host.items()))
    failed = [{"gpu": "GPU memory", "host": "host memory", "reward_gpu": "the reward GPU"}[k]
              for k, ok in result["fits_by"].items() if not ok]
    verdict = "fits" if result["fits"] else f"does NOT fit ({', '.join(failed)})"
    lines += ["", f"  {verdict}: peak {result['peak_gb'] * scale:.2f} {unit} ({result['peak_phase']}), setup peak "
              f"{result['setup_peak_gb'] * scale:.2f} {unit}, headroom {result['headroom_gb'] * scale:.2f} {unit} of "
              f"{result['gpu_memory_gb'] * scale:g} {unit}; host peak per node {result['host_peak_per_node_gb']:.1f} GB "
              f"of {result['host_memory_gb']:g} GB"]
    f, n = result["flops"], result["forwards"]
    lines.append(f"  per rank per iteration: rollout {_flops(f['rollout'])} ({n['rollout']} rows), training "
                 f"{_flops(f['train'])} ({n['train']} rows, frozen networks' included), decode {_flops(f['decode'])}")
    lines.append(f"  ~{result['seconds_per_iteration']:g} s per iteration at {result['peak_tflops']:g} TFLOPS x "
                 f"{result['mfu']:g} MFU")
    if result["knobs_checked"]:
        lines.append("  knobs, each re-planned (>=: a lower bound, not re-planned):")
        for knob in result["knobs_checked"]:
            bound = ">=" if knob["lower_bound"] else "  "
            lines.append(f"    {knob['override']:<48} peak {bound}{knob['peak_gb'] * scale:8.2f} {unit}  "
                         f"{'fits' if knob['fits'] else 'does not fit'}")
    lines += [f"  note: {note}" for note in result["notes"]]
    lines.append(f"  planned in {result['plan_seconds']:.1f} s ({result['plan_cpu_seconds']:.1f} s CPU)")
    return "\n".join(lines)
