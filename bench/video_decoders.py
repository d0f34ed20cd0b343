"""Video decoders for scoring mp4 files: correctness on odd sizes and speed, against imageio-ffmpeg.

    python bench/video_decoders.py [--repeats 5]
    PYTHONPATH=/tmp/decord2:/tmp/torchcodec python bench/video_decoders.py   # `pip install --target` copies

decord2 (imported as `decord`) and torchcodec are not requirements: install them beside
the venv with `pip install --target DIR --no-deps decord2==3.4.0` (or torchcodec==0.17.0,
which also needs FFmpeg 4-8 shared libraries on the system, e.g. Debian's libavcodec59).

Writes test mp4s with imageio-ffmpeg (H.264; yuv444p where a side is odd, since yuv420p
needs even sides), decodes each with every installed decoder (PyAV, decord or decord2,
both imported as `decord`, torchcodec) and with imageio-ffmpeg, and prints per file and
decoder the max |difference| of the uint8 RGB frames from imageio-ffmpeg's, and the median
time of one open + full decode with its ratio to imageio-ffmpeg's in the same run. A
lossless encode (x264 -qp 0, yuv444p) also gives the RGB -> YUV -> RGB round trip error
against the frames written. A decoder that is missing or fails says why.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import imageio
import numpy as np

# (width, height, frames, pixel format, extra x264 options)
CASES = [
    (33, 17, 8, "yuv444p", []),
    (97, 61, 8, "yuv444p", []),
    (130, 74, 8, "yuv420p", []),
    (128, 64, 8, "yuv420p", []),
    (97, 61, 8, "yuv444p", ["-qp", "0"]),  # lossless: only the colour conversion differs
    (480, 480, 53, "yuv420p", []),  # hunyuan_t2v's sampled videos, for speed
]


def frames(width: int, height: int, count: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: moving colour gradients with a square of noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for t in range(count):
        frame = np.stack([(x * 255 // (width - 1) + 8 * t) % 256, y * 255 // (height - 1),
                          (3 * (x + y + 5 * t)) % 256], axis=-1).astype(np.uint8)
        frame[height // 4:height // 2, width // 4:width // 2] = rng.integers(
            0, 256, (height // 2 - height // 4, width // 2 - width // 4, 3))
        out.append(frame)
    return np.stack(out)


def write(path: Path, video: np.ndarray, pixel_format: str, options: list[str]) -> None:
    imageio.mimwrite(path, list(video), fps=8, macro_block_size=1, pixelformat=pixel_format,
                     output_params=options)


def read_imageio(path: Path) -> np.ndarray:
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack(list(reader.iter_data()))
    finally:
        reader.close()


def read_av(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def read_decord(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def read_torchcodec(path: Path) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    return VideoDecoder(str(path), dimension_order="NHWC")[:].numpy()


def decoders() -> dict[str, Callable[[Path], np.ndarray] | str]:
    """Name (with version) -> reader, or why it cannot run."""
    found: dict[str, Callable[[Path], np.ndarray] | str] = {}
    for module, label, reader in (("av", "PyAV", read_av), ("decord", "decord", read_decord),
                                  ("torchcodec", "torchcodec", read_torchcodec)):
        try:
            imported = __import__(module)
            found[f"{label} {imported.__version__}"] = reader
        except Exception as e:  # torchcodec's error lists every FFmpeg it tried: keep its first line
            found[label] = f"not importable: {type(e).__name__}: {str(e).splitlines()[0]}"
    return found


def median_time(reader: Callable[[Path], np.ndarray], path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reader(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import imageio_ffmpeg

    print(f"imageio-ffmpeg {imageio_ffmpeg.__version__} (ffmpeg {imageio_ffmpeg.get_ffmpeg_version()})")
    candidates = decoders()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height, count, pixel_format, options in CASES:
            name = f"{width}x{height}x{count} {pixel_format}{' lossless' if options else ''}"
            path = Path(tmp) / f"{width}x{height}_{pixel_format}_{len(options)}.mp4"
            written = frames(width, height, count)
            write(path, written, pixel_format, options)
            reference = read_imageio(path)
            base = median_time(read_imageio, path, args.repeats)
            error = np.abs(reference.astype(int) - written)
            rows.append((name, "imageio-ffmpeg", f"vs written: max {error.max()}, mean {error.mean():.2f}",
                         f"{1000 * base:.1f}", "1.00"))
            for label, reader in candidates.items():
                if isinstance(reader, str):
                    rows.append((name, label, reader, "", ""))
                    continue
                try:
                    decoded = reader(path)
                except Exception as e:
                    rows.append((name, label, f"failed: {type(e).__name__}: {str(e).splitlines()[0]}", "", ""))
                    continue
                if decoded.shape != reference.shape or decoded.dtype != np.uint8:
                    rows.append((name, label, f"{decoded.dtype} {decoded.shape} != uint8 {reference.shape}", "", ""))
                    continue
                seconds = median_time(reader, path, args.repeats)
                diff = np.abs(decoded.astype(int) - reference).max()
                rows.append((name, label, str(diff), f"{1000 * seconds:.1f}", f"{seconds / base:.2f}"))
    print("| video | decoder | max abs diff vs imageio-ffmpeg | ms per open + decode | / imageio-ffmpeg |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
