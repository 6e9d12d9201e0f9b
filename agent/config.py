"""One Settings object, from flags > environment (AGENT_*) > agent.toml or [tool.agent] in pyproject.toml > defaults.

Files are read from the working directory; agent.toml wins over pyproject.toml when both exist.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from agent.errors import ConfigError

DEFAULT_DB = "sqlite:///agent.db"
DEFAULT_MODEL = "offline"
ENV = {
    "AGENT_DB_URL": "db",
    "AGENT_MODEL": "model",
    "AGENT_STRUCTURED_OUTPUT": "structured_output",
    "AGENT_MAX_REVISIONS": "max_revisions",
    "AGENT_MAX_RETRIES": "max_retries",
    "AGENT_RETRY_DELAY": "retry_delay",
    "AGENT_BUDGET": "budget",
    "AGENT_DURABILITY": "durability",
    "AGENT_MAX_PENDING_CHECKPOINTS": "max_pending_checkpoints",
    "AGENT_COMPRESSION": "compression",
    "AGENT_PG_PREPARE_THRESHOLD": "pg_prepare_threshold",
    "AGENT_PG_POOL_SIZE": "pg_pool_size",
}

# US dollars per million tokens (OpenAI's list prices for standard requests). A [prices] table in
# agent.toml adds models or overrides these; the offline model costs nothing.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "offline": {"input": 0.0, "output": 0.0},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "o3-mini": {"input": 1.10, "output": 4.40},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.00, "output": 8.00},
    "gpt-3.5-turbo": {"input": 0.50, "output": 1.50},
}


class Retention(BaseModel):
    """[retention] in agent.toml: applied to a thread after each run on it (see `prune`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: int = Field(default=10, ge=1)
    older_than: str | None = None
    keep_completed: bool = False

    @field_validator("older_than")
    @classmethod
    def _age(cls, value: str | None) -> str | None:
        """Checked when the file is read, not after a run has stored its answer (as it was)."""
        from agent.errors import BadInput
        from agent.lifecycle import parse_age

        try:
            value is None or parse_age(value, flag="")
        except BadInput as exc:
            raise PydanticCustomError("age", str(exc)) from None
        return value


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Settings(BaseModel):
    """What a run needs to know besides the question. `model=None` means: the thread's own, else offline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = DEFAULT_DB
    model: str | None = None
    structured_output: Literal["json_schema", "function_calling"] = "json_schema"
    max_revisions: int = Field(default=2, ge=0, le=10)
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_delay: float = Field(default=1.0, ge=0, le=60)
    budget: float | None = Field(default=None, gt=0)
    # When a step's checkpoint is written: "sync" before the next step starts; "async" while it runs, with at
    # most max_pending_checkpoints made but unsaved (a crash loses those; their replies are in the reply cache).
    durability: Literal["sync", "async"] = "sync"
    max_pending_checkpoints: int = Field(default=2, ge=1, le=1000)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    retention: Retention | None = None
    # Compression of newly stored values (see savers.options); the encryption key is never a setting here:
    # it comes from AGENT_ENCRYPTION_KEY only, so it stays out of files and of printed settings.
    compression: Literal["none", "zstd", "gzip"] = "none"
    # Postgres connections (see savers.options): "none" turns server-side prepared statements off, which
    # pgbouncer in transaction mode and other transaction poolers need; pool size per open database.
    pg_prepare_threshold: int | None = 0
    pg_pool_size: int = 10

    @field_validator("pg_prepare_threshold", "pg_pool_size", mode="before")
    @classmethod
    def _postgres_option(cls, value: Any, info) -> Any:
        from savers.errors import StorageError
        from savers.options import parse_pool_size, parse_prepare_threshold

        parse = parse_prepare_threshold if info.field_name == "pg_prepare_threshold" else parse_pool_size
        try:
            return parse(value, info.field_name)
        except StorageError as exc:  # pydantic names the setting and its source; keep the value and the advice
            raise PydanticCustomError("postgres_option", f"{value!r} is not " + str(exc).split(" is not ", 1)[1])

    def price_of(self, spec: str) -> ModelPrice | None:
        """The price of a model spec ("openai:gpt-4o-mini" or just the name), or None when unknown."""
        name = spec.partition(":")[2] or spec
        for key in (spec, name):
            if key in self.prices:
                return self.prices[key]
            if key in DEFAULT_PRICES:
                return ModelPrice(**DEFAULT_PRICES[key])
        return None


def _describe(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    if first["type"] == "extra_forbidden":
        known = ", ".join(Settings.model_fields)
        return f"{source}: unknown setting '{where}' (known: {known})"
    return f"{source}: {where}: {first['msg']}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def file_settings(directory: Path) -> tuple[dict[str, Any], str]:
    """Settings from agent.toml, else [tool.agent] in pyproject.toml, with the name of the source."""
    agent_toml = directory / "agent.toml"
    if agent_toml.is_file():
        return _read_toml(agent_toml), "agent.toml"
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("agent", {})
        if not isinstance(section, dict):
            raise ConfigError("pyproject.toml: [tool.agent] must be a table")
        return section, "pyproject.toml [tool.agent]"
    return {}, ""


def load_settings(
    flags: dict[str, Any] | None = None,
    *,
    directory: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge every source; `flags` holds only what the user actually passed (None values are ignored)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    layers = [
        file_settings(directory or Path.cwd()),
        ({ENV[k]: v for k, v in environ.items() if k in ENV and v != ""}, "environment"),
        ({k: v for k, v in (flags or {}).items() if v is not None}, "command line"),
    ]
    for values, source in layers:
        try:
            Settings(**{**merged, **values})  # validate each layer on its own, to name the culprit
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None
        merged.update(values)
    return Settings(**merged)
