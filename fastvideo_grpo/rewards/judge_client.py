"""Requests to a VLM judge's chat-completions endpoint: its frames as images, its text, the
answer back; on a thread pool, retried on transient failures."""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable

import torch

from fastvideo_grpo.config import ConfigError
from fastvideo_grpo.rewards.judge_templates import JudgeConfig, JudgeError, shown


logger = logging.getLogger(__name__)


def encode_frames(video: torch.Tensor, count: int, size: int, image_format: str) -> list[str]:
    """uint8 [T, H, W, 3] -> data URLs of `count` frames evenly spaced from first to last
    (all T if fewer), each resized (bicubic) so that its longest side is `size` (0: as is)."""
    from PIL import Image

    indices = torch.linspace(0, video.shape[0] - 1, min(count, video.shape[0])).round().long()
    urls = []
    for frame in video[indices].numpy():
        image = Image.fromarray(frame)
        if size and max(image.size) != size:
            scale = size / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        if image_format == "jpeg":
            image.save(buffer, format="JPEG", quality=95)
        else:
            image.save(buffer, format="PNG")
        urls.append(f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode()}")
    return urls


class JudgeClient:
    """Chat-completions requests to one endpoint from a pool of max_concurrency threads,
    retried on transient failures."""

    def __init__(self, section: JudgeConfig):
        import httpx

        url = section.url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        headers = {}
        if section.api_key_env:
            api_key = os.environ.get(section.api_key_env, "")
            if not api_key:
                raise ConfigError(f"{section.KEY}.api_key_env: the environment variable {section.api_key_env!r} "
                                  "is not set; expected the API key there")
            headers["Authorization"] = f"Bearer {api_key}"
        self.section, self.headers = section, headers
        self.ssl = httpx.create_ssl_context()  # made once: a client per try is cheap then
        self.transient = httpx.TransportError  # connection errors and timeouts
        self.pool = ThreadPoolExecutor(section.max_concurrency, thread_name_prefix="vlm-judge")

    def ask(self, images: list[str], text: str, what: str) -> str:
        """The answer to one user message of `images` (data URLs) then `text`."""
        s = self.section
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        payload = {"model": s.model, "messages": [{"role": "user", "content": content + [{"type": "text", "text": text}]}],
                   "max_tokens": s.max_tokens, "temperature": s.temperature}
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._post(payload)
            except self.transient as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return _answer_text(response, what)
                failure = f"HTTP {response.status_code}: {shown(response.text)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeError(f"{what}: {self.endpoint} answered {failure}")
            logger.warning("%s: try %d of %d failed: %s", what, attempt + 1, s.retries + 1, failure)
        raise JudgeError(f"{what}: no answer from {self.endpoint} in {s.retries + 1} tries; the last: {failure}")

    def _post(self, payload: dict):
        """One try, given timeout_s in all. httpx's timeout bounds each wait for a byte, which
        a server trickling its reply never trips; so the try runs on its own thread with its
        own client, which is closed at the deadline (its thread then ends at its next byte
        or read timeout) while this one raises."""
        import httpx

        timeout_s = self.section.timeout_s
        client = httpx.Client(timeout=timeout_s, headers=self.headers, verify=self.ssl)
        outcome = {}

        def post() -> None:
            try:
                outcome["response"] = client.post(self.endpoint, json=payload)
            except BaseException as e:  # handed to the caller
                outcome["error"] = e

        thread = threading.Thread(target=post, daemon=True, name="vlm-judge-try")
        thread.start()
        thread.join(timeout_s)
        client.close()
        if thread.is_alive():
            raise httpx.TimeoutException(f"no whole reply within timeout_s={timeout_s:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """[fn(item) for item in items] on the pool; the first error is raised (requests not
        yet started are dropped)."""
        futures = [self.pool.submit(fn, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            raise failed.exception()
        return [future.result() for future in futures]


def _answer_text(response, what: str) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
        if isinstance(content, list):  # a list of parts
            content = "".join(part.get("text", "") for part in content)
        if isinstance(content, str):
            return content
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    raise JudgeError(f"{what}: the reply is not a chat completion with a message; the reply: {shown(response.text)}")
