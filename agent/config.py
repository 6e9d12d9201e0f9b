"""One Settings object, from flags > environment (AGENT_*) > agent.toml or [tool.agent] in pyproject.toml > defaults.

Files are read from the working directory; agent.toml wins over pyproject.toml when both exist.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ConfigError

DEFAULT_DB = "sqlite:///agent.db"
DEFAULT_MODEL = "offline"
ENV = {
    "AGENT_DB_URL": "db",
    "AGENT_MODEL": "model",
    "AGENT_STRUCTURED_OUTPUT": "structured_output",
    "AGENT_MAX_REVISIONS": "max_revisions",
}


class Settings(BaseModel):
    """What a run needs to know besides the question. `model=None` means: the thread's own, else offline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = DEFAULT_DB
    model: str | None = None
    structured_output: Literal["json_schema", "function_calling"] = "json_schema"
    max_revisions: int = Field(default=2, ge=0, le=10)


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
