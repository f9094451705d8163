"""Server settings: a frozen dataclass filled from defaults, then ``SEQPRED_*`` environment variables, then flags.

Every field has one flag (``--max-sessions``) and one environment variable (``SEQPRED_MAX_SESSIONS``); a flag wins
over the variable, the variable over the default. Bad values raise :class:`SettingsError` naming the flag, the
variable and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import SettingsError

#: The model shipped with the package (``service/default_model``), used when no ``--model`` is given.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

DEVICES = ("auto", "cpu", "cuda")
LOG_FORMATS = ("json", "text")
DURABILITY_MODES = ("none", "periodic", "sync")
STORES = ("memory", "redis")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ON_UNKNOWN = ("auto", "error", "skip", "unk")
ENV_PREFIX = "SEQPRED_"


def _meta(help: str, choices: Sequence[str] | None = None) -> dict[str, Any]:
    return {"help": help, "choices": choices}


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at start-up. Durations in seconds; 0 disables a timeout."""

    model: Path = field(default=DEFAULT_MODEL_DIR, metadata=_meta("model directory (step.onnx, sequence.onnx, ...)"))
    host: str = field(default="[::]", metadata=_meta("address to listen on"))
    port: int = field(default=50051, metadata=_meta("gRPC port (0 = pick a free one)"))
    device: str = field(default="auto", metadata=_meta("execution device; auto takes CUDA when available", DEVICES))
    intra_op_threads: int = field(default=1, metadata=_meta("onnxruntime intra-op threads (0 = its default)"))
    max_sessions: int = field(default=100_000, metadata=_meta("session capacity; more is RESOURCE_EXHAUSTED"))
    idle_timeout: float = field(default=900.0, metadata=_meta("evict a session idle this long (0 = never)"))
    max_lifetime: float = field(default=86_400.0, metadata=_meta("evict a session this old (0 = never)"))
    sweep_interval: float = field(default=1.0, metadata=_meta("how often expired sessions are looked for"))
    max_batch: int = field(default=256, metadata=_meta("most session steps in one onnxruntime call"))
    batch_wait_us: int = field(
        default=500, metadata=_meta("longest a step waits for the previous batch's sessions to come back (0 = never)")
    )
    batch_threads: int = field(
        default=2,
        metadata=_meta(
            "threads that run the batches too long for the event loop (one per lane: more do not help; "
            "cheap batches run on the loop)"
        ),
    )
    max_request_tokens: int = field(default=4096, metadata=_meta("most tokens in one request or sequence"))
    max_generate_tokens: int = field(default=1024, metadata=_meta("most tokens one request may generate"))
    max_score_sequences: int = field(default=256, metadata=_meta("most sequences in one Score request"))
    max_top_k: int = field(default=100, metadata=_meta("largest top_k a request may ask for"))
    max_concurrent_rpcs: int = field(
        default=10_000,
        metadata=_meta(
            "open seqpred RPCs (streams included; with --auth-tokens only authenticated ones count) beyond which new "
            "ones get RESOURCE_EXHAUSTED"
        ),
    )
    max_public_streams: int = field(
        default=256,
        metadata=_meta("open health Watch and reflection streams (served without a token) in all; more: refused"),
    )
    max_public_streams_per_peer: int = field(
        default=16, metadata=_meta("open health Watch and reflection streams from one client address (0 = no limit)")
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024, metadata=_meta("largest request message accepted (larger: RESOURCE_EXHAUSTED)")
    )
    tls_cert: str = field(default="", metadata=_meta("PEM certificate chain of the server; with --tls-key: TLS"))
    tls_key: str = field(default="", metadata=_meta("PEM private key of --tls-cert"))
    tls_client_ca: str = field(
        default="", metadata=_meta("PEM CA certificates; clients must present a certificate they signed (mutual TLS)")
    )
    auth_tokens: str = field(
        default="", metadata=_meta("file of 'principal:token' lines; RPCs then need 'authorization: Bearer TOKEN'")
    )
    max_sessions_per_principal: int = field(
        default=0, metadata=_meta("most live sessions one principal may hold (0 = no quota)")
    )
    metrics_port: int = field(default=9464, metadata=_meta("Prometheus metrics HTTP port (0 = free, -1 = off)"))
    metrics_host: str = field(default="0.0.0.0", metadata=_meta("address of the metrics HTTP server"))
    grace: float = field(default=10.0, metadata=_meta("seconds in-flight RPCs get to finish on shutdown"))
    log_level: str = field(default="INFO", metadata=_meta("log level", LOG_LEVELS))
    log_format: str = field(default="json", metadata=_meta("log line format", LOG_FORMATS))
    access_log: bool = field(
        default=False, metadata=_meta("log one INFO line per request (logger seqpred.access; shown at any --log-level)")
    )
    otel_endpoint: str = field(
        default="", metadata=_meta("send OpenTelemetry traces to this OTLP/gRPC collector (needs seqpred[otel])")
    )
    durability: str = field(
        default="none",
        metadata=_meta(
            "keep sessions across restarts in --state-dir: sync (a reply waits until its tokens are on disk), "
            "periodic (synced every --fsync-interval) or none",
            DURABILITY_MODES,
        ),
    )
    state_dir: str = field(default="", metadata=_meta("directory of the session log and snapshots (--durability)"))
    snapshot_interval: float = field(
        default=60.0, metadata=_meta("seconds between state snapshots (each lets older log segments go)")
    )
    fsync_interval: float = field(default=1.0, metadata=_meta("seconds between log syncs with --durability periodic"))
    store: str = field(
        default="memory",
        metadata=_meta("where sessions live: memory (this process) or redis (shared by replicas, --redis-url)", STORES),
    )
    redis_url: str = field(
        default="redis://localhost:6379/0", metadata=_meta("the Redis server of --store redis (redis:// or rediss://)")
    )
    redis_timeout: float = field(
        default=10.0,
        metadata=_meta(
            "seconds to wait for Redis to answer (--store redis); a write Redis would run more than half of it after "
            "it was sent is refused, so a request reported failed is never applied later"
        ),
    )
    on_unknown: str = field(
        default="auto",
        metadata=_meta(
            "text with a symbol outside the vocabulary: refuse it (error), drop the symbol (skip) or feed <unk> (unk); "
            "auto: unk when the model has an <unk> token, else error",
            ON_UNKNOWN,
        ),
    )

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("port", 0 <= self.port <= 65535, "in [0, 65535]"),
            ("intra_op_threads", self.intra_op_threads >= 0, ">= 0"),
            ("max_sessions", self.max_sessions >= 1, ">= 1"),
            ("idle_timeout", self.idle_timeout >= 0, ">= 0"),
            ("max_lifetime", self.max_lifetime >= 0, ">= 0"),
            ("sweep_interval", self.sweep_interval > 0, "> 0"),
            ("max_batch", self.max_batch >= 1, ">= 1"),
            ("batch_wait_us", self.batch_wait_us >= 0, ">= 0"),
            ("batch_threads", self.batch_threads >= 1, ">= 1 (heavy batches never run on the event loop)"),
            ("max_request_tokens", self.max_request_tokens >= 1, ">= 1"),
            ("max_generate_tokens", self.max_generate_tokens >= 1, ">= 1"),
            ("max_score_sequences", self.max_score_sequences >= 1, ">= 1"),
            ("max_top_k", self.max_top_k >= 1, ">= 1"),
            ("max_concurrent_rpcs", self.max_concurrent_rpcs >= 1, ">= 1"),
            ("max_public_streams", self.max_public_streams >= 1, ">= 1"),
            ("max_public_streams_per_peer", self.max_public_streams_per_peer >= 0, ">= 0 (0 = no limit)"),
            ("max_message_bytes", self.max_message_bytes >= 1024, ">= 1024"),
            ("max_sessions_per_principal", self.max_sessions_per_principal >= 0, ">= 0 (0 = no quota)"),
            ("tls_key", bool(self.tls_cert) == bool(self.tls_key), "given together with --tls-cert"),
            ("tls_client_ca", not self.tls_client_ca or bool(self.tls_cert), "given only with --tls-cert"),
            ("metrics_port", -1 <= self.metrics_port <= 65535, "in [-1, 65535]"),
            ("grace", self.grace >= 0, ">= 0"),
            ("device", self.device in DEVICES, f"one of {', '.join(DEVICES)}"),
            ("log_level", self.log_level in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
            ("log_format", self.log_format in LOG_FORMATS, f"one of {', '.join(LOG_FORMATS)}"),
            ("durability", self.durability in DURABILITY_MODES, f"one of {', '.join(DURABILITY_MODES)}"),
            ("state_dir", self.durability == "none" or bool(self.state_dir), "set when --durability is not none"),
            ("snapshot_interval", self.snapshot_interval > 0, "> 0"),
            ("fsync_interval", self.fsync_interval > 0, "> 0"),
            ("store", self.store in STORES, f"one of {', '.join(STORES)}"),
            ("store", self.store != "redis" or self.durability == "none", "memory with --durability"),
            ("redis_url", self.redis_url.startswith(("redis://", "rediss://", "unix://")), "a redis:// URL"),
            ("redis_timeout", self.redis_timeout > 0, "> 0"),
            ("on_unknown", self.on_unknown in ON_UNKNOWN, f"one of {', '.join(ON_UNKNOWN)}"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise SettingsError(
                    f"{flag_name(name)} ({env_name(name)}): must be {want}, got {getattr(self, name)!r}"
                )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _converter(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        return int
    if kind == "float":
        return float
    if kind == "Path":
        return Path
    if kind == "bool":
        return boolean
    return str


def boolean(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); a bare boolean flag means true."""
    value = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    try:
        return value[raw.strip().lower()]
    except KeyError:
        raise ValueError(raw) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults are left to :func:`from_args` so that env vars can sit in between."""
    for f in dataclasses.fields(Settings):
        choices = f.metadata.get("choices")
        flag_only: dict[str, Any] = {"nargs": "?", "const": "true"} if _converter(f) is boolean else {}
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            **flag_only,
            help=f"{f.metadata.get('help', '')} (env {env_name(f.name)}; default {f.default})"
            + (f"; one of {', '.join(choices)}" if choices else ""),
        )


def from_namespace(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed flags (None = not given) over ``env`` (default ``os.environ``) over the defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = getattr(args, f.name, None)
        source = flag_name(f.name)
        if raw is None and env_name(f.name) in env:
            raw, source = env[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        if f.name == "metrics_port" and str(raw).strip().lower() == "off":
            raw = "-1"
        conv = _converter(f)
        try:
            values[f.name] = conv(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise SettingsError(f"{source}: expected {conv.__name__}, got {raw!r}") from None
        if isinstance(values[f.name], str) and f.name in ("log_level",):
            values[f.name] = values[f.name].upper()
    return Settings(**values)


def from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    return from_namespace(args, env)
