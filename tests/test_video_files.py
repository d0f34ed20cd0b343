"""Scoring existing video files: read_video, evaluate --videos with captions, path requests
to a reward server. Rewards are the test plugins (test_echo: the mean pixel), no model."""

import json
import subprocess

import imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from conftest import REWARD_PLUGINS, ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.cli.evaluate import evaluate_videos, main
from fastvideo_grpo.rewards import RewardError
from fastvideo_grpo.rewards.process import start_reward_process
from fastvideo_grpo.rewards.scorers import ServiceScorer
from fastvideo_grpo.video_io import VideoReadError, read_video
from helpers import read_jsonl

CONFIG = ROOT / "assets/configs/tiny_t2v.yaml"
ECHO = ["reward.weights={test_echo: 1.0}", f"reward.plugins=[{REWARD_PLUGINS}]"]
# x264 lossless (-qp 0) in yuv444p: only the RGB -> YUV -> RGB round trip differs from the
# frames written, by at most 2 (bench/video_decoders.py); decoders agree with imageio exactly.
LOSSLESS_TOLERANCE = 2


def frames(width, height, count, seed=0):
    """Smooth uint8 [T, H, W, 3] frames, different per seed."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([(x * 7 + 9 * t + seed * 40) % 256, (y * 5 + seed * 20) % 256, (x + y + 3 * t) % 256],
                              axis=-1).astype(np.uint8) for t in range(count)])


def write(path, video, lossless=True):
    """An H.264 mp4 at 8 fps; lossless yuv444p takes odd sides."""
    options = dict(pixelformat="yuv444p", output_params=["-qp", "0"]) if lossless else dict(pixelformat="yuv420p")
    imageio.mimwrite(path, list(video), fps=8, macro_block_size=1, **options)
    return path


def imageio_frames(path):
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack(list(reader.iter_data()))
    finally:
        reader.close()


@pytest.fixture
def clips(tmp_path):
    """Three videos of different sizes and lengths, odd sides among them, and their frames."""
    folder = tmp_path / "clips"
    folder.mkdir()
    written = {"b.mp4": frames(97, 61, 3, seed=1), "a.mp4": frames(130, 74, 2, seed=2), "c.mp4": frames(33, 17, 4, seed=3)}
    for name, video in written.items():
        write(folder / name, video)
    return folder, written


def test_read_video_equals_what_was_written_on_odd_sizes(tmp_path):
    for width, height, lossless in ((33, 17, True), (97, 61, True), (130, 74, False), (128, 64, False)):
        video = frames(width, height, 3)
        path = write(tmp_path / f"{width}x{height}.mp4", video, lossless)
        read = read_video(path)
        assert read.dtype == torch.uint8 and tuple(read.shape) == (3, height, width, 3)
        assert np.array_equal(read.numpy(), imageio_frames(path))  # the same decode, bit for bit
        if lossless:
            assert np.abs(read.numpy().astype(int) - video).max() <= LOSSLESS_TOLERANCE


def test_bad_files_are_named(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoReadError, match=r"text\.mp4: not a readable video"):
        read_video(tmp_path / "text.mp4")
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4: no such video file"):
        read_video(tmp_path / "missing.mp4")
    # A moov-first mp4 cut before its frames: a video stream with zero frames.
    whole = tmp_path / "whole.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=red:s=16x16:d=1:r=8", "-c:v", "libx264", "-movflags", "+faststart", str(whole)], check=True)
    content = whole.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(content[:content.index(b"mdat") + 4])
    with pytest.raises(VideoReadError, match=r"empty\.mp4: the video stream has zero frames"):
        read_video(tmp_path / "empty.mp4")


def test_videos_cli_scores_files_of_different_sizes(clips, tmp_path):
    """Through a reward process that reads the files itself (--send-paths)."""
    folder, written = clips
    (tmp_path / "captions.txt").write_text("caption of a\ncaption of b\ncaption of c\n")
    main(["--config", str(CONFIG), "--videos", str(folder), "--captions", str(tmp_path / "captions.txt"),
          "--send-paths", "--output-dir", str(tmp_path / "eval"), *ECHO, "reward.mode=process"])
    rows = read_jsonl(tmp_path / "eval" / "clips" / "scores.jsonl")
    assert [(r["prompt_index"], r["file"], r["prompt"]) for r in rows] == [
        (i, str(folder / f"{n}.mp4"), f"caption of {n}") for i, n in enumerate("abc")]
    for row in rows:
        mean = written[row["file"].rsplit("/", 1)[1]].astype(np.float64).mean()
        assert row["test_echo"] == pytest.approx(read_video(row["file"]).float().mean().item(), rel=1e-6)
        assert abs(row["test_echo"] - mean) <= LOSSLESS_TOLERANCE
    summary = json.loads((tmp_path / "eval" / "clips" / "summary.json").read_text())
    assert summary["rewards"]["test_echo"]["n"] == 3 and summary["num_videos"] == 3
    assert summary["rewards"]["test_echo"]["mean"] == pytest.approx(np.mean([r["test_echo"] for r in rows]))


def test_caption_maps_and_mismatches(clips, tmp_path):
    folder, _ = clips
    cfg = load_config(CONFIG, ECHO)
    glob = str(folder / "[ab].mp4")
    (tmp_path / "map.json").write_text(json.dumps({"b.mp4": "bee", "a.mp4": "ay", "zzz.mp4": "unused"}))
    (tmp_path / "map.jsonl").write_text('{"video": "clips/a.mp4", "caption": "ay"}\n{"file": "b.mp4", "prompt": "bee"}\n')
    for captions in ("map.json", "map.jsonl"):
        evaluate_videos(cfg, tmp_path / "eval" / captions, glob, str(tmp_path / captions))
        assert [r["prompt"] for r in read_jsonl(tmp_path / "eval" / captions / "scores.jsonl")] == ["ay", "bee"]

    (tmp_path / "two.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match=r"two\.txt: 2 captions for 3 videos"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "two.txt"))
    (tmp_path / "partial.json").write_text(json.dumps({"a.mp4": "ay", "c.mp4": "see"}))
    with pytest.raises(ValueError, match=r"partial\.json: no caption for .*clips/b\.mp4"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "partial.json"))
    (tmp_path / "bad.jsonl").write_text('{"file": "a.mp4"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: .*expected an object with one of"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "bad.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"file": "a.mp4", "caption": "ay"}\n\n{"file": "b.mp4", "caption": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 3: not valid JSON"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "broken.jsonl"))
    (tmp_path / "blank.txt").write_text("a\n  \nc\n")
    with pytest.raises(ValueError, match=r"blank\.txt, line 2: empty caption \(of .*clips/b\.mp4\)"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "blank.txt"))
    (tmp_path / "badcaption.json").write_text(json.dumps({"a.mp4": "ay", "b.mp4": "bee", "c.mp4": 3}))
    with pytest.raises(ValueError, match=r"badcaption\.json, key 'c\.mp4': caption 3; expected a non-empty string"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "badcaption.json"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\nb\nc\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "latin1.txt"))
    pairwise = load_config(CONFIG, ["reward.weights={vlm_pairwise: 1.0}",
                                    "reward.models.vlm_pairwise={url: 'http://127.0.0.1:9/v1', model: judge}"])
    with pytest.raises(ValueError, match=r"reward.weights: \['vlm_pairwise'\] compare the samples of a group"):
        evaluate_videos(pairwise, tmp_path / "x", str(folder), str(tmp_path / "map.json"))
    (folder / "d.mp4").write_text("not a video")
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(VideoReadError, match=r"clips/d\.mp4: not a readable video"):
        evaluate_videos(cfg, tmp_path / "x", str(folder), str(tmp_path / "four.txt"))


def test_remote_server_reads_paths(clips, tmp_path):
    folder, _ = clips
    cfg = load_config(CONFIG, ECHO)
    process, address = start_reward_process(cfg.reward)
    try:
        remote = load_config(CONFIG, [*ECHO, "reward.mode=remote", f"reward.address={address}"])
        (tmp_path / "captions.txt").write_text("a\nb\nc\n")
        by_path = evaluate_videos(remote, tmp_path / "paths", str(folder), str(tmp_path / "captions.txt"),
                                  send_paths=True)
        by_frames = evaluate_videos(remote, tmp_path / "frames", str(folder), str(tmp_path / "captions.txt"))
        assert by_path["rewards"] == by_frames["rewards"]
        assert read_jsonl(tmp_path / "paths" / "scores.jsonl") == read_jsonl(tmp_path / "frames" / "scores.jsonl")

        scorer = ServiceScorer(remote.reward, address)
        (tmp_path / "text.mp4").write_text("not a video")
        with pytest.raises(RewardError, match=r"request 0: could not read the video: .*text\.mp4: not a readable"):
            scorer.result(scorer.submit_paths([str(tmp_path / "text.mp4")], ["x"]))
        # The connection survives a bad file: frames and paths still score on it.
        ids = scorer.submit_paths([str(folder / "a.mp4")], ["a"])
        assert scorer.result(ids)["test_echo"].item() == pytest.approx(read_video(folder / "a.mp4").float().mean().item())
        scorer.close()
    finally:
        process.kill()
        process.join()
