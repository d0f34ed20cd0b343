"""GPU smoke test: what must work before the first multi-GPU run, on one GPU in minutes.

    python bench/gpu_smoke.py [--dry-run] [--out DIR]     (bench/gpu_smoke.sh runs it)

1. CUDA and the installed kernels: torch, its CUDA build, the device and its driver, NCCL,
   flash-attn (2) and flash-attn 3 (`flash_attn_interface`), SDPA's flash kernel.
2. Attention at the 480p shape (480x848 x 53 frames: 22,260 video + 256 text tokens, 24
   heads of 128, bf16) with each backend that imports: SDPA without a mask, SDPA with the
   [B, 1, 1, N] boolean mask HunyuanVideo's padded text gives, flash-attn 2 and 3; the time
   and the kernel that ran, read from the profiler.
3. A full-width HunyuanVideo cut to 2 dual + 2 single blocks (hidden 3072, 24 heads, 256
   text tokens, random bf16 weights) and the real VAE architecture (random weights), written
   as a diffusers folder, with random precomputed embeddings of padded prompts.
4. The real trainer on it (`assets/configs/hunyuan_t2v.yaml` at 480x848x53, G=2, 4 steps)
   under torchrun with NCCL, bf16 FSDP2 and activation checkpointing, the reward process on
   the same GPU (a random convolutional reward, bench/gpu_smoke_reward.py): 2 iterations,
   checkpointed, then resumed for a third.
5. The run against `plan` for the same config: peak memory, seconds per iteration, MFU;
   and the first update's ratio drift (exactly 0 in fp32; bf16 and kernel choice move it),
   the phase times.

--dry-run does all of it on the CPU with gloo at tiny sizes (4 heads of 16, 32x32 x 5
frames, the tiny VAE), so the test suite keeps the script working without a GPU.
Writes DIR/report.json and prints a summary; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.data.embeddings import shard_name, write_manifest, write_shard  # noqa: E402
from fastvideo_grpo.models.hunyuan_video.checks import HUNYUAN_VIDEO_TOKEN_GEOMETRY  # noqa: E402
from fastvideo_grpo.models.token_split import video_tokens  # noqa: E402
from fastvideo_grpo.parallel.distributed import cuda_unusable_reason  # noqa: E402

logger = logging.getLogger("gpu_smoke")
CONFIG = ROOT / "assets/configs/hunyuan_t2v.yaml"
REWARD_PLUGIN = ROOT / "bench/gpu_smoke_reward.py"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
# The first update's ratio exp(log pi_new - log pi_old) before any step: |ratio - 1| above
# this in bf16 means the training forward does not reproduce the rollout's.
MAX_RATIO_DRIFT = 1e-2


@dataclass(frozen=True)
class Sizes:
    heads: int
    head_dim: int
    text_tokens: int
    text_dim: int
    pooled_dim: int
    height: int
    width: int
    frames: int
    dual_blocks: int
    single_blocks: int
    dtype: str


# HunyuanVideo's own widths (models/hunyuan_video/published.py) at 480p; the dry run's are the tiny model's.
FULL = Sizes(heads=24, head_dim=128, text_tokens=256, text_dim=4096, pooled_dim=768, height=480, width=848, frames=53,
             dual_blocks=2, single_blocks=2, dtype="bf16")
DRY = Sizes(heads=4, head_dim=16, text_tokens=8, text_dim=32, pooled_dim=32, height=32, width=32, frames=5,
            dual_blocks=1, single_blocks=1, dtype="bf16")


def environment(device: torch.device) -> dict:
    """What is installed and whether CUDA works; the kernels' import errors in their own words."""
    env = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_unusable": cuda_unusable_reason(),
           "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", nccl=str(torch.cuda.nccl.version()),
                   sdpa_flash=torch.backends.cuda.is_flash_attention_available())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            env["driver"] = f"nvidia-smi failed: {e}"
    for name, module in (("flash_attn", "flash_attn"), ("flash_attn_3", "flash_attn_interface")):
        try:
            imported = __import__(module)
            env[name] = getattr(imported, "__version__", "installed")
        except Exception as e:  # an ABI mismatch raises more than ImportError
            env[name] = f"unavailable: {type(e).__name__}: {e}"
    return env


def profiled_kernels(fn, device: torch.device) -> list[str]:
    """The kernels (CUDA) or innermost attention ops (CPU) one call of `fn` ran, busiest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
        return [e.key for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:2]]
    ops = [e for e in events if e.key.startswith("aten::_") and "attention" in e.key]
    return [e.key for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:2]]


def attention_calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> dict:
    """name -> a call of that backend on q, k, v ([B, S, H, D]), for each backend that imports."""
    import torch.nn.functional as F

    def sdpa(mask=None):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask)

    calls = {"sdpa": sdpa, "sdpa_masked": lambda: sdpa(mask)}
    if q.is_cuda:
        for name, module in (("flash_attn", "flash_attn"), ("flash_attn_3", "flash_attn_interface")):
            try:
                flash = __import__(module).flash_attn_func
            except Exception:  # environment() reports why
                continue
            calls[name] = lambda flash=flash: flash(q, k, v)
    return calls


def time_attention(sizes: Sizes, device: torch.device, repeats: int) -> list[dict]:
    """Each backend at one sample's sequence (video + text tokens): milliseconds a call,
    TFLOP/s (4 S^2 H D per call), the kernels that ran."""
    video = video_tokens(HUNYUAN_VIDEO_TOKEN_GEOMETRY, sizes.frames, sizes.height, sizes.width)
    seq = video + sizes.text_tokens
    q, k, v = (torch.randn(1, seq, sizes.heads, sizes.head_dim, device=device, dtype=torch.bfloat16)
               for _ in range(3))
    # HunyuanVideo's mask: every video token and the prompt's tokens, its padding left out.
    mask = torch.ones(1, 1, 1, seq, dtype=torch.bool, device=device)
    mask[..., video + sizes.text_tokens // 2:] = False
    flops = 4 * seq * seq * sizes.heads * sizes.head_dim
    rows = []
    for name, call in attention_calls(q, k, v, mask).items():
        try:
            for _ in range(2):
                call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(repeats):
                call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - started) / repeats
            rows.append({"backend": name, "tokens": seq, "ms": round(seconds * 1e3, 3),
                         "tflops": round(flops / seconds / 1e12, 3), "kernels": profiled_kernels(call, device)})
        except Exception as e:
            rows.append({"backend": name, "tokens": seq, "error": f"{type(e).__name__}: {e}"})
    return rows


def write_model(folder: Path, sizes: Sizes, dry_run: bool, device: torch.device) -> Path:
    """A diffusers folder (transformer/, vae/) of HunyuanVideo cut to a few blocks, random
    weights: the published widths (models/hunyuan_video/published.py) and VAE, or the tiny model's."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    from fastvideo_grpo.models.hunyuan_video.published import HUNYUAN_VIDEO, HUNYUAN_VIDEO_VAE

    torch.manual_seed(0)
    if dry_run:
        from fastvideo_grpo.models.hunyuan_video.tiny import tiny_model_config, tiny_networks

        transformer, vae = tiny_networks(tiny_model_config(), sizes.text_dim, sizes.pooled_dim)
    else:
        config = {**HUNYUAN_VIDEO, "num_layers": sizes.dual_blocks, "num_single_layers": sizes.single_blocks}
        with torch.device(device):  # initialising ~1B parameters on the GPU takes seconds, not minutes
            transformer = HunyuanVideoTransformer3DModel(**config).to(torch.bfloat16)
            vae = AutoencoderKLHunyuanVideo(**HUNYUAN_VIDEO_VAE).to(torch.bfloat16)
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    return folder


def write_embeddings(folder: Path, sizes: Sizes) -> Path:
    """Random precomputed embeddings of the tiny prompt file, each prompt padded to
    text_tokens with a different number of real tokens (the mask the model builds)."""
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    n, length = len(prompts), sizes.text_tokens
    generator = torch.Generator().manual_seed(0)
    counts = torch.tensor([max(1, length * (i + 1) // (n + 1)) for i in range(n)])
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / shard_name(0), {
        "prompt_embeds": torch.randn(n, length, sizes.text_dim, generator=generator),
        "prompt_attention_mask": (torch.arange(length) < counts[:, None]).long(),
        "pooled_prompt_embeds": torch.randn(n, sizes.pooled_dim, generator=generator),
        "token_count": counts})
    write_manifest(folder, [{"id": i, "prompt": p, "shard": shard_name(0), "row": i, "tokens": int(counts[i])}
                            for i, p in enumerate(prompts)])
    return folder


def overrides(out: Path, sizes: Sizes, dry_run: bool, iterations: int) -> list[str]:
    """The flagship config at the smoke's sizes and counts; the reward process on this GPU."""
    return [
        f"model.path={out / 'model'}", f"model.dtype={sizes.dtype}", f"data.embeddings_dir={out / 'embeddings'}",
        f"parallel.device={'cpu' if dry_run else 'cuda'}", "parallel.activation_checkpointing=true",
        f"sampling.height={sizes.height}", f"sampling.width={sizes.width}", f"sampling.num_frames={sizes.frames}",
        "sampling.num_steps=4", "sampling.group_size=2", "policy_update.best_of=0",
        "reward.weights={smoke_conv: 1.0}", f"reward.plugins=[{REWARD_PLUGIN}]", "reward.mode=process",
        f"reward.device={'cpu' if dry_run else 'cuda:0'}",
        f"train.iterations={iterations}", "train.prompts_per_iteration=1", "train.gradient_accumulation_steps=2",
        "train.sample_every=0", "train.progress_bar=false", f"train.output_dir={out / 'run'}",
        "checkpoint.every=1", "checkpoint.keep_last=2",
    ]


def run_trainer(args: list[str], log: Path, timeout_s: float) -> None:
    """torchrun --nproc_per_node=1 -m fastvideo_grpo.train; raises with the log's tail on failure."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "fastvideo_grpo.train", "--config", str(CONFIG), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout_s)
    if result.returncode:
        raise RuntimeError(f"the trainer exited with {result.returncode}; {log}:\n"
                           + "\n".join(log.read_text().splitlines()[-30:]))


def peak_memory_gb(run: Path) -> list[float]:
    """memory/peak_gb_max per iteration from the run's TensorBoard log (it is not in metrics.jsonl)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tag = "memory/peak_gb_max"
    return [round(e.value, 3) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def planned(args: list[str], device: torch.device) -> dict:
    """`plan` for the same config on one GPU of this kind (the fake process group, in process)."""
    from fastvideo_grpo.planning.cluster import Cluster
    from fastvideo_grpo.planning.plan import plan

    memory = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 80.0
    result = plan(CONFIG, args, Cluster(nodes=1, gpus_per_node=1, gpu_memory_gb=memory), knobs=False)
    return {key: result[key] for key in ("peak_gb", "peak_phase", "fits", "memory_gb", "seconds_per_iteration",
                                         "peak_tflops", "mfu", "flops", "parameters")}


def compare(metrics: list[dict], peaks: list[float], plan: dict) -> dict:
    """Measured against planned, from the last iteration (the first one also compiles and warms up)."""
    last = metrics[-1]
    phases = {key: round(last[key], 3) for key in last if key.startswith("time_")}
    measured_peak = max(peaks) if peaks else None
    implied_mfu = plan["flops"]["total"] / last["time_iteration"] / (plan["peak_tflops"] * 1e12)
    return {
        "phase_seconds": phases,
        "ratio_drift_first_update": max(m["ratio_dev_first_update"] for m in metrics),
        "tflops_per_gpu": round(last["tflops_per_gpu"], 3), "mfu": last.get("mfu"),
        "seconds_per_iteration": {"measured": round(last["time_iteration"], 3),
                                  "planned": plan["seconds_per_iteration"]},
        "mfu_vs_plan": {"measured_at_plan_flops": round(implied_mfu, 4), "assumed_by_plan": plan["mfu"]},
        "peak_memory_gb": {"measured_allocated": measured_peak, "planned": plan["peak_gb"],
                           "ratio": round(measured_peak / plan["peak_gb"], 3) if measured_peak else None},
    }


def failures(report: dict, dry_run: bool) -> list[str]:
    problems = []
    if not dry_run and report["environment"]["cuda_unusable"]:
        problems.append(f"CUDA is unusable: {report['environment']['cuda_unusable']}")
    run = report.get("run", {})
    if run.get("iterations") != [0, 1, 2]:
        problems.append(f"metrics.jsonl iterations {run.get('iterations')}; expected [0, 1, 2] (2, then 1 resumed)")
    if not all(math.isfinite(v) for v in run.get("losses", [math.nan])):
        problems.append(f"non-finite loss: {run.get('losses')}")
    drift = report.get("comparison", {}).get("ratio_drift_first_update")
    if drift is None or not drift <= MAX_RATIO_DRIFT:
        problems.append(f"first-update ratio drift {drift}; expected <= {MAX_RATIO_DRIFT}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, gloo, tiny sizes: checks the script itself")
    parser.add_argument("--out", default="outputs/gpu_smoke", help="folder for the model, the run and report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu_smoke: %(message)s")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = DRY if args.dry_run else FULL
    device = torch.device("cpu") if args.dry_run or cuda_unusable_reason() else torch.device("cuda", 0)
    report = {"dry_run": args.dry_run, "sizes": asdict(sizes), "environment": environment(device)}
    started = time.perf_counter()
    try:
        if not args.dry_run and device.type != "cuda":
            raise RuntimeError(f"no usable CUDA: {report['environment']['cuda_unusable']}")
        logger.info("attention at %dx%d x %d frames", sizes.height, sizes.width, sizes.frames)
        report["attention"] = time_attention(sizes, device, repeats=2 if args.dry_run else 10)
        logger.info("writing the model and embeddings to %s", out)
        write_model(out / "model", sizes, args.dry_run, device)
        write_embeddings(out / "embeddings", sizes)
        shutil.rmtree(out / "run", ignore_errors=True)  # a previous smoke run's checkpoints would be resumed
        first, resumed = overrides(out, sizes, args.dry_run, 2), overrides(out, sizes, args.dry_run, 3)
        report["plan"] = planned(first, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the trainer gets the GPU to itself and its reward process
        timeout = 300 if args.dry_run else 360
        logger.info("training 2 iterations")
        run_trainer(first, out / "train.log", timeout)
        logger.info("resuming for a third")
        run_trainer(resumed, out / "resume.log", timeout)
        metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]
        report["run"] = {"iterations": [m["iteration"] for m in metrics], "losses": [m["loss"] for m in metrics],
                         "videos_decoded": [m["videos_decoded"] for m in metrics]}
        report["comparison"] = compare(metrics, peak_memory_gb(out / "run"), report["plan"])
    except Exception as e:  # the report says how far it got
        report["error"] = f"{type(e).__name__}: {e}"
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failures"] = failures(report, args.dry_run) + ([report["error"]] if "error" in report else [])
    # A backend that fails (an ABI mismatch, a kernel without the mask) is reported, not fatal:
    # the trainer's own attention is what the run checks.
    report["warnings"] = [f"attention {row['backend']}: {row['error']}" for row in report.get("attention", [])
                          if "error" in row]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    for warning in report["warnings"]:
        logger.warning("%s", warning)
    for problem in report["failures"]:
        logger.error("FAILED: %s", problem)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
