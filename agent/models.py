"""Model specs -> LangChain chat models: "offline" (built in, deterministic) or "openai:<model-name>".

`OPENAI_BASE_URL` points the OpenAI client at any compatible server (vLLM, Ollama, llama.cpp).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.errors import ModelError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

SPECS = "'offline' or 'openai:<model-name>' (e.g. openai:gpt-4o-mini)"
# A hung endpoint must not hang a run forever; retries cover passing faults.
REQUEST_TIMEOUT_S = 120


def check_spec(spec: str) -> str:
    """The spec, normalized, or a ModelError naming the accepted forms."""
    spec = (spec or "").strip()
    provider, _, name = spec.partition(":")
    if spec == "offline" or (provider == "openai" and name.strip()):
        return spec
    raise ModelError(f"unknown model '{spec}': use {SPECS}")


def model_identity(spec: str) -> str:
    """What names a model in the reply cache: the same spec on another endpoint may answer differently."""
    spec = check_spec(spec)
    if spec == "offline":
        return spec
    return f"{spec}@{os.environ.get('OPENAI_BASE_URL') or 'https://api.openai.com/v1'}"


def _check_base_url(url: str) -> None:
    """One clear line for an OPENAI_BASE_URL that is no http(s) URL: the client retried it as a network fault,
    or raised ValueError (a bad port, an unclosed IPv6 bracket). Its password, if any, is not repeated."""
    import re
    from urllib.parse import urlparse

    try:
        parts = urlparse(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        ok = parts.scheme in ("http", "https") and bool(parts.netloc)
    except ValueError:
        ok = False
    if not ok:
        shown = re.sub(r"//[^/@]*@", "//***@", url)
        raise ModelError(f"OPENAI_BASE_URL '{shown}' is not an http(s) URL (e.g. http://localhost:8000/v1)")


def make_model(spec: str) -> BaseChatModel:
    spec = check_spec(spec)
    if spec == "offline":
        from agent.offline import OfflineChatModel

        return OfflineChatModel()
    if not os.environ.get("OPENAI_API_KEY"):
        raise ModelError(
            f"OPENAI_API_KEY is not set, so '{spec}' cannot be used: set it, "
            "or run with --model offline (no key, no network)"
        )
    if base_url := os.environ.get("OPENAI_BASE_URL", ""):
        _check_base_url(base_url)
    from langchain_openai import ChatOpenAI

    # max_retries=0: the graph retries itself (graphs/ask.py), so that each retry shows in the progress.
    return ChatOpenAI(model=spec.partition(":")[2].strip(), temperature=0, timeout=REQUEST_TIMEOUT_S, max_retries=0)
