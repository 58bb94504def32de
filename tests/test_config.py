"""Configuration precedence and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pnode.config import load_config
from p2pnode.errors import ConfigError


def _env(tmp: Path, **more: str) -> dict[str, str]:
    return {"SPORE_CONFIG_DIR": str(tmp), "SPORE_STATE_DIR": str(tmp / "state"), **more}


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(_env(tmp_path))
    assert (cfg.api_host, cfg.api_port) == ("127.0.0.1", 7150)
    assert cfg.loopback_only and cfg.state_dir == tmp_path / "state"


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[api]\nport = 8000\n[node]\nlog_level = 'debug'\n")
    assert load_config(_env(tmp_path)).api_port == 8000
    assert load_config(_env(tmp_path, SPORE_PORT="8001")).api_port == 8001
    cfg = load_config(_env(tmp_path, SPORE_PORT="8001"), {"api_port": 8002})
    assert cfg.api_port == 8002 and cfg.log_level == "debug"


def test_systemd_state_directory(tmp_path: Path) -> None:
    cfg = load_config({"STATE_DIRECTORY": "/var/lib/sporemind", "SPORE_CONFIG_DIR": str(tmp_path)})
    assert cfg.state_dir == Path("/var/lib/sporemind")


def test_corrupt_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[api]\nport = 8000\nhost = \n")
    with pytest.raises(ConfigError) as err:
        load_config(_env(tmp_path))
    assert str(path) in str(err.value) and "line 3" in str(err.value)


@pytest.mark.parametrize(("text", "needle"), [
    ("[api]\nport = 'x'\n", "api.port"),
    ("[api]\nprt = 1\n", "unknown setting api.prt"),
    ("port = 1\n", "[section]"),
    ("[api]\nport = 70000\n", "0..65535"),
    ("[node]\nlog_level = 'loud'\n", "log level"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(_env(tmp_path))
    assert needle in str(err.value)


def test_bad_env_var_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SPORE_PORT"):
        load_config(_env(tmp_path, SPORE_PORT="seven"))


def test_non_loopback_host(tmp_path: Path) -> None:
    cfg = load_config(_env(tmp_path, SPORE_HOST="0.0.0.0"))
    assert not cfg.loopback_only and cfg.api_url.startswith("http://127.0.0.1:")
