"""vlm_judge and vlm_pairwise against a fake chat-completions server on 127.0.0.1, started by
each test in a thread: it answers from what the request holds (the frames' pixel values),
counts requests and the most in flight at once, and refuses past a bounded number."""

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards import RewardError, build_scorer, check_reward_config
from fastvideo_grpo.rewards.judge_templates import AnswerFormat, builtin_templates, load_template
from fastvideo_grpo.rewards.vlm_judge import VLMJudgeConfig, VLMPairwiseConfig

MAX_REQUESTS = 40


class FakeJudge:
    """POST /v1/chat/completions -> reply(n, body) = (status, answer), n counting requests;
    with byte_delay_s, the whole reply (status line and headers too) one byte at a time."""

    def __init__(self, reply, byte_delay_s: float = 0.0):
        self.reply, self.requests, self.headers = reply, [], []
        self.byte_delay_s = byte_delay_s
        self.active = self.peak = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    n = len(judge.requests)
                    judge.requests.append(body)
                    judge.headers.append(dict(self.headers))
                    judge.active += 1
                    judge.peak = max(judge.peak, judge.active)
                try:
                    if self.path != "/v1/chat/completions" or n >= MAX_REQUESTS:
                        status, answer = 400, f"refused: {self.path}, request {n}"
                    else:
                        status, answer = judge.reply(n, body)
                finally:
                    with judge.lock:
                        judge.active -= 1
                reply = answer if status != 200 else json.dumps(
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})
                try:
                    if judge.byte_delay_s:
                        self.trickle(status, reply.encode())
                        return
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
                    self.send_header("Content-Length", str(len(reply.encode())))
                    self.end_headers()
                    self.wfile.write(reply.encode())
                except OSError:  # the client gave up (a timeout test)
                    pass

            def trickle(self, status, body):
                head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                for byte in head + body:
                    self.wfile.write(bytes([byte]))
                    time.sleep(judge.byte_delay_s)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def judge_server():
    servers = []

    def start(reply, byte_delay_s=0.0):
        servers.append(FakeJudge(reply, byte_delay_s))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def images_of(body) -> list:
    """The request's images, decoded: uint8 [h, w, 3] each."""
    from PIL import Image

    parts = body["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")) for url in urls]


def text_of(body) -> str:
    return body["messages"][0]["content"][-1]["text"]


def level(image) -> int:
    return int(round(float(image.mean())))


def ramp_videos(bases, frames=5, height=10, width=20):
    """Video b's frame t is the solid grey bases[b] + 5 t: uint8 [B, T, H, W, 3]."""
    values = torch.tensor(bases).view(-1, 1) + 5 * torch.arange(frames)
    return values.to(torch.uint8).view(len(bases), frames, 1, 1, 1).expand(-1, -1, height, width, 3).contiguous()


def judge_cfg(server, **section) -> RewardConfig:
    section = {"url": server.url, "model": "judge-model", "prompt_template": "unifiedreward_video",
               "image_format": "png", "backoff_s": 0.01, **section}
    return RewardConfig(weights={"vlm_judge": 1.0}, models={"vlm_judge": section})


def final_score(body) -> str:
    """Final Score = the first frame's grey level / 10, so that vlm_judge = level / 100."""
    return f"visual quality: 3\ntemporal consistency: 2\nFinal Score: {level(images_of(body)[0]) / 10:g}"


PROMPTS = ["a red fox", "a blue whale", "a green frog"]


def test_scores_are_parsed_and_scaled_with_the_frames_and_caption_sent(judge_server, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sekrit")
    server = judge_server(lambda n, body: (200, final_score(body)))
    scorer = build_scorer(judge_cfg(server, frames=3, image_size=16, api_key_env="FAKE_JUDGE_KEY"))
    scores = scorer(ramp_videos([10, 40, 70]), PROMPTS)["vlm_judge"]
    torch.testing.assert_close(scores, torch.tensor([0.1, 0.4, 0.7]))  # Final Score 1, 4, 7 / scale 10
    assert len(server.requests) == 3
    for body in server.requests:
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
        images = images_of(body)
        # Frames 0, 2, 4 of 5 (grey base, +10, +20), 10x20 resized to a longest side of 16.
        assert [image.shape for image in images] == [(8, 16, 3)] * 3
        base = level(images[0])
        assert [level(image) for image in images] == [base, base + 10, base + 20]
        caption = PROMPTS[[10, 40, 70].index(base)]
        assert f"Text Prompt: [{caption}]" in text_of(body) and "Final Score:" in text_of(body)
    assert {h["Authorization"] for h in server.headers} == {"Bearer sekrit"}


def test_jpeg_frames_by_default():
    from fastvideo_grpo.rewards.judge_client import encode_frames

    (url,) = encode_frames(ramp_videos([100], frames=1)[0], 8, 32, "jpeg")
    assert url.startswith("data:image/jpeg;base64,")
    assert level(images_of({"messages": [{"content": [{"type": "image_url", "image_url": {"url": url}}]}]})[0]) == 100


def test_a_slow_answer_times_out_and_is_retried(judge_server):
    def reply(n, body):
        if n == 0:
            time.sleep(1.0)
        return 200, final_score(body)

    server = judge_server(reply)
    scorer = build_scorer(judge_cfg(server, timeout_s=0.3, retries=2))
    assert scorer(ramp_videos([50]), PROMPTS[:1])["vlm_judge"].tolist() == pytest.approx([0.5])
    assert len(server.requests) == 2


def test_a_reply_trickled_byte_by_byte_trips_timeout_s_in_all(judge_server):
    """Each byte comes well within timeout_s; the whole reply would take ~40 s."""
    server = judge_server(lambda n, body: (200, final_score(body)), byte_delay_s=0.2)
    scorer = build_scorer(judge_cfg(server, timeout_s=1.0, retries=1))
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"vlm_judge request for sample 0 \(prompt 'a red fox'\): no answer from "
                                          r"http://127.0.0.1:\d+/v1/chat/completions in 2 tries; the last: "
                                          r"TimeoutException: no whole reply within timeout_s=1s$"):
        scorer(ramp_videos([50]), PROMPTS[:1])
    assert time.monotonic() - start < 2 * 1.0 + 0.01 + 1.5  # two tries, the backoff, slack
    assert len(server.requests) == 2


@pytest.mark.parametrize("answer, score", [("Final Score: 1000000", "1e+06"), ("Final Score: 0", "0"),
                                           ("Final Score: 10.5", "10.5")])
def test_a_score_outside_the_templates_range_is_an_error_showing_request_and_answer(judge_server, answer, score):
    server = judge_server(lambda n, body: (200, answer))
    scorer = build_scorer(judge_cfg(server, retries=0))
    with pytest.raises(RewardError, match=rf"^reward 'vlm_judge' failed on a batch: JudgeError: vlm_judge request for "
                                          rf"sample 0 \(prompt 'a red fox'\): score {re.escape(score)} is outside score_range "
                                          rf"\[1, 10\]; the answer: '{answer}'$"):
        scorer(ramp_videos([50]), PROMPTS[:1])


def test_the_sections_score_range_overrides_the_templates(judge_server):
    server = judge_server(lambda n, body: (200, "Final Score: 90"))
    scorer = build_scorer(judge_cfg(server, score_range=[0, 100], scale=100))
    assert scorer(ramp_videos([50]), PROMPTS[:1])["vlm_judge"].tolist() == pytest.approx([0.9])
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.score_range: \[5.0, 1.0\] is invalid; expected "
                                          r"\[lowest, highest\]"):
        check_reward_config(judge_cfg(server, score_range=[5, 1]))


def test_a_503_is_retried(judge_server):
    server = judge_server(lambda n, body: (503, "overloaded") if n == 0 else (200, final_score(body)))
    scorer = build_scorer(judge_cfg(server, retries=1))
    assert scorer(ramp_videos([20]), PROMPTS[:1])["vlm_judge"].tolist() == pytest.approx([0.2])
    assert len(server.requests) == 2


def test_always_500_fails_after_the_retries(judge_server):
    server = judge_server(lambda n, body: (500, "model crashed"))
    scorer = build_scorer(judge_cfg(server, retries=2))
    with pytest.raises(RewardError, match=r"reward 'vlm_judge' failed on a batch: JudgeError: vlm_judge request for "
                                          r"sample 0 \(prompt 'a red fox'\): no answer from http://127.0.0.1:\d+/v1/"
                                          r"chat/completions in 3 tries; the last: HTTP 500: 'model crashed'"):
        scorer(ramp_videos([20]), PROMPTS[:1])
    assert len(server.requests) == 3


def test_a_malformed_answer_is_an_error_showing_it(judge_server):
    server = judge_server(lambda n, body: (200, final_score(body) if level(images_of(body)[0]) == 10
                                           else "A lovely whale, I'd say eight."))
    scorer = build_scorer(judge_cfg(server))
    with pytest.raises(RewardError, match=r"vlm_judge request for sample 1 \(prompt 'a blue whale'\): no score in "
                                          r"the answer by score_regex .*Final Score.*; the answer: "
                                          r"\"A lovely whale, I'd say eight.\""):
        scorer(ramp_videos([10, 40]), PROMPTS[:2])
    assert sum("a blue whale" in text_of(body) for body in server.requests) == 1  # not retried


def test_requests_in_flight_are_bounded_by_max_concurrency(judge_server):
    def reply(n, body):
        time.sleep(0.15)
        return 200, final_score(body)

    server = judge_server(reply)
    scorer = build_scorer(judge_cfg(server, max_concurrency=3))
    bases = [10, 20, 30, 40, 50, 60, 70, 80]
    scores = scorer(ramp_videos(bases, frames=1), [f"prompt {b}" for b in bases])["vlm_judge"]
    torch.testing.assert_close(scores, torch.tensor(bases) / 100)  # in the samples' order
    assert len(server.requests) == 8
    assert server.peak == 3


def test_pairwise_win_rates_from_the_judge(judge_server):
    def reply(n, body):
        images = images_of(body)
        first, second = level(images[0]), level(images[len(images) // 2])
        return 200, ("Video 1 is better." if first > second else "Video 2 is better." if first < second
                     else "Both videos are equally good.")

    server = judge_server(reply)
    cfg = RewardConfig(weights={"vlm_pairwise": 1.0}, group_size=3, models={"vlm_pairwise": {
        "url": server.url, "model": "judge-model", "frames": 2, "image_format": "png"}})
    check_reward_config(cfg)
    prompts = ["a red fox", "a blue whale", "a red fox", "a blue whale", "a red fox", "a blue whale"]
    # Fox: 10, 30, 30 -> 0 loses twice (0); 1 and 2 beat 0 and tie (0.75). Whale: 50, 20, 40 -> 1, 0, 0.5.
    rates = build_scorer(cfg)(ramp_videos([10, 50, 30, 20, 30, 40]), prompts)["vlm_pairwise"]
    assert rates.tolist() == [0.0, 1.0, 0.75, 0.0, 0.75, 0.5]
    assert len(server.requests) == 6  # all 3 pairs of each group
    for body in server.requests:
        assert len(images_of(body)) == 4  # 2 frames of each video, the first video's first
        assert "Text Caption: [a red fox]" in text_of(body) or "Text Caption: [a blue whale]" in text_of(body)


EXAMPLES = {  # template -> answers in its documented format, with their rewards
    "unifiedreward_video": [("visual quality: 4\ntemporal consistency: 4\ndynamic degree: 3\ntext-to-video "
                             "alignment: 1\nfactual consistency: 2\nFinal Score: 6", 0.6)],
    "unifiedreward2_video": [("Alignment Score (1-5): 2.4036\nPhysics Score (1-5): 3.0987\n"
                              "Style Score (1-5): 3.3889", (2.4036 + 3.0987 + 3.3889) / 3 / 5)],
    "videoscore2": [("<think>visual quality: 1 at first sight, ...</think>\nvisual quality: 4;\ntext-to-video "
                     "alignment: 3,\nphysical/common-sense consistency: 5", 0.8)],
    "unifiedreward_video_pairwise": [("Both videos are equally good.", 0.5), ("Video 2 is better.", 0.0),
                                     ("Video 1 is better, as its fox is sharper.", 1.0)],
    "unifiedreward_think_video_pairwise": [
        ("<think>1. Semantic consistency:\n    Video 1 (9/10) - ...\nVideo 2 is better at first</think>\n"
         "<answer>Video 1 is better</answer>", 1.0), ("<think>...</think>\n<answer>Video 2 is better</answer>", 0.0)],
}


def test_every_built_in_template_reads_its_documented_answer():
    assert sorted(EXAMPLES) == builtin_templates()
    for name, examples in EXAMPLES.items():
        template = load_template(name, "t")
        for answer, expected in examples:
            if template.mode == "pairwise":
                section = VLMPairwiseConfig(url="u", model="m", prompt_template=name)
                assert AnswerFormat.of(section, template).choice(answer, name) == expected, (name, answer)
            else:
                section = VLMJudgeConfig(url="u", model="m", prompt_template=name)
                value = AnswerFormat.of(section, template).number(answer, name) / template.scale
                assert value == pytest.approx(expected), name


def test_a_template_file_read_by_a_json_field(judge_server, tmp_path):
    (tmp_path / "judge.yaml").write_text('mode: pointwise\njson_field: scores.overall\nscale: 4\n'
                                         'prompt: "Rate {prompt} as JSON."\n')
    server = judge_server(lambda n, body: (200, 'Sure.\n```json\n{"scores": {"overall": 3, "motion": 1}}\n```'))
    scorer = build_scorer(judge_cfg(server, prompt_template=str(tmp_path / "judge.yaml"), scale=2))
    assert scorer(ramp_videos([10]), ["a cat"])["vlm_judge"].tolist() == [1.5]  # the section's scale wins
    assert text_of(server.requests[0]) == "Rate a cat as JSON."


def test_judge_sections_are_checked():
    def check(**section):
        check_reward_config(RewardConfig(weights={"vlm_judge": 1.0},
                                         models={"vlm_judge": {"url": "http://h/v1", "model": "m", **section}}))

    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.prompt_template: 'unified' is invalid; expected "
                                          r"a template file's path or a built-in template: \['unifiedreward2_video'"):
        check(prompt_template="unified")
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.json_field: 'score' is invalid; expected empty "
                                          r"when score_regex is set"):
        check(score_regex="(\\d+)", json_field="score")
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.score_regex: 'Score: \\\\d' has no group"):
        check(score_regex="Score: \\d")
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.max_concurrency: 0 is invalid; expected >= 1$"):
        check(max_concurrency=0)
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.url: '' is invalid; expected a value"):
        check_reward_config(RewardConfig(weights={"vlm_judge": 1.0}, models={"vlm_judge": {"model": "m"}}))
    with pytest.raises(ConfigError, match=r"^reward.models.vlm_judge.prompt_template: "
                                          r"'unifiedreward_video_pairwise' is a pairwise template; vlm_judge needs a "
                                          r"pointwise one$"):
        build_scorer(RewardConfig(weights={"vlm_judge": 1.0}, models={"vlm_judge": {
            "url": "http://h/v1", "model": "m", "prompt_template": "unifiedreward_video_pairwise"}}))
