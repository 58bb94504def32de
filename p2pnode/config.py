"""Configuration: defaults < config.toml < SPORE_* environment < flags.

Parsed once (by the CLI) into a frozen `Config` and passed down; nothing
else in the project reads the environment.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from p2pnode.errors import ConfigError

APP = "sporemind"
CONFIG_FILE = "config.toml"
DEFAULT_API_PORT = 7150
LOG_LEVELS = ("debug", "info", "warning", "error")

# toml section.key -> Config field, and the SPORE_* variable for each field.
_TOML_KEYS = {
    ("api", "host"): "api_host",
    ("api", "port"): "api_port",
    ("node", "log_level"): "log_level",
    ("node", "encoder_threads"): "encoder_threads",
    ("node", "max_text_bytes"): "max_text_bytes",
    ("node", "state_dir"): "state_dir",
    ("dht", "host"): "dht_host",
    ("dht", "port"): "dht_port",
    ("dht", "peers"): "peers",
    ("dht", "republish_s"): "republish_s",
    ("dht", "max_contacts_per_ip"): "max_contacts_per_ip",
    ("dht", "rate_per_s"): "dht_rate_per_s",
    ("dht", "advertise"): "advertise_host",
    ("dht", "discover"): "discover",
    ("gossip", "interval_s"): "gossip_interval_s",
    ("agents", "max"): "max_agents",
    ("agents", "seed"): "seed_agents",
}
ENV_VARS = {
    "SPORE_HOST": "api_host",
    "SPORE_PORT": "api_port",
    "SPORE_STATE_DIR": "state_dir",
    "SPORE_LOG_LEVEL": "log_level",
    "SPORE_ENCODER_THREADS": "encoder_threads",
    "SPORE_MAX_TEXT_BYTES": "max_text_bytes",
    "SPORE_DHT_HOST": "dht_host",
    "SPORE_DHT_PORT": "dht_port",
    "SPORE_PEERS": "peers",
    "SPORE_REPUBLISH_S": "republish_s",
    "SPORE_MAX_CONTACTS_PER_IP": "max_contacts_per_ip",
    "SPORE_DHT_RATE": "dht_rate_per_s",
    "SPORE_ADVERTISE": "advertise_host",
    "SPORE_DISCOVER": "discover",
    "SPORE_GOSSIP_INTERVAL": "gossip_interval_s",
    "SPORE_MAX_AGENTS": "max_agents",
    "SPORE_SEED_AGENTS": "seed_agents",
    "SPORE_CAPTURE_EGRESS": "capture_egress",
}
DEFAULT_DHT_PORT = 7151
LOOPBACK_HOST, ANY_HOST = "127.0.0.1", "0.0.0.0"


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the daemon and the CLI need to know, decided once."""

    state_dir: Path
    config_dir: Path
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    log_level: str = "info"
    encoder_threads: int = 1
    max_text_bytes: int = 16 * 1024
    dht_host: str = ""  # "": not configured, `dht_listen` decides (loopback while alone)
    dht_host_from: str = ""  # where dht_host was configured (a file or a variable)
    dht_port: int = DEFAULT_DHT_PORT
    peers: tuple[tuple[str, int], ...] = ()
    republish_s: float = 3600.0
    max_contacts_per_ip: int = 4
    dht_rate_per_s: float = 500.0
    advertise_host: str = ""  # the address peers reach us at ("": the DHT host, if not 0.0.0.0)
    discover: bool = False  # LAN discovery by mDNS (p2pnode.discovery); opens the DHT port
    gossip_interval_s: float = 5.0
    max_agents: int = 16  # agents this spore hosts at most (the rest is spare capacity)
    seed_agents: int = 4  # agents a new spore starts with
    capture_egress: str = ""  # a file that gets a copy of all we send to peers (p2pnode.egress)
    journald: bool = False
    notify_socket: str | None = None
    watchdog_usec: int = 0
    sources: tuple[str, ...] = field(default=())

    @property
    def api_url(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        if self.api_host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.api_port}"

    @property
    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            return self.api_host == "localhost"


def default_dirs(env: Mapping[str, str]) -> tuple[Path, Path]:
    """(state dir, config dir): systemd's STATE_DIRECTORY wins, else XDG."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    config = env.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    return (
        Path(state) if state else Path(platformdirs.user_data_dir(APP)),
        Path(config) if config else Path(platformdirs.user_config_dir(APP)),
    )


def load_config(env: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Config:
    """Build the Config from the environment mapping and CLI flags.

    `flags` holds only what the user actually passed (None values are ignored).
    Raises ConfigError naming the file, line or variable that is wrong.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    state_dir, config_dir = default_dirs(env)
    if env.get("SPORE_CONFIG_DIR"):
        config_dir = Path(env["SPORE_CONFIG_DIR"])
    if flags.get("config_dir"):
        config_dir = Path(flags.pop("config_dir"))
    values: dict[str, Any] = {"state_dir": state_dir, "config_dir": config_dir}
    sources = ["defaults"]
    path = config_dir / CONFIG_FILE
    if path.exists():
        values.update(_read_toml(path))
        sources.append(str(path))
        if values.get("dht_host"):
            values["dht_host_from"] = f"[dht] host in {path}"
    for var, name in ENV_VARS.items():
        if env.get(var):
            values[name] = _coerce(name, env[var], f"environment variable {var}")
            sources.append(var)
            if name == "dht_host":
                values["dht_host_from"] = var
    for name, value in flags.items():
        values[name] = _coerce(name, value, f"option --{name.replace('_', '-')}")
    values["journald"] = bool(env.get("JOURNAL_STREAM"))
    values["notify_socket"] = env.get("NOTIFY_SOCKET") or None
    values["watchdog_usec"] = _coerce("watchdog_usec", env.get("WATCHDOG_USEC") or 0,
                                      "environment variable WATCHDOG_USEC")
    values["sources"] = tuple(sources)
    return _validated(Config(**values))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line N, column M)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    out: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section], e.g. [api] or [node]")
        for key, value in table.items():
            name = _TOML_KEYS.get((section, key))
            if name is None:
                known = ", ".join(f"{s}.{k}" for s, k in _TOML_KEYS)
                raise ConfigError(f"{path}: unknown setting {section}.{key} (known: {known})")
            out[name] = _coerce(name, value, f"{path}: {section}.{key}")
    return out


_TYPES = {f.name: f.type for f in fields(Config)}


def parse_peers(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    """`host:port` items, as a list (TOML, flags) or comma-separated (environment)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: expected a list of 'host:port', got {value!r}")
    out = []
    for item in items:
        host, sep, port = str(item).strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {item!r} is not 'host:port'")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def _coerce(name: str, value: Any, where: str) -> Any:
    kind = _TYPES[name]
    if name == "peers":
        return parse_peers(value, where)
    try:
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if kind == "bool":
            return _boolean(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from exc
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(value: Any) -> bool:
    """true/false in TOML; 1/0, true/false, yes/no, on/off in a variable or flag."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(value)


def _validated(cfg: Config) -> Config:
    if not 0 <= cfg.api_port <= 65535:
        raise ConfigError(f"API port {cfg.api_port} is not in 0..65535")
    if not 0 <= cfg.dht_port <= 65535:
        raise ConfigError(f"DHT port {cfg.dht_port} is not in 0..65535")
    if not 0.5 <= cfg.republish_s <= 7 * 86400:
        raise ConfigError(f"republish_s {cfg.republish_s} is not in 0.5..604800")
    if not 1 <= cfg.dht_rate_per_s <= 1e6:
        raise ConfigError(f"DHT rate_per_s {cfg.dht_rate_per_s} is not in 1..1000000")
    if not 1 <= cfg.max_contacts_per_ip <= 4096:
        raise ConfigError(f"max_contacts_per_ip {cfg.max_contacts_per_ip} is not in 1..4096")
    if not 0.05 <= cfg.gossip_interval_s <= 3600:
        raise ConfigError(f"gossip interval_s {cfg.gossip_interval_s} is not in 0.05..3600")
    if not 1 <= cfg.seed_agents <= cfg.max_agents <= 256:
        raise ConfigError(f"agents: need 1 <= seed ({cfg.seed_agents}) <= max "
                          f"({cfg.max_agents}) <= 256")
    if cfg.advertise_host:
        try:
            ipaddress.ip_address(cfg.advertise_host)
        except ValueError:
            raise ConfigError(f"advertise address {cfg.advertise_host!r} is not an IP "
                              "address") from None
    if cfg.discover and cfg.dht_host and _is_loopback(cfg.dht_host):
        raise ConfigError(f"LAN discovery ([dht] discover, SPORE_DISCOVER) needs the DHT "
                          f"port open beyond loopback, but the DHT host is {cfg.dht_host} "
                          f"({cfg.dht_host_from or '[dht] host'}): remove that host or set it "
                          "to 0.0.0.0 or this device's LAN address, or turn discovery off")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log level {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if not 1 <= cfg.encoder_threads <= 64:
        raise ConfigError(f"encoder_threads {cfg.encoder_threads} is not in 1..64")
    if not 64 <= cfg.max_text_bytes <= 1024 * 1024:
        raise ConfigError(f"max_text_bytes {cfg.max_text_bytes} is not in 64..1048576")
    for what, host in (("API", cfg.api_host), ("DHT", cfg.dht_host or LOOPBACK_HOST)):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ConfigError(f"{what} host {host!r} is not an IP address") from None
    return replace(cfg, state_dir=cfg.state_dir.expanduser())


# -- where the DHT and peer HTTP listen ---------------------------------------------------
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True, kw_only=True)
class Listen:
    """Where the DHT (UDP) and peer HTTP (TCP) port is bound, and why: `reason`
    for programs (configured, discover, peers, joined, members, alone), `why` for people."""

    host: str
    reason: str
    why: str

    @property
    def loopback_only(self) -> bool:
        return _is_loopback(self.host)

    def status(self) -> dict[str, Any]:
        return {"host": self.host, "loopback_only": self.loopback_only,
                "reason": self.reason, "why": self.why}


def dht_listen(cfg: Config, *, joined: bool, members: int) -> Listen:
    """Loopback until a swarm exists: a spore alone (no host configured, no
    LAN discovery, no peers to join, founder of its swarm with no other member known) listens
    on 127.0.0.1 only, so a lone laptop offers nothing to its network.
    `joined`: this spore is a member of a swarm founded elsewhere (`spore init
    --join`); `members`: the members its roster knows, itself included, not
    counting the revoked."""
    if cfg.dht_host:
        return Listen(host=cfg.dht_host, reason="configured",
                      why=f"configured ({cfg.dht_host_from or '[dht] host'})")
    if cfg.discover:
        return Listen(host=ANY_HOST, reason="discover",
                      why="LAN discovery is on ([dht] discover or SPORE_DISCOVER): spores of "
                          "this swarm on the local network find this one by mDNS")
    if cfg.peers:
        return Listen(host=ANY_HOST, reason="peers",
                      why=f"{len(cfg.peers)} peer(s) to join configured ([dht] peers, --peer "
                          "or SPORE_PEERS)")
    if joined:
        return Listen(host=ANY_HOST, reason="joined",
                      why="a member of a swarm founded elsewhere (spore init --join)")
    if members > 1:
        return Listen(host=ANY_HOST, reason="members",
                      why=f"the swarm has {members} members known")
    return Listen(host=LOOPBACK_HOST, reason="alone",
                  why="alone: no peers, no [dht] host, no other member (to let other "
                      "devices in: [dht] host = \"0.0.0.0\" or SPORE_DHT_HOST, or join a "
                      "swarm)")
