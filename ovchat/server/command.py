"""``ovchat serve``: its flags, the safety check on the address, and running uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ovchat.engine.backends import BATCH_LOOP_OPTION, BATCH_LOOPS, DEFAULT_BATCH_LOOP, SCHEDULER_OPTION
from ovchat.errors import OvchatError
from ovchat.server import DEFAULT_MAX_REQUESTS, DEFAULT_WRITE_TIMEOUT_S

if TYPE_CHECKING:
    from ovchat.engine import Engine

API_KEY_ENV = "OVCHAT_API_KEY"
MAX_WRITE_TIMEOUT_S = 86400  # a day: a client silent for longer is gone
MAX_KV_CACHE_GB = 4096


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--api-key", help=f"clients must send it as a Bearer token (default: ${API_KEY_ENV})")
    serve.add_argument("--allow-no-key", action="store_true", help="serve on a non-loopback address without an API key")
    serve.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000; * for any) call the API from a browser "
        "(repeatable; default: none, requests from web pages are refused)",
    )  # fmt: skip
    serve.add_argument(
        "--write-timeout", type=float, metavar="SECONDS",
        help="drop a client whose connection accepts none of its reply for this long, cancelling the reply "
        f"(default: {DEFAULT_WRITE_TIMEOUT_S:g})",
    )  # fmt: skip
    serve.add_argument("--model-name", help="the model's name in the API (default: the model folder's name)")
    serve.add_argument(
        "--parallel",
        type=int,
        help="replies the batched loop generates at once; more wait their turn (default: the loop's own)",
    )
    serve.add_argument(
        "--kv-cache", type=int, metavar="GB",
        help="memory for the KV cache, which keeps finished replies' keys and values so that a chat's next turn "
        "reads only its new message; the server's memory grows by up to this as it fills, then stays. "
        "0: only what the replies being made need (less memory, fewer turns reused) "
        "(default: room for --parallel replies of the model's context, at most a quarter of free memory)",
    )  # fmt: skip
    serve.add_argument(
        "--batch-loop",
        choices=BATCH_LOOPS,
        help="where the batched loop steps the model: its own process, or a thread of the server's "
        f"(default: {DEFAULT_BATCH_LOOP}; a thread keeps Python's lock during each step)",
    )
    ray = serve.add_argument_group("scaling out on Ray Serve (the 'ray' extra)")
    ray.add_argument("--ray", action="store_true", help="serve the same API as a Ray Serve deployment of replicas")
    ray.add_argument("--replicas", type=int, metavar="N", help="--ray: replicas to keep running (default: 1)")
    ray.add_argument(
        "--max-replicas", type=int, metavar="N",
        help="--ray: let Ray Serve's autoscaler add replicas up to N when each holds a full batch "
        "(default: --replicas)",
    )  # fmt: skip
    ray.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="--ray: join this Ray cluster (e.g. 10.0.0.5:6379, started with `ray start --head`) instead of starting "
        "a local one",
    )  # fmt: skip
    serve.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help=f"requests generating or waiting at once; more are refused with 503 (default: {DEFAULT_MAX_REQUESTS})",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """OpenVINO and scheduler options for the engine the server loads."""
    options: dict[str, Any] = {}
    scheduler: dict[str, int] = {}
    if args.parallel is not None:
        if args.parallel < 1:
            raise OvchatError(f"--parallel must be at least 1, not {args.parallel}")
        scheduler["max_num_seqs"] = args.parallel
    if args.kv_cache is not None:
        if not 0 <= args.kv_cache <= MAX_KV_CACHE_GB:
            raise OvchatError(f"--kv-cache must be in 0-{MAX_KV_CACHE_GB} GB, not {args.kv_cache}")
        scheduler["cache_size"] = args.kv_cache  # with no block count, 0 is openvino-genai's growing cache
    if scheduler:
        options[SCHEDULER_OPTION] = scheduler
    if args.batch_loop is not None:
        options[BATCH_LOOP_OPTION] = args.batch_loop
    if options and args.backend != "batched":
        given = (("--parallel", args.parallel), ("--kv-cache", args.kv_cache), ("--batch-loop", args.batch_loop))
        flags = " and ".join(flag for flag, value in given if value is not None)
        raise OvchatError(f"{flags} set the batched loop; the {args.backend} loop makes one reply at a time")
    return options or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(args: argparse.Namespace) -> str | None:
    """The API key, after refusing an open server off this machine and flags out of range."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None and not args.allow_no_key:
        raise OvchatError(
            f"serving on {args.host} without an API key would let anyone who can reach it use the model; "
            f"pass --api-key KEY (or set {API_KEY_ENV}), or --allow-no-key to serve it open"
        )
    if not 0 < args.port < 65536:
        raise OvchatError(f"--port must be in 1-65535, not {args.port}")
    if args.max_requests < 1:
        raise OvchatError(f"--max-requests must be at least 1, not {args.max_requests}")
    for origin in args.cors_origin:
        check_origin(origin)
    if args.write_timeout is not None and not 0 < args.write_timeout <= MAX_WRITE_TIMEOUT_S:
        raise OvchatError(f"--write-timeout must be in (0, {MAX_WRITE_TIMEOUT_S}] seconds, not {args.write_timeout:g}")
    if getattr(args, "ray", False) and (args.cors_origin or args.write_timeout is not None):
        raise OvchatError("--cors-origin and --write-timeout apply without --ray only")
    return api_key


def check_origin(origin: str) -> None:
    """``origin`` as a browser sends it (``scheme://host[:port]``, nothing after it), or ``*``."""
    if origin == "*":
        return
    parts = urlsplit(origin)
    if not (parts.scheme and parts.netloc) or parts.path or parts.query or parts.fragment:
        raise OvchatError(
            f"--cors-origin takes a web page's origin, scheme://host[:port] with nothing after it "
            f"(e.g. http://localhost:3000), or *; not {origin!r}"
        )


def run(args: argparse.Namespace, folder: Path, load: Callable[[], Engine]) -> int:
    """Serve ``load()``'s engine on ``args.host``:``args.port`` until interrupted."""
    import uvicorn

    from ovchat.server.app import create_app

    api_key = check_exposure(args)
    model = args.model_name or folder.name
    try:
        # Bound here, before the model loads, so a taken port is one clear line, not uvicorn's log.
        listener = socket.create_server((args.host, args.port), family=_family(args.host))
    except OSError as error:
        raise OvchatError(f"could not listen on {args.host}:{args.port}: {error.strerror or error}") from None
    drop_stalled_clients(listener, args.write_timeout if args.write_timeout is not None else DEFAULT_WRITE_TIMEOUT_S)
    failure: list[str] = []
    server: uvicorn.Server | None = None

    loaded: list[Engine] = []

    def load_and_keep() -> Engine:
        loaded.append(load())
        return loaded[0]

    def on_ready(error: str | None) -> None:
        if error is None:
            print(
                f"ovchat serve: ready: http://{args.host}:{args.port}/v1 serving {model}", file=sys.stderr, flush=True
            )
            if (cache := kv_cache_line(loaded[0])) is not None:
                print(f"ovchat serve: {cache}", file=sys.stderr, flush=True)
            return
        failure.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(
        load_and_keep, model, api_key=api_key, max_requests=args.max_requests, on_ready=on_ready,
        cors_origins=args.cors_origin,
    )  # fmt: skip
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(f"ovchat serve: loading {folder.name}; http://{args.host}:{args.port}/health says when it is ready",
          file=sys.stderr, flush=True)  # fmt: skip
    server.run(sockets=[listener])
    if failure:
        raise OvchatError(failure[0])
    return 0


def kv_cache_line(engine: Engine) -> str | None:
    """What the batched loop's KV cache may take, for whoever watches the server's memory."""
    size = getattr(engine.backend, "kv_cache_gb", None)
    if size is None:
        return None
    if size == 0:
        return "the KV cache grows with the replies being made (--kv-cache 0)"
    return (
        f"KV cache {size} GB: the server's memory grows by up to that as finished replies are kept for reuse, "
        "then stays (--kv-cache sets it)"
    )


def drop_stalled_clients(listener: socket.socket, timeout_s: float) -> None:
    """Connections accepted from ``listener`` are dropped by the kernel when what the server sent stays
    unacknowledged, or unsent because the client's window is shut (it stopped reading), for ``timeout_s``.

    A client that never reads its streamed reply would otherwise keep its connection, and the reply
    queued for it, for as long as it stays connected: uvicorn waits for the client to drain its buffer
    (back-pressure) with no timeout. When the kernel drops it, uvicorn sees the connection lost and the
    reply is cancelled as for any disconnect. Linux only (TCP_USER_TIMEOUT); elsewhere nothing changes.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:  # accepted sockets inherit it
        listener.setsockopt(socket.IPPROTO_TCP, option, max(1, round(timeout_s * 1000)))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
