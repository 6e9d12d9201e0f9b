"""Settings come from flags > AGENT_* environment > agent.toml or [tool.agent] > defaults."""

import pytest

from agent.config import ConfigError, load_settings


def test_defaults(tmp_path):
    settings = load_settings(directory=tmp_path, environ={})
    assert settings.db == "sqlite:///agent.db" and settings.model is None
    assert settings.structured_output == "json_schema"


def test_each_source_overrides_the_one_below(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.agent]\ndb = "sqlite:///pyproject.db"\nmax_revisions = 1\n')
    assert load_settings(directory=tmp_path, environ={}).db == "sqlite:///pyproject.db"
    (tmp_path / "agent.toml").write_text('db = "sqlite:///toml.db"\nmodel = "offline"\n')
    settings = load_settings(directory=tmp_path, environ={})
    assert (settings.db, settings.model, settings.max_revisions) == ("sqlite:///toml.db", "offline", 2)
    env = {"AGENT_DB_URL": "sqlite:///env.db", "AGENT_MAX_REVISIONS": "3"}
    settings = load_settings(directory=tmp_path, environ=env)
    assert (settings.db, settings.max_revisions) == ("sqlite:///env.db", 3)
    settings = load_settings({"db": "memory://", "model": None}, directory=tmp_path, environ=env)
    assert (settings.db, settings.model) == ("memory://", "offline")


@pytest.mark.parametrize("environ, message", [
    ({"AGENT_MAX_REVISIONS": "many"}, "environment: max_revisions"),
    ({"AGENT_STRUCTURED_OUTPUT": "xml"}, "environment: structured_output"),
])
def test_bad_environment_names_its_source(tmp_path, environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(directory=tmp_path, environ=environ)


def test_pyproject_without_agent_table_is_fine_and_a_bad_table_is_not(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_settings(directory=tmp_path, environ={}).db == "sqlite:///agent.db"
    (tmp_path / "pyproject.toml").write_text('[tool.agent]\nwat = 1\n')
    with pytest.raises(ConfigError, match="pyproject.toml \\[tool.agent\\]: unknown setting 'wat'"):
        load_settings(directory=tmp_path, environ={})
