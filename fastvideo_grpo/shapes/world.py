"""The shapes world: seeded text-to-video scenes of 1-3 coloured shapes on a dark background.

A scene is one kind of object (a count of shapes of one colour and one kind) at a position,
moving in a direction or still. Its caption takes one of three forms, and every caption in
those forms parses back to the scene it names:

    {count} {colour} {shape}[s] moving {direction}
    {count} {colour} {shape}[s] at the {position}, still
    {count} {colour} {shape}[s] at the {position} moving {direction}

with count "a", "two" or "three" (the plural shape for two and three). Videos are
SIZE x SIZE pixels, NUM_FRAMES frames at FPS frames per second; a moving group travels
about 9 pixels (a seventh of the frame) from the first frame to the last.

Some colour-shape-count triples are held out (`HELD_OUT`): pretraining never sees them, so
RL and evaluation on them measure generalisation to new combinations of known attributes.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

SIZE = 64
NUM_FRAMES = 9
FPS = 8

COUNTS = {"a": 1, "two": 2, "three": 3}
COUNT_WORDS = {n: word for word, n in COUNTS.items()}
# RGB of each colour: saturated and far apart in chromaticity (rgb / max channel), which is
# what the detector compares, so a dimmer or blurred object keeps its colour.
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (50, 80, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUND = (14, 14, 22)

# A group's centre, as a fraction of the frame (x right, y down), per position.
ANCHORS = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22), "bottom": (0.5, 0.78),
           "center": (0.5, 0.5)}
STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Pixels per frame of a moving group, object half-sizes and the gap between objects.
SPEED = (0.9, 1.3)
RADIUS = (5.5, 7.5)
GAP = 5.0
JITTER = 2.0

# Held out of pretraining: six colour-shape-count triples, one per colour, chosen so that
# every colour-shape, colour-count and shape-count pair is still seen in pretraining.
HELD_OUT = frozenset({("red", "triangle", 2), ("green", "circle", 3), ("blue", "square", 1),
                      ("yellow", "square", 3), ("purple", "triangle", 1), ("white", "circle", 2)})

CAPTION = re.compile(
    r"(?P<count>a|two|three) (?P<color>\w+) (?P<shape>[a-z]+?)(?P<plural>s?)"
    r"(?: at the (?P<position>\w+))?(?:(?P<still>, still)| moving (?P<direction>\w+))")
FORMS = ("'{count} {colour} {shape}[s] moving {direction}'", "'{count} {colour} {shape}[s] at the {position}, still'",
         "'{count} {colour} {shape}[s] at the {position} moving {direction}'")


@dataclass(frozen=True)
class Scene:
    count: int
    color: str
    shape: str
    # None: the caption names no position (the video's is drawn at random).
    position: str | None
    # None: still.
    direction: str | None

    def __post_init__(self):
        if self.count not in COUNT_WORDS or self.color not in COLORS or self.shape not in SHAPES:
            raise ValueError(f"not a shapes scene: {self}")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"position {self.position!r}: expected one of {POSITIONS}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r}: expected one of {DIRECTIONS}")
        if self.position is None and self.direction is None:
            raise ValueError("a scene without a position must move: no caption form names neither")

    @property
    def triple(self) -> tuple[str, str, int]:
        return self.color, self.shape, self.count

    def caption(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        head = f"{COUNT_WORDS[self.count]} {self.color} {noun}"
        if self.direction is None:
            return f"{head} at the {self.position}, still"
        if self.position is None:
            return f"{head} moving {self.direction}"
        return f"{head} at the {self.position} moving {self.direction}"


def parse_caption(caption: str) -> Scene:
    """The scene a caption names; ValueError, naming the caption and the forms, otherwise."""
    match = CAPTION.fullmatch(caption.strip())
    problem = None
    if match is None:
        problem = "it is in none of the forms"
    else:
        g = match.groupdict()
        count = COUNTS[g["count"]]
        if g["color"] not in COLORS:
            problem = f"colour {g['color']!r} is not one of {tuple(COLORS)}"
        elif g["shape"] not in SHAPES:
            problem = f"shape {g['shape'] + g['plural']!r} is not one of {SHAPES} (plural for two and three)"
        elif bool(g["plural"]) != (count > 1):
            problem = f"{g['count']!r} takes the {'plural' if count > 1 else 'singular'} shape"
        elif g["still"] and g["position"] is None:
            problem = "a still group needs 'at the {position}'"
        elif g["position"] is not None and g["position"] not in POSITIONS:
            problem = f"position {g['position']!r} is not one of {POSITIONS}"
        elif g["direction"] is not None and g["direction"] not in DIRECTIONS:
            problem = f"direction {g['direction']!r} is not one of {DIRECTIONS}"
    if problem:
        raise ValueError(f"shapes caption {caption!r}: {problem}; expected one of the forms {', '.join(FORMS)} "
                         f"with count a/two/three")
    return Scene(count, g["color"], g["shape"], g["position"], g["direction"])


def all_scenes() -> list[Scene]:
    """Every captionable scene, in a fixed order."""
    scenes = []
    for count, color, shape in itertools.product(COUNT_WORDS, COLORS, SHAPES):
        for position, direction in itertools.product((None, *POSITIONS), (None, *DIRECTIONS)):
            if position is not None or direction is not None:
                scenes.append(Scene(count, color, shape, position, direction))
    return scenes


def split_scenes(held_out: bool) -> list[Scene]:
    """The pretraining scenes (held_out False) or those of the held-out triples."""
    return [s for s in all_scenes() if (s.triple in HELD_OUT) == held_out]


@dataclass(frozen=True)
class Layout:
    """Where a scene's objects are: centres [count, 2] (pixels, x and y) at frame 0, the
    group's per-frame step (pixels, x and y) and the objects' half-size."""

    centers: np.ndarray
    step: np.ndarray
    radius: float


def layout(scene: Scene, rng: np.random.Generator, size: int = SIZE, num_frames: int = NUM_FRAMES) -> Layout:
    scale = size / SIZE
    position = scene.position or POSITIONS[rng.integers(len(POSITIONS))]
    radius = rng.uniform(*RADIUS) * scale
    step = np.zeros(2)
    if scene.direction is not None:
        step = np.array(STEPS[scene.direction], dtype=float) * rng.uniform(*SPEED) * scale
    anchor = np.array(ANCHORS[position]) * size + rng.uniform(-JITTER, JITTER, 2) * scale
    # Objects side by side across the frame's long free axis: a column at the left and right.
    axis = np.array([0.0, 1.0]) if position in ("left", "right") else np.array([1.0, 0.0])
    offsets = (np.arange(scene.count) - (scene.count - 1) / 2) * (2 * radius + GAP * scale)
    # The path is centred on the anchor, so the mean position over the video is the anchor.
    start = anchor - step * (num_frames - 1) / 2
    return Layout(start + offsets[:, None] * axis, step, radius)


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """bool [size, size]: pixels whose centres lie inside the shape."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.9 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # An upward triangle: apex at (cx, cy - r), base from cx - r to cx + r at cy + r.
    return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


def render(scene: Scene, seed: int, size: int = SIZE, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """uint8 [num_frames, size, size, 3], the same for the same scene and seed."""
    rng = np.random.default_rng(seed)
    where = layout(scene, rng, size, num_frames)
    video = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for t in range(num_frames):
        for cx, cy in where.centers + where.step * t:
            video[t][shape_mask(scene.shape, cx, cy, where.radius, size)] = COLORS[scene.color]
    return video


def sample_scenes(scenes: list[Scene], count: int, seed: int) -> list[Scene]:
    """`count` scenes drawn uniformly with replacement, seeded."""
    rng = np.random.default_rng(seed)
    return [scenes[i] for i in rng.integers(len(scenes), size=count)]


def prompt_sets(size: int, seed: int = 0) -> dict[str, list[str]]:
    """Captions naming a position and a motion, so that every attribute counts: "heldout"
    and "rl", `size` each and disjoint, from the held-out triples; "seen", `size`, from the
    pretraining ones. assets/prompts/shapes_{heldout,rl,seen}.txt are prompt_sets(48)."""
    rng = np.random.default_rng(seed)
    named = [s for s in all_scenes() if s.position is not None]
    held = [named[i].caption() for i in rng.permutation(len(named)) if named[i].triple in HELD_OUT]
    seen = [named[i].caption() for i in rng.permutation(len(named)) if named[i].triple not in HELD_OUT]
    return {"heldout": held[:size], "rl": held[size:2 * size], "seen": seen[:size]}
