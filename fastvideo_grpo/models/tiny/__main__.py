"""CLI: python -m fastvideo_grpo.models.tiny FAMILY OUT_DIR [--seed N]

Writes a complete diffusers-format folder of FAMILY's tiny model (or of a further tiny
folder a family names, `ModelFamily.tiny_folders`: wan_moe) and prints its path."""

from __future__ import annotations

import argparse
import sys

from fastvideo_grpo.file_modes import honour_umask
from fastvideo_grpo.models.registry import FAMILIES


def main(argv: list[str] | None = None) -> int:
    writers = {name: family.write_tiny_folder for name, family in FAMILIES.items()
               if family.write_tiny_folder is not None}
    for family in FAMILIES.values():
        writers.update(family.tiny_folders)
    parser = argparse.ArgumentParser(prog="python -m fastvideo_grpo.models.tiny",
                                     description="Write a diffusers-format folder with tiny random weights")
    parser.add_argument("family", choices=list(writers))
    parser.add_argument("output", help="the folder to write")
    parser.add_argument("--seed", type=int, default=0, help="the weights' seed (model.init_seed of the tiny model)")
    args = parser.parse_args(argv)
    folder = writers[args.family](args.output, args.seed)
    honour_umask(folder)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
