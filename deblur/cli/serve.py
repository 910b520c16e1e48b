"""Run the deblur HTTP endpoint on Ray Serve (a local Ray, or the cluster at $RAY_ADDRESS) until Ctrl-C or SIGTERM.

  deblur serve                                             # the shipped model at http://127.0.0.1:8000/
  deblur serve --model runs/sample                         # a model you trained
  deblur serve --model s3://b/models/gopro --engine tensorrt --num-gpus 1 --max-replicas 4 --host 0.0.0.0
  DEBLUR_API_TOKEN=... deblur serve ...                    # bearer-token auth on
  python jobs/serve.py ...                                 # a checkout: the same options

POST an image to /v1/deblur (a raw body or a multipart form) for the deblurred image; / is an upload page.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:

    p = common.parser(__doc__, prog)
    common.add_model_argument(p)
    common.add_engine_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 only behind a proxy you trust)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, help="default: as many replicas as the cluster's nodes hold")
    p.add_argument("--num-cpus", type=float, help="CPUs (and engine threads) per replica (default: a whole node's)")
    common.add_gpus_argument(p, "--num-gpus", "model replica")
    p.add_argument("--max-batch-size", type=int, help="default: 8 on a GPU, 1 on CPU (one image fills the cores)")
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--request-timeout-s", type=float, default=60.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from ray import serve

    from deblur.cluster_paths import check_shared, input_path
    from deblur.inference import check_engine_request
    from deblur.ray_env import init_ray
    from deblur.serve.app import AppArgs, build_app, node_resources, run, sized_to_nodes, start
    from deblur.serve.limits import configured_token

    args.model = input_path(args.model)
    configured_token()  # a token source that gives no token is one line here, not a replica crash loop
    check_engine_request(args.model, args.engine, args.precision, args.num_gpus, "--num-gpus")  # a wrong path too
    where = init_ray(announce=True)
    check_shared(reads={"--model": args.model})  # every replica loads it on its node
    common.resolve_gpus(args, "num_gpus", "--num-gpus", where)
    if where == "local":
        sized = sized_to_nodes(  # the replica's CPUs as the app will size them (unset: a node's, or its GPU share)
            AppArgs(model=args.model, num_cpus=args.num_cpus, num_gpus=args.num_gpus), node_resources()
        )
        common.check_local_ray(
            args.engine,
            args.precision,
            cpus=("--num-cpus", sized.num_cpus),
            gpus=("--num-gpus", args.num_gpus),
            at_once=("--min-replicas", args.min_replicas),  # serve.run waits until they all run
        )
    # docker stop, systemd, Kubernetes and `kill` stop with SIGTERM: the same orderly stop as Ctrl-C, or HAProxy
    # (Serve's ingress, not a Ray worker) outlives the job and keeps holding the port
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    haproxy = False
    try:
        env = start(args.host, args.port, args.request_timeout_s)
        haproxy = env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        app = build_app(
            {
                "model": args.model,
                "engine": args.engine,
                "precision": args.precision,
                "min_replicas": args.min_replicas,
                "max_replicas": args.max_replicas,
                "num_cpus": args.num_cpus,
                "num_gpus": args.num_gpus,
                "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": args.batch_wait_ms / 1000,
            }
        )
        run(app)
        ingress = "HAProxy" if haproxy else "Serve's proxy"
        print(
            f"serving {args.model} at http://{args.host}:{args.port}/ through {ingress} (docs at /docs); Ctrl-C stops",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # also while Serve starts or the app deploys: what Serve started so far stops too
        # behind HAProxy a replica stays reachable for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s by
        # default; a Ray of the job's own has the job's environment, a cluster its own) before it stops, so that
        # no HAProxy still routing to it sees a refused connection
        setting = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
        drain = f"{setting} s" if where == "local" else "30 s by default"
        print("stopping" + (f": the replica drains first ({drain})" if haproxy else ""), flush=True)
        serve.shutdown()
    except BaseException:
        if where == "local" and serve.status().proxies:  # the job's own Ray ends with it: its Serve goes first
            serve.shutdown()
        raise
    return 0
