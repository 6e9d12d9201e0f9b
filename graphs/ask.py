"""One structured model call, the way every node makes it: from the reply cache when the exact request was
made before, within the thread's budget, with visible retries of passing faults, and its usage and cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel

# The status codes worth another try: timeouts, conflicts, rate limits, server faults.
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Faults without a status: the connection broke or timed out (openai and httpx name them so).
RETRYABLE_NAMES = {"APITimeoutError", "APIConnectionError", "TimeoutException", "ConnectError", "ReadTimeout",
                   "RemoteProtocolError", "ConnectionError", "TimeoutError"}
MAX_DELAY_S = 60.0
# Until a thread has made a call, a reply is assumed this long when checking the budget before a call;
# after that, the thread's own average. Structured replies here (a plan, a result, a verdict) are short.
DEFAULT_OUTPUT_ESTIMATE = 64


class ReplyCache(Protocol):
    """Where model replies are kept by request (the savers provide one per database); sync or async."""

    def get(self, key: str) -> dict | None: ...
    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None: ...
    async def aget(self, key: str) -> dict | None: ...
    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None: ...


class ModelOutputError(RuntimeError):
    """The model's reply did not fit the requested structure."""


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter for passing faults; a server's Retry-After wins when it gives one."""

    max_retries: int = 3
    base_delay: float = 1.0

    def delay(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None if `exc` is not worth a retry."""
        if attempt > self.max_retries or not retryable(exc):
            return None
        told = retry_after(exc)
        if told is not None:
            return min(told, MAX_DELAY_S)
        backoff = min(self.base_delay * 2 ** (attempt - 1), MAX_DELAY_S)
        return backoff * (0.5 + random.random())  # "full jitter" halves thundering herds after an outage


def retryable(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in RETRYABLE_STATUS
    return any(cls.__name__ in RETRYABLE_NAMES for cls in type(exc).__mro__)


def retry_after(exc: BaseException) -> float | None:
    """Retry-After from the error's response: seconds, milliseconds (retry-after-ms) or an HTTP date."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@lru_cache(maxsize=64)
def _schema_json(schema: type[BaseModel]) -> str:
    return json.dumps(schema.model_json_schema(), sort_keys=True)


def request_key(model_id: str, method: str, schema: type[BaseModel], messages: list) -> str:
    """The identity of a request: same model, same structure asked for, same messages -> same key."""
    request = json.dumps({"model": model_id, "method": method, "messages": messages}, sort_keys=True)
    return hashlib.sha256(f"{_schema_json(schema)}\n{request}".encode()).hexdigest()


def _estimate_tokens(messages: list) -> int:
    return sum(len(str(content)) for _, content in messages) // 4 + 1


def _usage_of(raw: Any, price: Price) -> dict:
    meta = getattr(raw, "usage_metadata", None) or {}
    tokens_in, tokens_out = meta.get("input_tokens", 0), meta.get("output_tokens", 0)
    return {"llm_calls": 1, "input_tokens": tokens_in, "output_tokens": tokens_out,
            "cost_usd": price.cost(tokens_in, tokens_out)}


def _parsed(schema: type[BaseModel], out: dict) -> BaseModel:
    if out.get("parsing_error") is not None or out.get("parsed") is None:
        raise ModelOutputError(f"the model's reply is not a valid {schema.__name__}: {out.get('parsing_error')}")
    return out["parsed"]


def _configurable(config: RunnableConfig) -> dict:
    return config.get("configurable", {})


def _emit(event: dict) -> None:
    """Progress for whoever streams the run (stream_mode "custom"); nothing when nobody listens."""
    from langgraph.config import get_stream_writer

    try:
        get_stream_writer()(event)
    except RuntimeError:  # called outside a run
        pass


class Ask:
    """Makes one structured call for a node. Configurable keys read per run: `fresh` (skip the cache
    lookup) and `budget` (US dollars the thread may have spent in all, or None).
    """

    def __init__(self, model: BaseChatModel, model_id: str, method: str, cache: ReplyCache | None,
                 retry: Retry, price: Price):
        self.model, self.model_id, self.method, self.cache = model, model_id, method, cache
        self.retry, self.price = retry, price
        self._structured: dict = {}

    def _runnable(self, schema):
        if schema not in self._structured:
            self._structured[schema] = self.model.with_structured_output(schema, method=self.method,
                                                                         include_raw=True)
        return self._structured[schema]

    def _cached(self, config) -> bool:
        return self.cache is not None and not _configurable(config).get("fresh")

    def _check_budget(self, messages: list, usage: dict, config: RunnableConfig) -> None:
        """Stop before a call that would take the thread over its budget: a LangGraph interrupt, so the
        run pauses cleanly (status budget_exceeded) and resumes when a larger budget is given."""
        from langgraph.types import interrupt

        while True:
            budget = _configurable(config).get("budget")
            calls = usage.get("llm_calls", 0)
            per_call = usage.get("output_tokens", 0) / calls if calls else DEFAULT_OUTPUT_ESTIMATE
            estimate = self.price.cost(_estimate_tokens(messages), int(per_call))
            # The branch's spend, and (set by agent.api for a budgeted run) what the thread's other branches spent.
            spent = usage.get("cost_usd", 0.0) + _configurable(config).get("spent_elsewhere", 0.0)
            if budget is None or spent + estimate <= budget:
                return
            # On a resumed run interrupt() returns, and the loop checks again against the budget now in force.
            interrupt({"reason": "budget_exceeded", "spent_usd": spent, "budget_usd": budget,
                       "next_call_usd": estimate})

    @staticmethod
    def _hit(schema, hit: dict) -> tuple[BaseModel, dict]:
        return schema.model_validate(hit["reply"]), {"cached_calls": 1}

    def _retry_or_raise(self, attempt: int, exc: Exception, node: str) -> float:
        wait = self.retry.delay(attempt, exc)
        if wait is None:
            raise exc
        _emit({"kind": "retry", "node": node, "attempt": attempt, "max_retries": self.retry.max_retries,
               "wait_s": round(wait, 2), "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"})
        return wait

    def __call__(self, node: str, schema, messages, usage: dict, config) -> tuple[BaseModel, dict]:
        key = request_key(self.model_id, self.method, schema, messages) if self.cache is not None else ""
        hit = self.cache.get(key) if self._cached(config) else None
        if hit:
            return self._hit(schema, hit)
        self._check_budget(messages, usage, config)
        attempt = 0
        while True:
            try:
                out = self._runnable(schema).invoke(messages, config)
                break
            except Exception as exc:
                attempt += 1
                time.sleep(self._retry_or_raise(attempt, exc, node))
        reply, spent = _parsed(schema, out), _usage_of(out["raw"], self.price)
        if self.cache is not None:
            self.cache.put(key, self.model_id, _configurable(config).get("thread_id"),
                           {"reply": reply.model_dump(), "usage": spent})
        return reply, spent

    async def acall(self, node: str, schema, messages, usage: dict, config) -> tuple[BaseModel, dict]:
        key = request_key(self.model_id, self.method, schema, messages) if self.cache is not None else ""
        hit = await self.cache.aget(key) if self._cached(config) else None
        if hit:
            return self._hit(schema, hit)
        self._check_budget(messages, usage, config)
        attempt = 0
        while True:
            try:
                out = await self._runnable(schema).ainvoke(messages, config)
                break
            except Exception as exc:
                attempt += 1
                await asyncio.sleep(self._retry_or_raise(attempt, exc, node))
        reply, spent = _parsed(schema, out), _usage_of(out["raw"], self.price)
        if self.cache is not None:
            await self.cache.aput(key, self.model_id, _configurable(config).get("thread_id"),
                                  {"reply": reply.model_dump(), "usage": spent})
        return reply, spent
