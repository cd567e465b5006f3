"""miniImageNet MAML speed and memory on this machine: the paper's presets, first and
second order, `algo.remat` off and on.

    python benchmarks/mini_imagenet_speed.py           # RESULTS_mini_imagenet.md
    python benchmarks/mini_imagenet_speed.py --quick   # fewer steps
    python benchmarks/mini_imagenet_speed.py --images <root>  # your real images

Without `--images`, a stand-in is generated once (`--standin`, default
/tmp/metalearn-mini-standin): 60,000 84x84 JPEGs of random colour patterns under the
Ravi & Larochelle split's own file names, so the data on the device has
miniImageNet's exact size (the speed of a meta-step does not depend on what the
pixels show). Its first conversion into the image cache is timed too.

Each configuration runs in its own process (`benchmarks/ours.py`, the training window
`train.py` compiles): meta-steps/s over `--steps` steps (compilation excluded),
compile time, the compiled program's memory (XLA's analysis: temporaries plus
arguments, i.e. with the dataset) and the process's peak resident memory.
"""

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
from throughput import jax_device, measure

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from metalearn.tasks.mini_imagenet import ravi_split_dir  # noqa: E402

PRESETS = {
    "5w1s": "maml_paper_mini_imagenet_5w1s",
    "5w5s": "maml_paper_mini_imagenet_5w5s",
}


def write_standin(root: Path) -> None:
    """60,000 generated JPEGs named as the Ravi split names them, in `root/images`."""
    from PIL import Image

    images = root / "images"
    if (images / ".complete").exists():
        return
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        with (ravi_split_dir() / f"{split}.csv").open() as f:
            rows = list(csv.reader(f))[1:]
        for filename, _ in rows:
            pattern = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            image = Image.fromarray(pattern).resize((84, 84), Image.Resampling.BILINEAR)
            image.save(images / filename, quality=90)
    (images / ".complete").touch()


def time_conversion(data_root: Path, images: Path) -> float:
    """Seconds to build both families from scratch (conversion into the cache)."""
    start = time.perf_counter()
    command = [sys.executable, "-c", _BUILD, str(data_root), str(images)]
    measure(command)
    return time.perf_counter() - start


_BUILD = """
import sys
from metalearn.tasks import TASKS
TASKS.create("mini_imagenet", sys.argv[1], root=sys.argv[2])
"""


def ours(preset: str, order: str, remat: bool, steps: int, data_root, images) -> dict:
    command = [sys.executable, str(HERE / "ours.py"), "--steps", str(steps)]
    command += [f"experiment={PRESETS[preset]}", f"data.root={data_root}"]
    command += [f"task.root={images}", "train.log_every=5"]
    command += ["algo=fomaml" if order == "first" else "algo=maml"]
    command += [f"algo.remat={str(remat).lower()}"]
    return measure(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="miniImageNet's images (root)")
    parser.add_argument(
        "--standin", type=Path, default=Path("/tmp/metalearn-mini-standin")
    )
    parser.add_argument("--steps", type=int, default=20, help="meta-steps timed")
    parser.add_argument("--quick", action="store_true", help="5 steps, 5w1s only")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_mini_imagenet.md")
    args = parser.parse_args()
    steps = 5 if args.quick else args.steps
    data_root = args.standin / "data"
    if args.images is None:
        write_standin(args.standin)
        images = args.standin
    else:
        images = args.images
    conversion = None
    if not (data_root / "image_cache").exists():
        conversion = time_conversion(data_root, images)
    lines = [
        "# miniImageNet MAML on this machine: speed and memory",
        "",
        f"`python benchmarks/mini_imagenet_speed.py{' --quick' if args.quick else ''}`"
        f" on {platform.machine()}, {jax_device()}; "
        f"{'generated stand-in' if args.images is None else 'real images'}. "
        f"{steps} meta-steps timed per row, compilation apart.",
        "",
    ]
    if conversion is not None:
        lines += [f"First conversion of the 60,000 images: {conversion:.0f} s.", ""]
    lines += [
        "| preset | order | remat | meta-steps/s | compile s | program MB "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset in PRESETS if not args.quick else ["5w1s"]:
        for order in ("second", "first"):
            for remat in (False, True):
                result = ours(preset, order, remat, steps, data_root, images)
                lines.append(
                    f"| {preset} | {order} | {'on' if remat else 'off'} "
                    f"| {result['steps_per_s']:.2f} | {result['compile_s']:.0f} "
                    f"| {result['program_mb']:.0f} | {result['peak_rss_mb']:.0f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
