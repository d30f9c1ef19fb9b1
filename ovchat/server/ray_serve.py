"""``ovchat serve --ray``: the same OpenAI app as ``ovchat serve``, as a Ray Serve deployment.

Ray Serve's own LLM app needs vLLM, so the plain ``ray[serve]`` route is taken: each replica builds
``create_app`` (the FastAPI app of ``ovchat serve``) in its own actor, as Ray Serve's ingress, and
loads one batched engine. Ray Serve's proxy spreads requests over the replicas; a replica takes at most
as many requests as its engine generates at once (``max_ongoing_requests`` = the batch), and the
autoscaler keeps between ``--replicas`` and ``--max-replicas`` of them, adding one when each holds
about a full batch. A replica whose actor dies is replaced by Ray, and gets requests once its model has loaded.

On one machine ``ovchat serve --ray`` starts a local Ray cluster; ``--ray-address`` joins a running
one (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others), and the
replicas then run wherever the cluster has room: the model folder must be at the same path on every
machine (a shared or synced folder), since each replica loads it from there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError

APP_NAME = "ovchat"
DEPLOYMENT_NAME = "ovchat"
READY_TIMEOUT_S = 600.0  # replicas loading their models on a busy machine
REPLICA_HEADER = "x-ovchat-replica"  # the answering replica's process id


@dataclass(frozen=True)
class ReplicaPlan:
    """What each replica loads and serves: picklable, sent to the replicas by Ray."""

    folder: str
    model_name: str
    device: str = "CPU"
    template: str = "auto"
    backend: str = "batched"
    engine_options: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    max_requests: int = 64


class OvchatReplica:
    """One replica: ``ovchat serve``'s app over its own engine. The engine loads in the constructor, so Ray Serve
    sends a replica no request before its model is ready (a replica started to replace a dead one included)."""

    def __init__(self, plan: ReplicaPlan) -> None:
        from ovchat.engine import Engine

        self.plan = plan
        self.engine = Engine.load(
            plan.folder, device=plan.device, template=plan.template, backend=plan.backend,
            ov_config=plan.engine_options or None,
        )  # fmt: skip

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve's hook for an ingress app built in the replica
        from ovchat.server.app import create_app

        plan = self.plan
        app = create_app(lambda: self.engine, plan.model_name, api_key=plan.api_key, max_requests=plan.max_requests)
        return NamedReplica(app, str(os.getpid()))


class NamedReplica:
    """Adds which replica answered (``x-ovchat-replica``, its process id) to every response: for a client's logs,
    and for the test that both replicas answer. Plain ASGI: Starlette's BaseHTTPMiddleware would wrap the
    app's disconnect detection and streaming."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def deployment(plan: ReplicaPlan, replicas: int, max_replicas: int, batch: int) -> Any:
    """The Ray Serve application: ``replicas`` to ``max_replicas`` replicas, each taking ``batch`` requests."""
    from ray import serve

    ingress = serve.ingress()(OvchatReplica)  # no app given: built in each replica by __serve_build_asgi_app__
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        # One batch per replica: more would wait inside it, where the proxy cannot send them elsewhere.
        "max_ongoing_requests": batch,
        "graceful_shutdown_timeout_s": 5,
    }
    if max_replicas > replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "initial_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, batch * 3 // 4),
        }
    else:
        options["num_replicas"] = replicas
    return serve.deployment(ingress, **options).bind(plan)


def check_flags(args: argparse.Namespace) -> tuple[int, int]:
    replicas = args.replicas if args.replicas is not None else 1
    max_replicas = args.max_replicas if args.max_replicas is not None else replicas
    if replicas < 1:
        raise OvchatError(f"--replicas must be at least 1, not {replicas}")
    if max_replicas < replicas:
        raise OvchatError(f"--max-replicas ({max_replicas}) must be at least --replicas ({replicas})")
    if args.backend != "batched":
        raise OvchatError("--ray serves the batched loop (each replica one batched engine); drop --backend")
    return replicas, max_replicas


def run(args: argparse.Namespace, plan: ReplicaPlan, batch: int) -> int:
    """Deploy on Ray Serve, wait for the replicas, then serve until interrupted."""
    from ovchat.extras import require_ray_extra

    require_ray_extra()
    import ray
    from ray import serve

    replicas, max_replicas = check_flags(args)
    started_cluster = args.ray_address is None
    # A SIGTERM (a service manager, a test's teardown) must end as Ctrl-C does: the replicas and a local cluster
    # are other processes, which would be left running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ray.init(
            address=args.ray_address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
            namespace="ovchat",
        )  # fmt: skip
    except Exception as error:
        where = args.ray_address or "a local cluster"
        raise OvchatError(f"could not start or reach Ray at {where}: {str(error).splitlines()[0]}") from None
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(deployment(plan, replicas, max_replicas, batch), name=APP_NAME, route_prefix="/", blocking=False)
        wait_until_ready(f"http://{args.host}:{args.port}", replicas)
        print(
            f"ovchat serve: ready: http://{args.host}:{args.port}/v1 serving {plan.model_name} on Ray Serve "
            f"({replicas}-{max_replicas} replicas, {batch} requests each)",
            file=sys.stderr,
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            if started_cluster:
                serve.shutdown()
        finally:
            ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def wait_until_ready(url: str, replicas: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until ``/health`` answers 200 (a replica has loaded its model) and Serve counts ``replicas`` running."""
    import urllib.error
    import urllib.request

    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                healthy = response.status == 200
        except (urllib.error.URLError, OSError):
            healthy = False
        status = serve.status().applications.get(APP_NAME)
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            raise OvchatError(f"Ray Serve could not deploy the model: {status.message.splitlines()[0]}")
        running = 0
        if status is not None and DEPLOYMENT_NAME in status.deployments:
            running = status.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)
        if healthy and running >= replicas:
            return
        time.sleep(1)
    raise OvchatError(f"the replicas were not ready in {timeout_s:.0f} s")


def replica_plan(args: argparse.Namespace, folder: Path, engine_options: dict[str, Any] | None) -> ReplicaPlan:
    """What every replica loads; the address, port and key checked as for ``ovchat serve``."""
    from ovchat.server.command import check_exposure

    api_key = check_exposure(args)
    check_flags(args)
    return ReplicaPlan(
        folder=str(folder.resolve()),
        model_name=args.model_name or folder.name,
        device=args.device,
        template=args.template,
        backend=args.backend,
        engine_options=dict(engine_options or {}),
        api_key=api_key,
        max_requests=args.max_requests,
    )
