"""Dialogue LLM client: the official `openai` client against any OpenAI-compatible endpoint."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from pipeline.io.request_cache import RequestCache
from pipeline.recipe import LLMConfig


class LLMError(Exception):
    """A request that failed after the client's own retries (transport, HTTP status, timeout)."""


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

    def __init__(self, cfg: LLMConfig, base_url: str, cache: RequestCache | None = None) -> None:
        import openai

        self.cfg = cfg
        self.cache = cache
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
        for attempt in itertools.count():
            try:
                resp = self._client.chat.completions.create(**payload)
            except self._openai.OpenAIError as err:
                raise LLMError(f"{type(err).__name__}: {err}"[:300]) from None
            except ValueError as err:  # json.JSONDecodeError from a broken body
                if attempt >= self.cfg.request_retries:
                    raise LLMError(f"the server sent a response body that is not JSON: {err}"[:300]) from None
                time.sleep(min(0.5 * 2**attempt, 8.0))
                continue
            with self._count_lock:
                self.requests_sent += 1
                self.completion_tokens += resp.usage.completion_tokens if resp.usage else 0
            if not resp.choices:
                return ""
            return resp.choices[0].message.content or ""
        raise AssertionError("itertools.count() does not end")
