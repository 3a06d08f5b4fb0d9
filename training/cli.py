"""``lineinspect train`` and ``lineinspect eval``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineinspect.errors import ConfigError
from lineinspect.logs import kv
from training.presets import MODEL_FIELDS, PRESETS, resolve

# inference.model.inp_former.MEMORY_METRICS, repeated so that building the parser does not import torch (a test
# keeps the two equal)
MEMORY_METRIC_CHOICES = ("l2", "cos", "cos+l2")

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from lineinspect.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an INP-Former model for one or more products (categories)")
    p.add_argument("--data", type=Path, default=None, help="MVTec-layout data root (default LINEINSPECT_DATA)")
    p.add_argument("--category", action="append", required=True,
                   help="category, e.g. mvtec_3d_ad/tire (relative to --data); repeat to train one unified model")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=256, help="square model input size in pixels (multiple of 32)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: TrainConfig.iters)")
    p.add_argument("--few-shot", type=int, default=0, help="train on K images with augmentation")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="measured recipe (RESULTS.md, quality; default: the model_preset setting, 'fast'): 'fast' = "
                        "the pure INP-Former (~0.6x the encoder's ORT rate, below the strongest kNN bank); "
                        "'accurate' = + the paired memory, cosine and Euclidean banks of 1024 entries, weight 2 (above "
                        "the strongest kNN bank on all three metrics, ~0.41x). The --width, --decoder-blocks and "
                        "--memory-* flags override the preset's values")
    p.add_argument("--width", type=int, default=None,
                   help="INP-Former token width (the projection, prototypes and decoder; a multiple of 32); default: "
                        "the preset's (128). 64: a cheaper decoder, a weaker reconstruction alone (RESULTS.md, quality)")
    p.add_argument("--decoder-blocks", type=int, default=None,
                   help="INP-Former decoder blocks, a multiple of the feature groups (2); default: the preset's (4). "
                        "2 blocks: ~0.68x the encoder's rate instead of 0.61x, and less accurate (RESULTS.md, quality)")
    p.add_argument("--memory-size", type=int, default=None,
                   help="INP-Former + extrinsic memory: a greedy coreset of N normal patches whose distance map is "
                        "fused with the reconstruction map (0 = the pure INP-Former; default: the preset's)")
    p.add_argument("--memory-weight", type=float, default=None,
                   help="weight of the standardised memory map in the sum (the reconstruction map counts 1; default 1)")
    p.add_argument("--memory-k", type=int, default=None,
                   help="a patch's memory distance = mean distance to its K nearest entries (default 3)")
    p.add_argument("--memory-metric", choices=MEMORY_METRIC_CHOICES, default=None,
                   help="memory distance: Euclidean (l2, the default), of unit vectors (cos), or both: two banks of "
                        "--memory-size entries, cosine 1-NN and Euclidean K-NN, their standardised distances summed "
                        "(cos+l2)")
    p.add_argument("--memory-dims", type=int, default=None,
                   help="measure memory distances on the top N principal axes of the training patches (cheaper graph; "
                        "0 = all channels, the default)")
    p.add_argument("--residual-head", type=int, default=0,
                   help="INP-Former++ residual head: a small segmentation net with N hidden channels trained on "
                        "pseudo-anomalies after the main model, its mask fused with the map (0 = off, the default; "
                        "benchmarks/results/residual.json)")
    p.add_argument("--residual-weight", type=float, default=1.0,
                   help="weight of the standardised residual-head mask in the sum (the base map counts 1)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cuda (the model dir is device-free)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--tile", action="store_true",
                   help="train on random --size crops of the full-resolution images (for tiled inference)")
    p.add_argument("--tiles-per-image", type=int, default=16, help="random crops per image with --tile")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a model directory on a category's test split")
    e.add_argument("--model", type=Path, required=False, help="model directory")
    e.add_argument("--data", type=Path, default=None)
    e.add_argument("--category", required=True)
    e.add_argument("--json", type=Path, default=None, help="write metrics JSON here")
    e.add_argument("--zero-shot", action="store_true", help="evaluate the zero-shot engine instead of a model")
    e.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from inference.model.inp_former import InpConfig
    from training.data import load_split
    from training.features import ImageSource
    from training.train import TrainConfig, train

    root = Path(args.data or settings.data)
    if args.size % 32:
        raise ConfigError(f"--size must be a multiple of 32 (got {args.size})")
    if args.iters is not None and args.iters < 1:
        raise ConfigError(f"--iters must be >= 1 (got {args.iters})")
    if args.few_shot < 0:
        raise ConfigError(f"--few-shot must be >= 1 images, or 0 for the whole training set (got {args.few_shot})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a directory")
    fit: list[Path] = []
    held: list[Path] = []
    from training.data import hold_out

    try:
        recipe = resolve(getattr(args, "preset", None) or settings.model_preset,
                         {k: getattr(args, k, None) for k in MODEL_FIELDS})
        model_cfg = InpConfig(backbone=args.backbone, input_hw=(args.size, args.size), **recipe,
                              residual_head=getattr(args, "residual_head", 0),
                              residual_weight=getattr(args, "residual_weight", 1.0))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = TrainConfig(model=model_cfg,
                      few_shot=args.few_shot, threads=settings.threads, device=_device(args.device),
                      threshold_quantile=settings.threshold_quantile,
                      cache_dir=str(Path(settings.home) / "cache" / "features"), categories=list(args.category))
    for cat in args.category:
        split = load_split(root, cat, "train")
        kept, out = hold_out(split.items, cfg.holdout, args.seed)
        fit += [it.path for it in kept]
        held += [it.path for it in out]
    check_calibration_count(len(held), len(fit) + len(held))
    if args.few_shot >= len(fit):
        raise ConfigError(f"--few-shot {args.few_shot} is not a few shots: there are {len(fit)} training images after "
                          "the hold-out; leave --few-shot out to train on all of them")
    extra: dict[str, Any] = {"data_root": str(root)}
    fit_src: list[ImageSource] = list(fit)
    held_src: list[ImageSource] = list(held)
    if getattr(args, "tile", False):
        from training.tiles import crops_from_images

        fit_src = list(crops_from_images(fit, args.size, args.tiles_per_image, args.seed))
        held_src = list(crops_from_images(held, args.size, args.tiles_per_image, args.seed + 1)) if held else []
        extra["tiled"] = {"tile": args.size, "tiles_per_image": args.tiles_per_image}
    out_dir = train(fit_src, cfg, args.out, iters=args.iters, seed=args.seed, resume=not args.no_resume,
                    calibration_images=held_src, extra_config=extra)
    print(out_dir)
    return 0


MIN_CALIBRATION_IMAGES = 2   # a threshold from fewer held-out normals is a guess
WARN_CALIBRATION_IMAGES = 20  # below this the threshold quantile rests on a handful of scores


def check_calibration_count(held: int, total: int) -> None:
    """Refuse to calibrate the threshold on fewer than 2 held-out normal images; warn below ~20."""
    if held < MIN_CALIBRATION_IMAGES:
        raise ConfigError(f"only {held} of {total} normal training images would be held out to calibrate the "
                          f"threshold; at least {MIN_CALIBRATION_IMAGES} are needed (add normal images: with the "
                          f"default 15 % hold-out that is about {int(MIN_CALIBRATION_IMAGES / 0.15) + 1} images)")
    if held < WARN_CALIBRATION_IMAGES:
        log.warning("few held-out normal images calibrate the threshold; expect false alarms or misses until "
                    "more normal data is added", extra=kv(held_out=held, images=total,
                                                          recommended=WARN_CALIBRATION_IMAGES))


def _device(name: str) -> str:
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU here (train on cpu, or install a CUDA build of torch)")
    return str(dev)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from training.evaluate import run_eval as _run_eval

    if not args.zero_shot and args.model is None:
        raise ConfigError("eval needs --model DIR (or --zero-shot)")
    return int(_run_eval(args, settings))
