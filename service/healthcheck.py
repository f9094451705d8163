"""Health probe for containers: ``python -m service.healthcheck [--target HOST:PORT] [--service NAME]``.

Asks the server's ``grpc.health.v1.Health/Check`` and exits 0 iff the answer is SERVING; otherwise prints one line
``seqpred-healthcheck: ...`` on stderr and exits 1 (the code Docker's HEALTHCHECK treats as unhealthy). Needs no
binary besides Python (no grpc_health_probe in the image).

The target defaults to ``$SEQPRED_HEALTH_TARGET``, else ``localhost:$SEQPRED_PORT`` (port 50051 when unset), so
the probe follows the port the server was configured with.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


def default_target(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("SEQPRED_HEALTH_TARGET"):
        return env["SEQPRED_HEALTH_TARGET"]
    return f"localhost:{env.get('SEQPRED_PORT') or 50051}"


def check(target: str, service: str = "", timeout: float = 3.0) -> str:
    """The health status name the server at ``target`` reports for ``service`` (``""``: the whole server)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--target", default=None, help="server HOST:PORT (env SEQPRED_HEALTH_TARGET; default localhost:"
                   "$SEQPRED_PORT or 50051)")  # fmt: skip
    p.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    args = p.parse_args(argv)
    target = args.target or default_target()
    import grpc

    try:
        status = check(target, args.service, args.timeout)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        name = code.name if code is not None else "ERROR"
        print(f"seqpred-healthcheck: {target}: {name}: {e.details() if hasattr(e, 'details') else e}", file=sys.stderr)
        return EXIT_UNHEALTHY
    if status != "SERVING":
        print(f"seqpred-healthcheck: {target}: {status}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
