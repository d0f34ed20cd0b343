from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="fastvideo-grpo",
    version="0.1.0",
    description="GRPO (DanceGRPO) reinforcement learning for video and image generators",
    packages=find_packages(include=["fastvideo_grpo", "fastvideo_grpo.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
        "gpu": ["flash-attn"],
        # Imported only when logging.wandb is true.
        "wandb": ["wandb==0.31.0"],
    },
    # Each is also `python -m fastvideo_grpo.<name>`.
    entry_points={
        "console_scripts": [
            "fastvideo-grpo-train=fastvideo_grpo.cli.train:command",
            "fastvideo-grpo-evaluate=fastvideo_grpo.cli.evaluate:command",
            "fastvideo-grpo-export=fastvideo_grpo.cli.export:command",
            "fastvideo-grpo-plan=fastvideo_grpo.cli.plan:command",
            "fastvideo-grpo-plot=fastvideo_grpo.cli.plot:command",
            "fastvideo-grpo-ablate=fastvideo_grpo.cli.ablate:command",
            "fastvideo-grpo-preprocess=fastvideo_grpo.cli.preprocess:command",
        ],
    },
)
