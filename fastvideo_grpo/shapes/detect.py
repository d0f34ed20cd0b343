"""A deterministic detector for the shapes world, and the GenEval-style scores it gives a
video against its caption.

Per frame: pixels brighter than the background are foreground, each coloured by the palette
colour nearest in chromaticity (rgb / max channel, so a dim or blurred edge keeps its hue);
4-connected components of the foreground of at least MIN_AREA pixels are objects, each with
its majority colour, a shape from its geometry (an upward triangle holds most of its area in
the lower half of its box; a square fills its box, a circle about pi/4 of it) and a
centroid. Across frames: the count is the median of the frame counts, colour and shape are
right when every object of most frames has them, the position is where the group's
centroid sits on average, and the motion is the group centroid's displacement from the
first frames to the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvideo_grpo.shapes.world import COLORS, Scene, parse_caption

SCORES = ("shapes_color", "shapes_shape", "shapes_count", "shapes_position", "shapes_motion", "shapes_all")
PALETTE = list(COLORS)
# Foreground: the brightest channel at least this (the background's is 22, colours' >= 220).
BRIGHTNESS = 90
# Smaller components are noise (the smallest object, a clipped triangle, has ~40 pixels at 64x64).
MIN_AREA_FRACTION = 8 / 64**2
# Shape: the lower half holds at least this much more of the area than the upper (a triangle
# ~0.5, symmetric shapes ~0); a square fills at least this fraction of its box (circle ~0.75).
TRIANGLE_ASYMMETRY = 0.25
SQUARE_FILL = 0.88
# Position: a group's mean centroid within this fraction of the frame of its centre is at the
# center (anchors sit 0.28 from it); motion: a displacement under this fraction is still (a
# moving group's is >= 0.12 over the frames compared).
CENTER_RADIUS = 0.14
STILL_DISPLACEMENT = 0.05
# An object's shape is read from its pixels at least this fraction of its brightest.
HALF_MAX = 0.5
# Frames averaged at each end of the video for the displacement.
END_FRAMES = 3


@dataclass
class Detection:
    """One frame's objects: colour and shape names, centroids as fractions (x, y) of the frame."""

    colors: list[str]
    shapes: list[str]
    centroids: list[tuple[float, float]]


def color_labels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> long [N, H, W]: 0 background, else 1 + the nearest palette index."""
    rgb = frames.float()
    peak = rgb.amax(dim=-1)  # [N, H, W]
    chroma = rgb / peak.clamp(min=1.0)[..., None]
    palette = torch.tensor([COLORS[c] for c in PALETTE], dtype=torch.float32)
    palette = palette / palette.amax(dim=-1, keepdim=True)
    nearest = torch.cdist(chroma.flatten(0, 2), palette).argmin(dim=-1).view(peak.shape)
    return torch.where(peak >= BRIGHTNESS, nearest + 1, torch.zeros_like(nearest))


def components(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, H, W] -> long [N, H, W]: 4-connected components, each pixel labelled by the
    largest flat index in its component (0 outside the mask). Label propagation: each pass
    takes the maximum over the 4-neighbourhood, until nothing changes."""
    n, h, w = mask.shape
    index = torch.arange(1, h * w + 1).view(1, h, w).expand(n, h, w)
    labels = torch.where(mask, index, torch.zeros_like(index))
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        neighbours = torch.stack([labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                                  padded[:, 1:-1, 2:]]).amax(dim=0)
        updated = torch.where(mask, neighbours, labels)
        if torch.equal(updated, labels):
            return labels
        labels = updated


def classify_shape(ys: torch.Tensor, xs: torch.Tensor) -> str:
    """Pixel coordinates of one object -> circle, square or triangle."""
    top, bottom = ys.min().item(), ys.max().item()
    left, right = xs.min().item(), xs.max().item()
    area = ys.numel()
    middle = (top + bottom) / 2
    asymmetry = ((ys > middle).sum() - (ys < middle).sum()).item() / area
    if asymmetry >= TRIANGLE_ASYMMETRY:
        return "triangle"
    fill = area / ((bottom - top + 1) * (right - left + 1))
    return "square" if fill >= SQUARE_FILL else "circle"


def detect(video: torch.Tensor) -> list[Detection]:
    """uint8 [T, H, W, 3] -> the objects of each frame."""
    t, h, w = video.shape[:3]
    colors = color_labels(video)
    peak = video.amax(dim=-1).float()  # [T, H, W]
    labels = components(colors > 0)
    min_area = max(1, round(MIN_AREA_FRACTION * h * w))
    frames = []
    for f in range(t):
        found = Detection([], [], [])
        ids, areas = labels[f].unique(return_counts=True)
        for label, area in zip(ids.tolist(), areas.tolist()):
            if label == 0 or area < min_area:
                continue
            ys, xs = torch.nonzero(labels[f] == label, as_tuple=True)
            found.colors.append(PALETTE[colors[f, ys, xs].mode().values.item() - 1])
            # The geometry of the half-maximum region: a blurred edge widens the foreground
            # (and rounds a square's corners) but keeps its half-maximum contour in place.
            level = peak[f, ys, xs]
            solid = level >= HALF_MAX * level.max()
            found.shapes.append(classify_shape(ys[solid], xs[solid]))
            found.centroids.append(((xs.float().mean().item() + 0.5) / w, (ys.float().mean().item() + 0.5) / h))
        frames.append(found)
    return frames


def position_of(x: float, y: float) -> str:
    dx, dy = x - 0.5, y - 0.5
    if max(abs(dx), abs(dy)) < CENTER_RADIUS:
        return "center"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"


def direction_of(dx: float, dy: float) -> str | None:
    """None: still."""
    if max(abs(dx), abs(dy)) < STILL_DISPLACEMENT:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def majority(flags: list[bool]) -> float:
    return float(sum(flags) * 2 > len(flags))


def score_scene(frames: list[Detection], scene: Scene) -> dict[str, float]:
    """Each attribute 1.0 if right else 0.0; an attribute the caption does not name (the
    position of 'moving left') is right. No object in any frame: all 0."""
    seen = [f for f in frames if f.colors]
    if not seen:
        return dict.fromkeys(SCORES, 0.0)
    counts = sorted(len(f.colors) for f in frames)
    centers = [tuple(sum(c[i] for c in f.centroids) / len(f.centroids) for i in (0, 1)) for f in seen]
    mean_x = sum(c[0] for c in centers) / len(centers)
    mean_y = sum(c[1] for c in centers) / len(centers)
    k = min(END_FRAMES, max(1, len(centers) // 2))
    dx = (sum(c[0] for c in centers[-k:]) - sum(c[0] for c in centers[:k])) / k
    dy = (sum(c[1] for c in centers[-k:]) - sum(c[1] for c in centers[:k])) / k
    scores = {
        "shapes_color": majority([all(c == scene.color for c in f.colors) for f in frames]),
        "shapes_shape": majority([all(s == scene.shape for s in f.shapes) for f in frames]),
        "shapes_count": float(counts[len(counts) // 2] == scene.count),
        "shapes_position": float(scene.position is None or position_of(mean_x, mean_y) == scene.position),
        # A single frame with objects has no displacement: only 'still' can be right.
        "shapes_motion": float(direction_of(dx, dy) == scene.direction if len(centers) > 1 else
                               scene.direction is None),
    }
    scores["shapes_all"] = float(all(scores.values()))
    return scores


def shapes_scores(videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """uint8 videos [B, T, H, W, 3] and their captions -> the six scores, each float [B].
    Every caption is parsed first, so one that is in none of the forms fails the batch
    before any video is scored."""
    scenes = [parse_caption(p) for p in prompts]
    rows = [score_scene(detect(video), scene) for video, scene in zip(videos, scenes)]
    return {name: torch.tensor([row[name] for row in rows], dtype=torch.float32) for name in SCORES}

