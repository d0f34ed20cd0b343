"""What a run reports while it trains: TensorBoard always, W&B optionally, and the
statistics beyond metrics.jsonl's (advantages, per-reward normalised scores, memory)."""

from __future__ import annotations

import io
import logging
import resource
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import imageio
import torch

from fastvideo_grpo.config import Config, to_dict
from fastvideo_grpo.training.outputs import tile_videos
from fastvideo_grpo.metrics import IterationStats

logger = logging.getLogger(__name__)


def tag(key: str) -> str:
    """metrics.jsonl key -> TensorBoard tag: `time_rollout` -> `time/rollout`, keys that
    already name a section (`reward/color`) stay, the rest go under `train/`."""
    if "/" in key:
        return key
    if key.startswith("time_"):
        return "time/" + key[len("time_"):]
    return "train/" + key


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def record_memory(stats: IterationStats, device: torch.device) -> None:
    """Peak memory of the fullest rank and the mean over ranks. Logged, not written to
    metrics.jsonl: it differs between runs of the same config."""
    peak = peak_memory_gb(device)
    stats.max("memory/peak_gb_max", peak)
    stats.mean("memory/peak_gb_mean", peak)


def gif_bytes(video: torch.Tensor, fps: int) -> bytes:
    """uint8 [T, H, W, 3] -> an endlessly looping GIF."""
    buffer = io.BytesIO()
    imageio.mimwrite(buffer, list(video.numpy()), format="GIF", duration=1000 / fps, loop=0)
    return buffer.getvalue()


def quiet_tensorboard_thread_errors() -> None:
    """TensorBoard's writer thread dies on a write error (a full disk) with a bare traceback;
    the Tracker reports the same error in one line on its next call, so that traceback is
    dropped. Any other thread's exception goes to the previous hook."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


class Tracker:
    """Scalars and videos of the main rank to output_dir/tb and, with logging.wandb, to W&B.
    Off the main rank (`enabled=False`) every call does nothing, so callers need no guard.

    A TensorBoard write that fails (a full disk) turns TensorBoard off with one warning, and
    training goes on: TensorBoard is a view, metrics.jsonl is the record, and a disk that
    stays full stops the run at its next checkpoint or metrics write, with an error naming
    that file."""

    def __init__(self, cfg: Config, out: Path, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.tb = self.wandb = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        quiet_tensorboard_thread_errors()
        self.tb_dir = out / "tb"
        # A resumed run redoes the iterations from `start`: TensorBoard drops the old ones.
        with self.tensorboard_errors():
            self.tb = SummaryWriter(str(self.tb_dir), purge_step=start or None)
        if cfg.logging.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("logging.wandb=true needs the optional wandb package: pip install -e .[wandb]") from e

            self.wandb = wandb.init(project=cfg.logging.wandb_project, name=cfg.logging.run_name or out.name,
                                    dir=str(out), mode=cfg.logging.wandb_mode, config=to_dict(cfg))

    @contextmanager
    def tensorboard_errors(self):
        """An OSError of TensorBoard's (its writer thread's, raised again on the next call)
        turns TensorBoard off with one warning naming its folder."""
        try:
            yield
        except OSError as e:
            logger.warning("TensorBoard stopped: writing to %s failed (%s); training continues without it "
                           "(metrics.jsonl is still written)", self.tb_dir, e)
            tb, self.tb = self.tb, None
            if tb is not None:
                try:
                    tb.close()
                except OSError:
                    pass  # the same error again, already reported

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        values = {tag(k): float(v) for k, v in metrics.items() if k != "iteration" and isinstance(v, (int, float))}
        if self.tb is not None:
            with self.tensorboard_errors():
                for name, value in values.items():
                    self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def videos(self, name: str, videos: torch.Tensor, step: int, fps: int) -> None:
        """uint8 [B, T, H, W, 3] (or one tiled [T, H, W, 3]) as one animated grid."""
        if not self.enabled or (self.tb is None and self.wandb is None):
            return
        grid = tile_videos(videos) if videos.ndim == 5 else videos
        encoded = gif_bytes(grid, fps)
        # SummaryWriter.add_video needs moviepy to encode; a GIF image summary is what it
        # writes, so write that directly.
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=grid.shape[1], width=grid.shape[2], colorspace=3, encoded_image_string=encoded)
        if self.tb is not None:
            with self.tensorboard_errors():
                self.tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Video(io.BytesIO(encoded), format="gif")}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            with self.tensorboard_errors():
                self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class PhaseTimer:
    """Wall-clock seconds per named phase (`time_<name>`); waits for the GPU so phases are not
    blurred. With `accumulate`, repeated phases add up."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, accumulate: bool = False):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        key = f"time_{name}"
        self.seconds[key] = (self.seconds.get(key, 0.0) if accumulate else 0.0) + time.perf_counter() - start


class IterationLog:
    """One log line per iteration where no progress bar is drawn (a batch job's log file:
    tqdm's carriage returns would make one endless line there):
    `iteration 12/300 reward 0.1234 loss 1.2e-03 kl 0.0e+00 12.3 s/it ETA 0:59:02`."""

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total
        self.started = time.perf_counter()

    def line(self, iteration: int, metrics: dict) -> str:
        done = iteration + 1 - self.start
        per_iteration = (time.perf_counter() - self.started) / done
        eta = round(per_iteration * (self.total - iteration - 1))
        return (f"iteration {iteration + 1}/{self.total} reward {metrics['reward_mean']:.4f} loss {metrics['loss']:.2e} "
                f"kl {metrics.get('kl', 0.0):.2e} {per_iteration:.1f} s/it ETA {eta // 3600}:{eta // 60 % 60:02d}:"
                f"{eta % 60:02d}")
