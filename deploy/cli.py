"""``lineinspect export`` and ``lineinspect serve-triton``.

They live in deploy/ because they wire the inference packages into deployment artefacts (a Triton
model repository, the pytriton server): deploy depends on inference, never the other way round."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lineinspect.errors import ConfigError
from lineinspect.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model dir to ONNX (and optionally a Triton model repository)",
                       description="Export the whole model (normalisation, encoder, INP-Former head, anomaly map, "
                                   "score) to ONNX with a dynamic batch axis. Without --out it lands in the model "
                                   "dir as model.onnx and is reused until the weights change.")
    p.add_argument("--model", required=True, type=Path, help="model directory (weights.pt, config.json, ...)")
    p.add_argument("--out", type=Path, default=None, help="ONNX file (default MODEL/model.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--force", action="store_true", help="export again even if a fresh export exists")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantised model.int8.onnx")
    p.add_argument("--triton-repo", type=Path, default=None,
                   help="also write DIR/<name>/<version>/model.onnx + DIR/<name>/config.pbtxt for a standalone "
                        "Triton (load with: tritonserver --model-repository DIR --model-control-mode explicit "
                        "--load-model <name>)")
    p.add_argument("--product", default=None, help="product name for the Triton model name inp_<product>")
    p.add_argument("--version", type=int, default=1, help="Triton model version folder (integer)")
    p.add_argument("--max-batch", type=int, default=None, help="Triton max_batch_size (default settings.triton_max_batch)")
    p.add_argument("--queue-delay-us", type=int, default=None, help="dynamic batching max queue delay")
    p.add_argument("--instances", type=int, default=1, help="instance_group count")
    p.add_argument("--instance-kind", default="KIND_GPU", choices=("KIND_GPU", "KIND_CPU", "KIND_AUTO"))
    p.set_defaults(func=run_export)

    s = sub.add_parser("serve-triton", help="serve every product's active model on Triton (pytriton), with hot swap",
                       description="One Triton model inp_<product> per product with an active registry version, "
                                   "running the ONNX Runtime session in the Python backend; dynamic batching; "
                                   "health (/v2/health/ready), metrics (/metrics) on 127.0.0.1. SIGTERM stops it.")
    s.add_argument("--models", type=Path, default=None, help="registry models folder (default settings models_dir)")
    s.add_argument("--db", default=None, help="registry database URL (default settings db_url)")
    s.add_argument("--model", action="append", default=[], metavar="PRODUCT=MODEL_DIR",
                   help="serve a fixed model dir instead of the registry (repeatable)")
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("--http-port", type=int, default=None)
    s.add_argument("--grpc-port", type=int, default=None)
    s.add_argument("--metrics-port", type=int, default=None)
    s.add_argument("--max-batch", type=int, default=None)
    s.add_argument("--queue-delay-us", type=int, default=None)
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per model (0 = all cores)")
    s.add_argument("--poll-s", type=float, default=5.0, help="how often to check the registry for promotions")
    s.set_defaults(func=run_serve)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    from inference.onnx_export import export_onnx

    settings = settings.with_overrides(triton_max_batch=args.max_batch, triton_queue_delay_us=args.queue_delay_us)
    if args.instances < 1 or args.version < 1:
        raise ConfigError(f"--instances and --version must be >= 1 (got {args.instances} and {args.version})")
    path = export_onnx(args.model, args.out, opset=args.opset, force=args.force)
    print(f"onnx: {path}")
    if args.int8:
        from inference.quantize import quantize_dynamic_int8

        print(f"int8: {quantize_dynamic_int8(path)}")
    if args.triton_repo is not None:
        from deploy.triton_repo import write_triton_repo

        folder = write_triton_repo(args.model, args.triton_repo, product=args.product, version=args.version,
                                   max_batch=settings.triton_max_batch,
                                   queue_delay_us=settings.triton_queue_delay_us, instances=args.instances,
                                   kind=args.instance_kind)
        print(f"triton model: {folder}")
        print(f"start: tritonserver --model-repository {args.triton_repo} --model-control-mode explicit "
              f"--load-model {folder.name}")
    return 0


def _parse_pairs(pairs: list[str]) -> dict[str, Path]:
    out = {}
    for item in pairs:
        product, sep, path = item.partition("=")
        if not sep or not product or not path:
            raise ConfigError(f"--model expects PRODUCT=MODEL_DIR, got {item!r}")
        out[product] = Path(path)
    return out


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.triton_server import ServerConfig, TritonModelServer, registry_source, static_source

    settings = settings.with_overrides(triton_max_batch=args.max_batch, triton_queue_delay_us=args.queue_delay_us)
    if args.model:
        source = static_source(_parse_pairs(args.model))
    else:
        if args.models is not None and not Path(args.models).is_dir():
            raise ConfigError(f"--models {args.models} is not a folder (the model registry's models folder)")
        settings = settings.with_overrides(models_dir=args.models, db_url=args.db)
        source = registry_source(settings)

    def pick(v: Any, d: Any) -> Any:
        return d if v is None else v

    cfg = ServerConfig(http_port=pick(args.http_port, settings.triton_http_port),
                       grpc_port=pick(args.grpc_port, settings.triton_grpc_port),
                       metrics_port=pick(args.metrics_port, settings.triton_metrics_port), address=args.address,
                       max_batch=settings.triton_max_batch, queue_delay_us=settings.triton_queue_delay_us,
                       threads=pick(args.threads, settings.threads), poll_s=args.poll_s)
    server = TritonModelServer(source, cfg).start()
    print(f"serving {', '.join(f'{p}={s.version}' for p, s in server.slots.items())} on http://{cfg.address}:"
          f"{cfg.http_port} grpc {cfg.address}:{cfg.grpc_port} metrics http://{cfg.address}:{cfg.metrics_port}/metrics",
          flush=True)
    server.serve_forever()
    return 0
