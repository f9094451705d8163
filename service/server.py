"""The server: a factory that wires model, store, batcher, engine and servicer, plus the operational parts.

* ``create_server(settings) -> (server, port)`` binds (port 0 picks a free one) without starting; tests use it.
* TLS / mutual TLS (:mod:`service.security.tls`) and bearer-token authentication (:mod:`service.security.auth`) when
  configured.
* ``grpc.health.v1`` health: SERVING once started, NOT_SERVING while draining.
* server reflection, so ``grpcurl -plaintext HOST:PORT list`` works.
* Prometheus metrics over HTTP (``--metrics-port``), structured (JSON) logs.
* ``serve(settings)``: run until SIGTERM or SIGINT, then drain within ``--grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service.api.observe import Observer, text_counter
from service.api.servicer import SeqPredServicer, add_to_server
from service.api.tracing import Tracing
from service.durability.hooks import Persistence
from service.durability.local import DurabilityMetrics, LocalLog
from service.engine.batcher import Batcher
from service.engine.core import Engine
from service.errors import ModelLoadError
from service.metrics import Metrics
from service.ports import bind_failure, port_error
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.security.auth import AuthInterceptor, load_tokens
from service.security.limits import RpcLimits
from service.security.tls import server_credentials
from service.settings import DEFAULT_MODEL_DIR, Settings
from service.store.memory import MemoryStore
from service.store.sessions import SessionStore

log = logging.getLogger("seqpred.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeqPred"].full_name
#: Responses up to 16 MiB: a Score response of 256 sequences x 4096 tokens fits (requests: --max-message-bytes).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def load_runtime(settings: Settings) -> Runtime:
    """The model named by ``settings.model``, with a clear error when the default model is not installed."""
    if settings.model == DEFAULT_MODEL_DIR and not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise ModelLoadError(
            f"model: the default model is not installed ({str(DEFAULT_MODEL_DIR)!r} has no model.json); "
            "pass --model DIR (or SEQPRED_MODEL) naming a directory written by `seqpred export`"
        )
    return Runtime(load_bundle(settings.model), settings.device, settings.intra_op_threads)


class SeqpredServer:
    """One serving process's parts. Build it with :func:`create_server`, then ``await start()``."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, tracing: Tracing | None = None) -> None:
        """``tracing``: spans to any exporter (tests); by default from ``--otel-endpoint``, or none."""
        self.settings = settings
        self.runtime = runtime if runtime is not None else load_runtime(settings)
        self.store = MemoryStore(
            self.runtime.new_state_memory(settings.max_sessions), settings.idle_timeout, settings.max_lifetime
        )
        model_name = self.runtime.bundle.path.name
        self.metrics = Metrics(lambda: float(len(self.store)), model_name)
        # batches too long for the event loop run here (onnxruntime releases the GIL), so health checks and other
        # clients are answered meanwhile; cheap ones still run on the loop (service.engine.batcher)
        executor = ThreadPoolExecutor(settings.batch_threads, thread_name_prefix="seqpred-batch")
        self.batcher = Batcher(
            self.runtime,
            self.store,
            max_batch=settings.max_batch,
            max_wait=settings.batch_wait_us / 1e6,
            executor=executor,
        )
        self.batcher.open_rpcs = 0  # counted by the servicer
        self.persistence = make_persistence(settings, self.metrics, self.runtime, self.store)
        if isinstance(self.persistence, LocalLog):
            self.persistence.pause = self.batcher.quiesce
        self.engine = Engine(settings, self.runtime, self.store, self.batcher, self.metrics, self.persistence)
        self.health = HealthServicer()
        credentials = server_credentials(settings)
        if tracing is None and settings.otel_endpoint:
            tracing = Tracing.to_endpoint(settings.otel_endpoint, model_name)
        self.tracing = tracing
        observer = Observer(
            self.metrics.rpc,
            access_log=settings.access_log,
            tracing=tracing,
            count_text=text_counter(self.engine.tokenizer.encode),
        )
        interceptors: list[grpc.aio.ServerInterceptor] = [observer]  # first: it also sees what auth refuses
        if settings.auth_tokens:
            tokens = load_tokens(settings.auth_tokens)
            interceptors.append(AuthInterceptor(tokens, self.engine.count_error))
            if credentials is None:
                log.warning("bearer tokens over plaintext: anyone on the path can read them; set --tls-cert/--tls-key")
        # after authentication, so that only authenticated calls count against --max-concurrent-rpcs and tokenless
        # streams have their own pool (gRPC's maximum_concurrent_rpcs would count both together)
        self.limits = RpcLimits(
            settings.max_concurrent_rpcs,
            settings.max_public_streams,
            settings.max_public_streams_per_peer,
            self.engine.count_error,
        )
        interceptors.append(self.limits)
        self.grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", max(MAX_MESSAGE_BYTES, settings.max_message_bytes)),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_to_server(SeqPredServicer(self.engine), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc,
        )
        self.port = self._bind(credentials)
        self.metrics_port: int | None = None
        self._metrics_http: Any = None
        if settings.metrics_port >= 0:  # bound here, before anything starts: a busy port fails fast, in one line
            try:
                self._metrics_http, self.metrics_port = self.metrics.serve(settings.metrics_port, settings.metrics_host)
            except OSError as e:
                raise port_error("--metrics-port", settings.metrics_host, settings.metrics_port, e) from None
        self._stopped = asyncio.Event()

    def _bind(self, credentials: grpc.ServerCredentials | None) -> int:
        """Bind the gRPC port; a port that cannot be bound is one SettingsError naming ``--port`` and why."""
        host, port, address = self.settings.host, self.settings.port, self.settings.address
        busy = bind_failure(host, port) if port else None  # asked first: gRPC would log its own error lines
        bound = 0
        if busy is None:
            with contextlib.suppress(RuntimeError):  # grpcio: "Failed to bind to address ..."
                if credentials is None:
                    bound = self.grpc.add_insecure_port(address)
                else:
                    bound = self.grpc.add_secure_port(address, credentials)
        if not bound:
            why = busy or bind_failure(host, port) or OSError(errno.EADDRNOTAVAIL, "gRPC cannot bind it")
            raise port_error("--port", host, port, why)
        return int(bound)

    async def start(self) -> None:
        if self.persistence is not None:  # before the first request can arrive
            self.persistence.recover(self.store, self.runtime)
            self.persistence.start()
        await self.grpc.start()
        self.engine.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        cfg = self.runtime.config
        log.info(
            "serving",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "model": str(self.runtime.bundle.path),
                    "cell": cfg.cell,
                    "layers": cfg.layers,
                    "hidden": cfg.hidden,
                    "vocab_size": cfg.vocab_size,
                    "provider": self.runtime.provider,
                    "head_graph": self.runtime.has_head,
                    "max_sessions": self.settings.max_sessions,
                    "tls": "mutual" if self.settings.tls_client_ca else bool(self.settings.tls_cert),
                    "auth": bool(self.settings.auth_tokens),
                }
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new requests, let in-flight RPCs finish for ``grace`` seconds."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace if grace is None else grace
        t0 = time.monotonic()
        log.info("draining", extra={"fields": {"grace_s": grace, "active_sessions": len(self.store)}})
        await self.health.enter_graceful_shutdown()
        self.engine.draining = True
        await self.grpc.stop(grace)
        await self.engine.stop()
        if self.persistence is not None:
            await self.persistence.close()
        self.batcher.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports what is pending
        self._stopped.set()
        log.info("stopped", extra={"fields": {"seconds": round(time.monotonic() - t0, 3)}})

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def make_persistence(settings: Settings, metrics: Metrics, runtime: Runtime, store: SessionStore) -> Persistence | None:
    """The shared store of ``--store redis``, or the durable session log that ``--durability`` asks for (None for
    ``none``)."""
    if settings.store == "redis":
        from service.durability.redis import RedisShared

        return RedisShared.from_settings(settings, runtime, store, metrics.registry)
    if settings.durability == "none":
        return None
    return LocalLog(
        settings.state_dir,
        settings.durability,
        settings.snapshot_interval,
        settings.fsync_interval,
        DurabilityMetrics(metrics.registry),
    )


def create_server(
    settings: Settings, runtime: Runtime | None = None, tracing: Tracing | None = None
) -> tuple[SeqpredServer, int]:
    """Build and bind a server (call it inside the event loop that will run it); ``await server.start()``."""
    server = SeqpredServer(settings, runtime, tracing)
    return server, server.port


async def serve(settings: Settings, runtime: Runtime | None = None, ready: Any = None) -> None:
    """Run a server until SIGTERM or SIGINT, then shut down gracefully. ``ready(server)`` is called once started."""
    server, port = create_server(settings, runtime)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(server)
    print(f"seqpred: serving {settings.model} on port {port}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop()


class ServerThread:
    """A server on its own event loop in a background thread (tests, notebooks, embedding in sync code).

    ``with ServerThread(settings) as st: ... st.port ...``
    """

    def __init__(self, settings: Settings, runtime: Runtime | None = None, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self._runtime = runtime
        self._tracing = tracing
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: SeqpredServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="seqpred-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            try:
                self.loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                self.server, _ = create_server(self.settings, self._runtime, self._tracing)
                await self.server.start()
            except BaseException as e:
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.stop()

        asyncio.run(main())

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (a coroutine function is awaited)."""
        assert self.loop is not None

        async def run() -> Any:
            out = fn(*args)
            if asyncio.iscoroutine(out):
                out = await out
            return out

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
