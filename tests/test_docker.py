"""Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine.

What can be checked here: the compose file parses and names only paths, ports, commands and environment variables
that exist; the Dockerfile is multi-stage, slim, non-root, installs runtime dependencies only, ships the default
model and has a HEALTHCHECK; the wheel the image installs holds everything the image runs; and every command the
image runs (the entry point ``seqpred serve``, the health check, the ``score`` job) is run here, outside Docker,
with the image's environment, and works.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse docker-compose.yml (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
#: Environment variables read by code other than the server settings.
OTHER_ENV = {"SEQPRED_HEALTH_TARGET"}


# ----------------------------------------------------------------------------------------------------------------
# Parsing helpers


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"compose variable {name} has no default and is not set")

    return _VAR.sub(sub, value)


def dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[str] = []
    cur = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    return out


def stages() -> list[list[str]]:
    """The Dockerfile's stages, each a list of instructions starting with its FROM."""
    out: list[list[str]] = []
    for line in dockerfile_lines():
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage (``KEY=VALUE`` pairs)."""
    env: dict[str, str] = {}
    for line in stages()[-1]:
        if line.upper().startswith("ENV "):
            for pair in shlex.split(line[4:]):
                k, _, v = pair.partition("=")
                env[k] = v
    return env


def exec_form(line: str, keyword: str) -> list[str]:
    """The JSON array of ``ENTRYPOINT [...]`` / ``CMD [...]`` / ``HEALTHCHECK ... CMD [...]``."""
    rest = line[line.upper().index(keyword) + len(keyword) :].strip()
    value = json.loads(rest)
    assert isinstance(value, list), f"{keyword} must use the exec (JSON array) form: {line}"
    return [str(v) for v in value]


def instruction(name: str, stage: int = -1) -> list[str]:
    return [ln for ln in stages()[stage] if ln.upper().startswith(name + " ")]


def services() -> dict[str, dict[str, Any]]:
    s = compose()["services"]
    assert isinstance(s, dict)
    return s


def seqpred_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (not e.g. ``redis``)."""
    return {n: svc for n, svc in services().items() if str(svc.get("image", "")).startswith("seqpred")}


def service_env(svc: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The container environment of a compose service: the image's ENV, then the service's, then overrides."""
    env = dict(dockerfile_env())
    env.update({k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()})
    env.update(overrides)
    return env


def volumes(svc: dict[str, Any], env: dict[str, str] | None = None) -> list[tuple[str, str, bool]]:
    """``(host path, container path, read-only)`` of each bind mount."""
    out = []
    for v in svc.get("volumes", []):
        parts = interpolate(v, env).split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def entrypoint() -> list[str]:
    (line,) = instruction("ENTRYPOINT")
    return exec_form(line, "ENTRYPOINT")


def subcommands() -> set[str]:
    """The sub-commands ``seqpred`` (model.cli) knows today."""
    from model.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


#: What ``seqpred serve`` and ``seqpred score`` call; used to run the image's commands while the lead has not yet
#: wired these sub-commands into model/cli.py (``test_seqpred_wires_serve_and_score`` reports that).
_FALLBACK = {"serve": ("service.cli", "main_serve"), "score": ("service.scoring.cli", "main_score")}


def seqpred(args: list[str]) -> list[str]:
    """The argv that runs ``seqpred ARGS`` here (the console script is ``model.cli:main``)."""
    if args[0] in subcommands():
        return [sys.executable, "-m", "model.cli", *args]
    mod, fn = _FALLBACK[args[0]]
    return [sys.executable, "-c", f"import sys; from {mod} import {fn}; sys.exit({fn}(sys.argv[1:]))", *args[1:]]


def image_command(argv: list[str]) -> list[str]:
    """A command of the image (exec form) as it runs here: ``seqpred`` -> the console script, ``python`` -> ours."""
    if argv[0] == "seqpred":
        return seqpred(argv[1:])
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(f"the image runs {argv[0]!r}, which this test does not know how to run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def tiny_model_dir() -> Path:
    from test_scoring_cli import tiny_model

    return tiny_model()


# ----------------------------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_parses_with_server_gpu_and_score_services() -> None:
    s = services()
    assert {"server", "gpu", "score"} <= set(s)
    server = s["server"]
    assert server["restart"] in ("always", "unless-stopped", "on-failure")
    assert server["ports"] and server["volumes"] and server["environment"] and server["healthcheck"]
    assert "profiles" not in server  # `docker compose up` starts it
    assert s["gpu"]["profiles"] == ["gpu"]
    assert s["score"]["profiles"] == ["score"]  # one-shot: only with `docker compose run score`
    assert s["score"]["restart"] == "no" and s["score"]["healthcheck"] == {"disable": True}


def test_compose_gpu_profile_reserves_an_nvidia_gpu_and_runs_on_cuda() -> None:
    gpu = services()["gpu"]
    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["count"] == 1
    cmd = gpu["command"]
    assert cmd[cmd.index("--device") + 1] == "cuda"
    assert gpu["build"]["args"]["ORT_PACKAGE"].startswith("onnxruntime-gpu")
    assert any(ln.startswith("ARG ORT_PACKAGE") for ln in stages()[0])  # the build arg exists in the Dockerfile


def test_compose_paths_exist() -> None:
    """Build contexts and read-only mounts name paths of this repository (writable ones are created by Docker)."""
    from service.settings import DEFAULT_MODEL_DIR

    not_shipped = []
    for name, svc in services().items():
        ctx = ROOT / svc.get("build", {}).get("context", ".")
        assert (ctx / "Dockerfile").is_file(), f"{name}: build context {ctx} has no Dockerfile"
        for host, container, ro in volumes(svc):
            assert container.startswith("/"), f"{name}: {container!r} is not an absolute container path"
            path = (ROOT / host).resolve()
            if path == DEFAULT_MODEL_DIR and not path.exists():
                not_shipped.append(name)  # exported by the lead before an image is built
                continue
            if ro:
                assert path.exists(), f"{name}: mount source {host!r} does not exist"
    if not_shipped:
        pytest.skip(f"service/default_model is not exported yet (mounted by {', '.join(not_shipped)})")


def test_compose_environment_names_real_settings_with_valid_values() -> None:
    from service import settings

    known = {settings.env_name(f) for f in settings.Settings.__dataclass_fields__} | OTHER_ENV
    for name, svc in seqpred_services().items():
        env = service_env(svc)
        unknown = sorted(k for k in env if k.startswith("SEQPRED_") and k not in known)
        assert not unknown, f"{name}: unknown environment variable {unknown[0]}"
        if name == "score":
            continue
        s = settings.from_namespace(argparse.Namespace(), env=env)  # raises SettingsError for a bad value
        assert str(s.model) == "/model" and any(c == "/model" for _, c, _ in volumes(svc))
        container_ports = {int(p.split(":")[-1]) for p in svc["ports"]}
        assert s.port in container_ports
        if name == "server":
            assert s.metrics_port in container_ports


def test_compose_ports_match_the_image() -> None:
    (expose,) = instruction("EXPOSE")
    exposed = {int(p) for p in expose.split()[1:]}
    for svc in seqpred_services().values():
        for p in svc.get("ports", []):
            host, container = interpolate(p).split(":")
            assert int(host) > 0 and int(container) in exposed


def test_compose_commands_parse_and_healthcheck_is_the_images() -> None:
    from service.cli import serve_parser
    from service.scoring.cli import score_parser

    parsers = {"serve": serve_parser(), "score": score_parser()}
    for name, svc in seqpred_services().items():
        cmd = svc["command"]
        parsers[cmd[0]].parse_args(cmd[1:])  # SystemExit on an unknown flag
        if svc.get("healthcheck", {}).get("disable"):
            continue
        (hc,) = instruction("HEALTHCHECK")
        assert svc["healthcheck"]["test"] == ["CMD", *exec_form(hc, "CMD")], name


def test_compose_shared_profile_runs_two_replicas_on_one_redis() -> None:
    """Profile ``shared``: a healthy ``redis`` and two replicas with ``--store redis`` naming it, on their own ports."""
    from service import settings

    s = services()
    assert set(seqpred_services()) == set(s) - {"redis", "lb"}
    redis = s["redis"]
    assert redis["profiles"] == ["shared", "scale"] and redis["image"].startswith("redis:")
    assert redis["command"][0] == "redis-server" and "ping" in redis["healthcheck"]["test"]
    assert "ports" not in redis  # reachable by the replicas only
    (data,) = [c for _, c, _ in volumes(redis)]
    assert data == "/data" and "redis-data" in compose()["volumes"]
    replicas: list[str] = []
    host_ports = set()
    for name, svc in seqpred_services().items():
        if name == "score":
            continue
        cfg = settings.from_namespace(argparse.Namespace(), env=service_env(svc))
        if cfg.store != "redis":
            assert "redis" not in svc.get("depends_on", {}), name
            continue
        replicas.append(name)
        assert svc["profiles"] == ["shared", "scale"]
        assert cfg.redis_url == "redis://redis:6379/0"  # the compose service's name and port
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        (port,) = svc["ports"]
        host_ports.add(interpolate(port).split(":")[0])
    assert len(replicas) == 2 and len(host_ports) == 2, (replicas, host_ports)


def test_compose_scale_profile_puts_nginx_with_the_tested_config_before_the_replicas() -> None:
    """Profile ``scale``: the shared profile's redis and replicas, and ``lb`` (nginx) running
    deploy/nginx/seqpred.conf (the file tests/test_deploy_nginx.py runs), whose upstreams are the replicas."""
    s = services()
    lb = s["lb"]
    assert lb["profiles"] == ["scale"] and lb["image"].startswith("nginx:")
    (mount,) = volumes(lb)
    host, container, ro = mount
    assert ro and (ROOT / host).resolve() == ROOT / "deploy" / "nginx" / "seqpred.conf"
    assert f"-c {container}" in " ".join(lb["command"])
    conf = (ROOT / host).read_text()
    upstreams = re.findall(r"^\s*server (\S+):(\d+)", conf, re.M)
    replicas = {n for n, svc in s.items() if "scale" in svc.get("profiles", []) and n not in ("lb", "redis")}
    assert {name for name, _ in upstreams} == replicas == set(lb["depends_on"])
    for name, port in upstreams:
        assert int(port) == 50051 and s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    (listen,) = re.findall(r"listen (\d+) http2;", conf)
    (published,) = lb["ports"]
    assert interpolate(published).split(":")[1] == listen


def test_compose_score_job_reads_the_mounted_model_and_folder() -> None:
    svc = services()["score"]
    cmd = svc["command"]
    mounts = {c: h for h, c, _ in volumes(svc)}
    assert cmd[1] in mounts and Path(cmd[cmd.index("--out") + 1]).parent.as_posix() in mounts
    assert mounts[service_env(svc)["SEQPRED_MODEL"]]  # the model the job scores with is mounted
    assert "--resume" in cmd  # a rerun continues instead of failing on the existing output


# ----------------------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    st = stages()
    assert len(st) >= 2, "multi-stage build"
    for s in st:
        assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim\b|FROM python:[\d.]+-slim\b", s[0]), s[0]
    final = st[-1]
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a non-root user"
    assert any("useradd" in ln and "10001" in ln for ln in final)
    assert entrypoint() == ["seqpred"]
    (cmd,) = instruction("CMD")
    assert exec_form(cmd, "CMD") == ["serve"]
    (hc,) = instruction("HEALTHCHECK")
    assert exec_form(hc, "CMD") == ["python", "-m", "service.healthcheck"]
    # runtime dependencies only: the project without extras, plus the server's health/reflection services
    installs = [ln for ln in dockerfile_lines() if "pip install" in ln]
    assert installs and not any(
        re.search(r"\.\[|pytest|hypothesis|ruff|mypy|grpcio-tools|matplotlib", ln) for ln in installs
    )
    # the final stage installs nothing itself: it copies the built environment
    assert not any("pip install" in ln for ln in final)
    assert any(ln.startswith("COPY --from=build /opt/venv") for ln in final)


def test_dockerfile_ships_the_default_model() -> None:
    lines = dockerfile_lines()
    assert any("test -f service/default_model/model.json" in ln for ln in lines)
    assert any("cp -r /src/service/default_model" in ln for ln in lines)


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a path is excluded when it or one of its parents matches the last pattern."""
    hit = False
    parts = rel.split("/")
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        for k in range(1, len(parts) + 1):
            prefix = "/".join(parts[:k])
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(parts[k - 1], p[3:])):
                hit = not neg
                break
    return hit


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copied = []
    for line in instruction("COPY", stage=0):
        srcs = line.split()[1:-1]
        copied += [s for s in srcs if not s.startswith("--")]
    assert {"pyproject.toml", "README.md", "model", "service"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    for kept in [
        "service/default_model/model.json",
        "service/_proto/seqpred/v1/seqpred_pb2.py",
        "model/export/sequence.py",
    ]:
        assert not _ignored(kept, patterns), kept
    for dropped in [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/x/checkpoint.npz",
        "service/__pycache__/x.pyc",
        "tests/x.py",
    ]:
        assert _ignored(dropped, patterns), dropped


def test_gitignore_covers_every_output_the_readme_writes() -> None:
    """Each ``--out`` of the README's commands (runs, exported models, score files) and the compose score job's
    ``./scores`` stay out of ``git status``; the sources those commands read stay in."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    outs = set(re.findall(r"--out (\S+?)[\]`\s]", (ROOT / "README.md").read_text()))
    assert {"runs/py", "models/py", "scores.jsonl", "runs/variants"} <= outs, outs
    for path in [*sorted(outs), "scores/scores.jsonl"]:
        probe = f"{path}/x" if "." not in Path(path).name else path
        res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", probe], check=False)
        assert res.returncode == 0, f"{probe} (written by a README command) is not in .gitignore"
    for kept in ("service/default_model/model.json", "model/cli.py", "docs/scoring.md"):
        res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", kept], check=False)
        assert res.returncode == 1, f"{kept} is ignored"


def _third_party_imports() -> set[str]:
    """Top-level modules outside the standard library imported anywhere in model/ and service/ (lazily too)."""
    mods: set[str] = set()
    for path in [*ROOT.glob("model/**/*.py"), *ROOT.glob("service/**/*.py")]:
        if path.name == "gen_proto.py":  # regenerates stubs: a dev tool (grpcio-tools)
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("model", "service")}


def _dist(name: str) -> str:
    return re.split(r"[\[<>=!~; ]", name.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_image_installs_every_runtime_dependency() -> None:
    """Each third-party module the code imports comes from pyproject's dependencies or the Dockerfile's installs."""
    import tomllib

    declared = {_dist(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for line in dockerfile_lines():
        for m in re.finditer(r"pip install ([^&;]+)", line):
            args = [a.strip("\"'") for a in m.group(1).split()]
            declared |= {_dist(a) for a in args if a and not a.startswith(("-", ".", "$"))}
    providers = importlib.metadata.packages_distributions()
    # the plot extra: model/train/plots.py skips the figure without it; the import extra: `seqpred import torch`
    # answers with the pip command that installs safetensors (model/importers/torch_state.py); the otel extra:
    # --otel-endpoint says to install it (service/api/tracing.py imports it only then)
    optional = {"matplotlib", "safetensors", "opentelemetry"}
    optional |= {"ray", "pyarrow"}  # the ray extra: only --engine ray / --out-format parquet, which say how to get it
    for mod in sorted(_third_party_imports() - optional):
        dists = {_dist(d) for d in providers.get(mod, [mod])}
        assert dists & declared, f"module {mod!r} (from {sorted(dists)}) is not installed in the image"


def test_wheel_holds_everything_the_image_runs(tmp_path: Path) -> None:
    """``pip install .`` in the image: the wheel has the stubs, the entry point and the commands' modules."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "default_model", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("model", "service"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (whl,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for needed in [
        "service/_proto/seqpred/v1/seqpred_pb2.py",
        "service/_proto/seqpred/v1/seqpred_pb2_grpc.py",
        "service/cli.py",
        "service/server.py",
        "service/healthcheck.py",
        "service/scoring/cli.py",
        "service/scoring/inputs.py",
        "model/cli.py",
        "model/export/sequence.py",
        "model/data/tinyshakespeare.txt.gz",  # the default corpus of `seqpred experiment variants`
    ]:
        assert needed in names, f"the wheel lacks {needed}"
    (ep,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "seqpred = model.cli:main" in zipfile.ZipFile(whl).read(ep).decode()


# ----------------------------------------------------------------------------------------------------------------
# The image's commands, run here


def test_seqpred_wires_serve_and_score() -> None:
    missing = sorted({"serve", "score"} - subcommands())
    if missing:
        pytest.skip(
            f"model/cli.py does not wire {', '.join('seqpred ' + m for m in missing)} yet: they should call "
            "service.cli.main_serve and service.scoring.cli.main_score"
        )
    for sub in ("serve", "score"):
        res = subprocess.run([sys.executable, "-m", "model.cli", sub, "--help"], capture_output=True, timeout=60)
        assert res.returncode == 0


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (hc,) = instruction("HEALTHCHECK")
    argv = image_command(exec_form(hc, "CMD"))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_entrypoint_serves_and_the_healthcheck_follows_it(tmp_path: Path) -> None:
    """``seqpred serve`` with the server service's environment; the HEALTHCHECK command says SERVING, then not."""
    svc = services()["server"]
    port = free_port()
    overrides = {"SEQPRED_MODEL": str(tiny_model_dir()), "SEQPRED_PORT": str(port), "SEQPRED_METRICS_PORT": "-1"}
    env = {**os.environ, **service_env(svc, **overrides)}
    if not socket.has_ipv6:
        env["SEQPRED_HOST"] = "0.0.0.0"
    argv = image_command([*entrypoint(), *svc["command"]])
    server = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            res = _health(env)
            if res.returncode == 0:
                break
            assert server.poll() is None, f"the server exited: {server.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"not healthy after 60 s: {res.stderr}"
            time.sleep(0.3)
        assert res.stdout == "" and res.stderr == ""
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    res = _health(env)
    assert res.returncode == 1
    assert res.stderr.startswith(f"seqpred-healthcheck: localhost:{port}: UNAVAILABLE")
    assert len(res.stderr.strip().splitlines()) == 1


def test_score_job_runs_and_a_rerun_resumes(tmp_path: Path) -> None:
    """The compose ``score`` job with its container paths mapped to temporary folders."""
    svc = services()["score"]
    data_in, data_out = tmp_path / "in", tmp_path / "out"
    (data_in / "sub").mkdir(parents=True)
    (data_in / "a.txt").write_text("the cat sat on the mat\n")
    (data_in / "sub" / "b.txt").write_text("the dog\n")
    data_out.mkdir()
    paths = {"/data/in": str(data_in), "/data/out": str(data_out), "/model": str(tiny_model_dir())}

    def local(arg: str) -> str:
        for container, host in paths.items():
            if arg == container or arg.startswith(container + "/"):
                return host + arg[len(container) :]
        return arg

    env = {k: local(v) for k, v in service_env(svc).items()}
    argv = image_command([*entrypoint(), *(local(a) for a in svc["command"])])
    for run in range(2):
        res = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        recs = [json.loads(x) for x in (data_out / "scores.jsonl").read_text().splitlines()]
        assert [r["id"] for r in recs] == ["a.txt", "sub/b.txt"], f"run {run}"
    assert "2 already in OUTPUT" in res.stderr


def test_healthcheck_target_from_environment() -> None:
    from service.healthcheck import default_target

    assert default_target({}) == "localhost:50051"
    assert default_target({"SEQPRED_PORT": "6000"}) == "localhost:6000"
    assert default_target({"SEQPRED_HEALTH_TARGET": "h:1", "SEQPRED_PORT": "6000"}) == "h:1"
