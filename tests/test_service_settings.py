"""Settings: defaults, SEQPRED_* environment variables, flags over variables, errors naming flag and variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import SettingsError
from service.settings import DEFAULT_MODEL_DIR, Settings, from_args


def test_defaults() -> None:
    s = from_args([], env={})
    assert s == Settings()
    assert s.port == 50051
    assert s.max_sessions == 100_000
    assert s.idle_timeout == 900.0
    assert s.device == "auto"
    assert s.model == DEFAULT_MODEL_DIR
    assert DEFAULT_MODEL_DIR.parent.name == "service"


def test_env_then_flags() -> None:
    env = {"SEQPRED_PORT": "6000", "SEQPRED_IDLE_TIMEOUT": "0", "SEQPRED_MODEL": "/m", "SEQPRED_LOG_LEVEL": "debug"}
    s = from_args([], env=env)
    assert (s.port, s.idle_timeout, s.model, s.log_level) == (6000, 0.0, Path("/m"), "DEBUG")
    s = from_args(["--port", "7000", "--max-sessions", "5"], env=env)
    assert (s.port, s.max_sessions, s.idle_timeout) == (7000, 5, 0.0)


def test_metrics_off() -> None:
    assert from_args([], env={"SEQPRED_METRICS_PORT": "off"}).metrics_port == -1


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "x"], {}, "--port: expected int, got 'x'"),
        ([], {"SEQPRED_MAX_BATCH": "many"}, "SEQPRED_MAX_BATCH: expected int, got 'many'"),
        (["--max-sessions", "0"], {}, "--max-sessions (SEQPRED_MAX_SESSIONS): must be >= 1, got 0"),
        (["--device", "tpu"], {}, "--device (SEQPRED_DEVICE): must be one of auto, cpu, cuda, got 'tpu'"),
        (["--idle-timeout", "-1"], {}, "--idle-timeout (SEQPRED_IDLE_TIMEOUT): must be >= 0, got -1.0"),
    ],
)
def test_bad_values_name_flag_and_variable(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        from_args(argv, env=env)
    assert str(e.value) == message


def test_shared_store_settings() -> None:
    s = from_args(["--store", "redis"], env={"SEQPRED_REDIS_URL": "redis://cache:6380/2"})
    assert (s.store, s.redis_url) == ("redis", "redis://cache:6380/2")
    assert from_args([], env={}).store == "memory"
    with pytest.raises(SettingsError, match=r"--store \(SEQPRED_STORE\): must be one of memory, redis, got 'disk'"):
        from_args(["--store", "disk"], env={})
    with pytest.raises(SettingsError, match=r"--store .*memory with --durability, got 'redis'"):
        from_args(["--store", "redis", "--durability", "sync", "--state-dir", "/tmp/x"], env={})
    with pytest.raises(
        SettingsError, match=r"--redis-url \(SEQPRED_REDIS_URL\): must be a redis:// URL, got 'cache:6379'"
    ):
        from_args(["--redis-url", "cache:6379"], env={})


def test_boolean_flags_alone_or_with_a_value() -> None:
    assert from_args([], env={}).access_log is False
    assert from_args(["--access-log"], env={}).access_log is True
    assert from_args(["--access-log", "off"], env={"SEQPRED_ACCESS_LOG": "1"}).access_log is False
    assert from_args([], env={"SEQPRED_ACCESS_LOG": "yes"}).access_log is True
    assert from_args(["--otel-endpoint", "http://c:4317"], env={}).otel_endpoint == "http://c:4317"
    with pytest.raises(SettingsError) as e:
        from_args([], env={"SEQPRED_ACCESS_LOG": "maybe"})
    assert str(e.value) == "SEQPRED_ACCESS_LOG: expected boolean, got 'maybe'"
