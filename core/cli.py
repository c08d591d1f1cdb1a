"""The `corral` command. `corral cluster` is the library's own; the service adds its
subcommands (serve, worker, migrate, ...) through the `corral.commands` entry-point group."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from core.budget import format_duration, parse_duration
from core.config import BACKBONES, DEFAULT_METHOD, METHOD_NAMES, ClusterConfig
from core.errors import InvalidInput
from core.result import Progress


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # bad input: one line, no traceback
        print(f"corral: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncorral: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="Unsupervised image clustering.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_cluster_command(commands)
    for entry in entry_points(group="corral.commands"):
        entry.load()(commands)
    return parser


def add_cluster_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = commands.add_parser("cluster", help="cluster a folder or archive of images locally")
    cmd.add_argument("path", type=Path, help="folder, zip or tar(.gz) of images")
    cmd.add_argument("--k", type=_k, default=None,
                     help="number of clusters; 'auto' or omitted: chosen after training, in 2..--k-max")
    cmd.add_argument("--k-max", type=int, default=None,
                     help=f"the largest k tried when k is chosen (default {ClusterConfig.k_max}, capped at the "
                          "image count)")
    cmd.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD,
                     help="auto (default): IMC-SwAV, or MMDC where a short run on grey-scale images leaves "
                          "IMC-SwAV too few steps")
    cmd.add_argument("--epochs", type=int, default=None, help="default: fitted to --time, else the method's")
    add_time_argument(cmd)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--batch-size", type=int, default=None)
    cmd.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cmd.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    cmd.add_argument("--image-size", type=int, default=None, help="working size in px (default: auto)")
    cmd.add_argument("--backbone", choices=BACKBONES, default="auto",
                     help="auto: the small VGG for images up to 32 px that are grey-scale or on a CPU, "
                          "else ResNet-18")
    cmd.add_argument("--out", type=Path, default=None, help="write path,cluster,confidence CSV here")
    cmd.add_argument("--checkpoint", type=Path, default=None, help="save/resume training state here")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(func=run_cluster)


def add_time_argument(cmd: argparse.ArgumentParser) -> None:
    """--time: the job's time budget (`corral cluster` and `corral submit`)."""
    cmd.add_argument("--time", type=_duration, default=None, metavar="DURATION",
                     help="time budget for training, e.g. 600, 90s, 10m or 1h: the epochs are fitted to it "
                          "(--epochs wins); on a CPU the default is 10m at most 50 epochs")


def _k(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of clusters; give an integer or auto") from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:  # argparse prints it as one usage line and exits 2
        raise argparse.ArgumentTypeError(str(error)) from None


def run_cluster(args: argparse.Namespace) -> int:
    from core.data.images import read_images  # torch is imported only when needed
    from core.pipeline import cluster

    if args.k is not None and args.k_max is not None:  # as the API answers it (422)
        raise InvalidInput("--k-max applies only when k is chosen: omit --k (or pass --k auto)")
    k_max = ClusterConfig.k_max if args.k_max is None else args.k_max
    config = ClusterConfig(k=args.k, k_max=k_max, method=args.method, epochs=args.epochs,
                           time_budget_s=args.time, seed=args.seed, batch_size=args.batch_size,
                           image_size=args.image_size, precision=args.precision, backbone=args.backbone)
    config.validate()
    image_set = read_images(args.path, image_size=args.image_size)
    for path, reason in image_set.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not image_set.paths:
        raise InvalidInput(f"no readable image in {args.path}")
    bar = None if args.quiet else ProgressBar()
    result = cluster(image_set.images, config, labels=image_set.labels, device=args.device,
                     on_progress=bar, checkpoint=args.checkpoint)
    if bar is not None:
        bar.close()
    k = len(result.centres)
    sizes = [int((result.labels == c).sum()) for c in range(k)]
    print(f"{len(image_set.paths)} images -> {k} clusters of sizes {sizes} by {result.config.method} "
          f"on {result.device} "
          f"in {result.timings['total']:.1f} s" + (f" ({len(result.history)} epochs)" if result.history else ""))
    if result.k_choice is not None:
        choice = result.k_choice
        print(f"k={k} chosen by the {choice.criterion} score, the best of k = 2..{choice.k_max}")
    if result.metrics is not None:
        m = result.metrics
        print(f"against the {len(image_set.class_names)} folders: "
              f"ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}")
    if args.out is not None:
        write_csv(args.out, image_set.paths, result.labels.tolist(), result.confidences.tolist())
        print(f"wrote {args.out}")
    return 0


def write_csv(out: Path, paths: list[str], labels: list[int], confidences: list[float]) -> None:
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "cluster", "confidence"])
        for path, label, confidence in zip(paths, labels, confidences, strict=True):
            writer.writerow([path, label, f"{confidence:.6f}"])


class ProgressBar:
    """One self-rewriting line on stderr: stage, epoch, loss, images/s, ETA."""

    def __init__(self, width: int = 24) -> None:
        self.width, self.started, self.first_epoch = width, time.perf_counter(), None
        self.images_per_s = 0.0

    def __call__(self, progress: Progress) -> None:
        if self.first_epoch is None:
            self.first_epoch = progress.epoch  # a resumed run starts counting here
        self.images_per_s = progress.metrics.get("images_per_s", self.images_per_s)
        done = progress.epoch / progress.epochs if progress.epochs else 1.0
        filled = int(done * self.width)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {progress.stage:<10} " \
               f"epoch {progress.epoch}/{progress.epochs}"
        if "loss" in progress.metrics:
            line += f"  loss {progress.metrics['loss']:.4f}"
        if self.images_per_s:
            line += f"  {self.images_per_s:,.0f} img/s"
        line += f"  ETA {self._eta(progress)}"
        print(line.ljust(100), end="", file=sys.stderr, flush=True)

    def _eta(self, progress: Progress) -> str:
        if "eta_s" in progress.metrics:  # a budgeted run's plan
            return format_duration(progress.metrics["eta_s"])
        trained = progress.epoch - (self.first_epoch or 0)
        if trained <= 0 or progress.epochs <= progress.epoch:
            return "--" if progress.epochs > progress.epoch else "0s"
        return format_duration((time.perf_counter() - self.started) / trained * (progress.epochs - progress.epoch))

    def close(self) -> None:
        print(file=sys.stderr)
if __name__ == "__main__":
    raise SystemExit(main())
