"""CLI: the before/after picture of an RL run on the shapes world.

    python -m fastvideo_grpo.shapes.before_after RUN

Stacks RUN/eval/before/grid.png (the pretrained model) over RUN/eval/after/grid.png (the
trained one) into RUN/before_after.png, beside RUN/reward_curve.png: the same held-out
prompts from the same initial noise (the evaluation seeds each sample by its prompt index),
the middle frame of each video, magnified SCALE times. Logs both runs' held-out accuracies.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import imageio
import numpy as np

from fastvideo_grpo.shapes.detect import SCORES

logger = logging.getLogger(__name__)
# Gray rows between the two grids, and the nearest-neighbour magnification of the picture
# (a 64x64 video is small on a screen).
GAP = 4
SCALE = 4


def before_after(run: Path) -> dict[str, tuple[float, float]]:
    """Writes run/before_after.png; returns {score: (before mean, after mean)}."""
    grids, means = [], []
    for name in ("before", "after"):
        folder = run / "eval" / name
        for file in ("grid.png", "summary.json"):
            if not (folder / file).is_file():
                raise FileNotFoundError(f"{folder / file} does not exist; expected the held-out evaluation "
                                        f"'{name}' of {run} (train_scripts/train_shapes_cpu.sh writes it)")
        grids.append(imageio.imread(folder / "grid.png"))
        means.append(json.loads((folder / "summary.json").read_text())["rewards"])
    if grids[0].shape != grids[1].shape:
        raise ValueError(f"{run}/eval: the before and after grids differ in shape ({grids[0].shape} vs "
                         f"{grids[1].shape}); evaluate both with the same --grid")
    gap = np.full((GAP, *grids[0].shape[1:]), 128, dtype=grids[0].dtype)
    picture = np.concatenate([grids[0], gap, grids[1]])
    imageio.imwrite(run / "before_after.png", picture.repeat(SCALE, axis=0).repeat(SCALE, axis=1))
    return {s: (means[0][s]["mean"], means[1][s]["mean"]) for s in SCORES if s in means[0] and s in means[1]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write(__doc__)
        return 2
    for score, (before, after) in before_after(Path(args[0])).items():
        logger.info("%s: %.3f -> %.3f (%+.3f)", score, before, after, after - before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
