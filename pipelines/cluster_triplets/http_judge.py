"""An OpenAI-compatible chat/completions endpoint as judge (OpenAI, vLLM, llama.cpp, TGI, Ollama, ...).

Each prompt is one user message; the reply's text goes to `parse_choice`. Standard library only (urllib and a
thread pool): requests run `concurrency` at a time; a connection error, a timeout, HTTP 429 or a 5xx answer is
retried up to `max_retries` times with exponential back-off (backoff × 2^attempt seconds, at most max_backoff);
any other HTTP error (400, 401, 404, ...) is not retried. When one question fails for good, no new request is
started, the requests in flight finish, and JudgeError carries the replies already received (`partial`) so the
caller caches them. The API key is read from the environment variable named by `api_key_env` and sent as a
bearer token; when that variable is unset no Authorization header is sent (local servers need none).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed

from pipelines.cluster_triplets.judges import JudgeError
from pipelines.cluster_triplets.sampling import Triplet

RETRY_STATUS = {408, 409, 429}  # plus every 5xx


class _Retryable(Exception):
    pass


class HTTPJudge:
    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0, timeout: float = 60.0,
                 max_tokens: int = 5, batch_size: int | None = None):
        if not url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-url {url!r}: expected an http:// or https:// URL")
        if concurrency < 1 or max_retries < 0 or backoff < 0 or timeout <= 0:
            raise JudgeError("HTTP judge: need concurrency ≥ 1, max_retries ≥ 0, backoff ≥ 0 and timeout > 0")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.concurrency, self.max_retries = model, concurrency, max_retries
        self.backoff, self.max_backoff, self.timeout, self.max_tokens = backoff, max_backoff, timeout, max_tokens
        self.api_key = os.environ.get(api_key_env) or None
        self.batch_size = batch_size or 16 * concurrency
        self.name = f"http:{self.endpoint}:{model}"
        self._stop = threading.Event()

    def _post(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace")
            if err.code in RETRY_STATUS or err.code >= 500:
                raise _Retryable(f"HTTP {err.code} {detail}") from None
            raise JudgeError(f"POST {self.endpoint}: HTTP {err.code} {detail} (not retried)") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"{type(reason).__name__}: {reason}") from None
        try:
            return json.loads(payload)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise JudgeError(f"POST {self.endpoint}: not a chat/completions response: {payload[:200]!r}") from None

    def _ask(self, prompt: str) -> str:
        """One question with bounded retries; a final failure stops every other question of the batch."""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise JudgeError("stopped: another question failed")
            try:
                return self._post(prompt)
            except _Retryable as err:
                last = err
                if attempt < self.max_retries:
                    self._stop.wait(min(self.backoff * 2 ** attempt, self.max_backoff))
            except JudgeError:
                self._stop.set()
                raise
        self._stop.set()
        raise JudgeError(f"POST {self.endpoint}: {last} after {self.max_retries + 1} attempts "
                         f"(timeout {self.timeout:g}s each)")

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]:
        self._stop.clear()
        replies: dict[int, str] = {}
        failure: JudgeError | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._ask, p): i for i, p in enumerate(prompts)}
            for future in as_completed(futures):
                try:
                    replies[futures[future]] = future.result()
                except CancelledError:
                    continue
                except JudgeError as err:
                    if failure is None or str(failure).startswith("stopped:"):
                        failure = err
                        for f in futures:
                            f.cancel()
        if failure is not None:
            raise JudgeError(f"{failure} — {len(replies)} of {len(prompts)} answers of this batch kept",
                             partial=replies)
        return [replies[i] for i in range(len(prompts))]
