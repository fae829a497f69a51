"""Dialogue LLM client: the official `openai` client against any OpenAI-compatible endpoint.

Outages: when a request still fails at the connection level after the openai client's own retries
(refused, reset, timed out, 502/503/504), the client does not give up on the dialogue at once: it
probes the endpoint (GET /models) with exponential backoff and sends the request again as soon as
the endpoint answers, for at most `reliability.outage_budget_s` per request. When the budget is
spent it raises a transient LLMError marked `outage`, and from then on fails every request after one
quick probe (no request is sent to a dead endpoint), so the build drains its queue into transient
rejects in seconds and stops; the next run retries exactly those dialogues.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pipeline.failures import TRANSIENT, classify
from pipeline.io.request_cache import RequestCache
from pipeline.recipe import LLMConfig


class LLMError(Exception):
    """A request that failed after the client's own retries (transport, HTTP status, timeout).

    `transient`: the infrastructure failed (retry on resume); `outage`: the endpoint stayed
    unreachable past the outage budget.
    """

    def __init__(self, message: str, transient: bool = False, outage: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.outage = outage


def api_key(cfg: LLMConfig) -> str:
    """The API key from the environment variable the recipe names (a placeholder for local servers)."""
    if not cfg.api_key_env:
        return "not-needed"
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise LLMError(f"llm.api_key_env: the environment variable {cfg.api_key_env} is not set")
    return key


class ChatClient:
    """Sends chat completions; knows how each server flavour takes sampling options and schemas."""

    def __init__(
        self,
        cfg: LLMConfig,
        base_url: str,
        cache: RequestCache | None = None,
        outage_budget_s: float = 0.0,
        probe_max_interval_s: float = 30.0,
    ) -> None:
        import openai

        self.cfg = cfg
        self.cache = cache
        self.outage_budget_s = outage_budget_s
        self.probe_max_interval_s = probe_max_interval_s
        self.endpoint_down = False  # set when an outage outlasted the budget, cleared when a probe answers
        self.probes = 0
        self.cache_hits = 0
        self.requests_sent = 0  # answered by the server (not replayed from the cache)
        self.completion_tokens = 0
        self._count_lock = threading.Lock()
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key(cfg), timeout=cfg.timeout_s, max_retries=cfg.request_retries
        )

    def chat(
        self,
        messages: list[dict[str, str]],
        seed: int,
        max_tokens: int,
        schema: dict[str, Any] | None = None,
    ) -> str:
        """One chat completion; returns the message text ('' if the server sent none).

        With a request cache, a payload answered before is replayed and not sent again.
        """
        payload: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        extra = dict(self.cfg.extra_body)
        if self.cfg.backend == "embedded" or self.cfg.response_format == "json_object_schema":
            extra["repeat_penalty"] = self.cfg.repeat_penalty
        if extra:
            payload["extra_body"] = extra
        if schema is not None:
            if self.cfg.response_format == "json_schema":
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "dialogue", "schema": schema, "strict": True},
                }
            else:
                payload["response_format"] = {"type": "json_object", "schema": schema}
        if self.cache is not None:
            cached = self.cache.get(payload)
            if cached is not None:
                self.cache_hits += 1
                return cached
        text = self._send(payload)
        if self.cache is not None:
            self.cache.put(payload, text)
        return text

    def _send(self, payload: dict[str, Any]) -> str:
        # The openai client retries 429 (honouring Retry-After), 5xx, timeouts and resets itself;
        # a 200 whose body is not JSON (truncated, empty) it does not, so that is retried here.
        if self.endpoint_down and not self._endpoint_answers():
            raise LLMError(self._outage_message("the endpoint is still down"), transient=True, outage=True)
        deadline = None  # of this request's outage wait, from its first connection-level failure
        bad_bodies = 0
        while True:
            try:
                resp = self._client.chat.completions.create(**payload)
            except self._openai.OpenAIError as err:
                if self.outage_budget_s > 0 and self._is_outage(err):
                    deadline = deadline or time.monotonic() + self.outage_budget_s
                    if self._wait_for_endpoint(deadline):
                        continue
                    self.endpoint_down = True
                    raise LLMError(self._outage_message(f"{type(err).__name__}: {err}"), transient=True,
                                   outage=True) from None  # fmt: skip
                transient = classify(err) == TRANSIENT
                raise LLMError(f"{type(err).__name__}: {err}"[:300], transient=transient) from None
            except ValueError as err:  # json.JSONDecodeError from a broken body
                if bad_bodies >= self.cfg.request_retries:
                    message = f"the server sent a response body that is not JSON: {err}"[:300]
                    raise LLMError(message, transient=True) from None
                time.sleep(min(0.5 * 2**bad_bodies, 8.0))
                bad_bodies += 1
                continue
            self.endpoint_down = False
            with self._count_lock:
                self.requests_sent += 1
                self.completion_tokens += resp.usage.completion_tokens if resp.usage else 0
            if not resp.choices:
                return ""
            return resp.choices[0].message.content or ""

    def _is_outage(self, err: Exception) -> bool:
        """A connection-level failure (the endpoint is unreachable), not an answer from it."""
        if isinstance(err, self._openai.APIConnectionError):  # refused, reset, timed out
            return True
        return isinstance(err, self._openai.APIStatusError) and err.status_code in (502, 503, 504)

    def _endpoint_answers(self) -> bool:
        """One quick probe: GET /models (an auth error also means the server is up)."""
        self.probes += 1
        try:
            self._client.with_options(timeout=5.0, max_retries=0).models.list()
        except (self._openai.AuthenticationError, self._openai.PermissionDeniedError):
            return True
        except self._openai.OpenAIError:
            return False
        self.endpoint_down = False
        return True

    def _wait_for_endpoint(self, deadline: float) -> bool:
        """Probe with exponential backoff until the endpoint answers (True) or `deadline` passes (False)."""
        delay = 0.5
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left, self.probe_max_interval_s))
            if self._endpoint_answers():
                return True
            delay *= 2

    def _outage_message(self, cause: str) -> str:
        return (f"the LLM endpoint stayed unreachable for reliability.outage_budget_s ({self.outage_budget_s:g} s); "
                f"{cause}"[:300])  # fmt: skip
