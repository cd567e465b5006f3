"""learn2learn's MAML on Omniglot, timed: the PyTorch peer of the Omniglot benchmark.

    python benchmarks/peer_l2l.py --ways 5 --shots 1 --query 1 --batch 32 \\
        --inner-steps 1 --inner-lr 0.4 --order second --steps 100

Written the way learn2learn's examples write MAML (`examples/vision/maml_*.py`):
`l2l.algorithms.MAML` wraps the network; each meta-step loops over the meta-batch,
`clone()`s the learner, `adapt()`s it on the task's support set, backpropagates
the query loss into the initial weights, multiplies the summed gradients by
1/batch and takes an Adam step (lr 1e-3). Episodes are drawn on the host with
numpy at every meta-step. Install: the `peers` extra and the learn2learn build
recipe in benchmarks/PEERS.md.

It computes what metalearn's `experiment=maml_paper_omniglot_*` computes
(tests/test_peer.py checks the meta-loss and meta-gradient against metalearn's):

- Data: metalearn's prepared Omniglot (`metalearn.data.load_omniglot`: 28 px,
  ink = 1) and the MAML class split (`maml_split`, seed 0: the 1200 training
  characters). Each class of a task gets its own random rotation by a multiple of
  90 degrees (learn2learn's `RandomClassRotation` gives a whole task the last
  class's rotation, so its task transforms are not used), labels 0..N-1 go to the
  drawn classes in a random order, and K support and Q query drawings of each
  class are drawn without replacement.
- Loss, inner and outer: `per_class` (cross-entropy summed over a task's examples
  and divided by the examples per class, i.e. N x the mean: metalearn's default
  and the MAML reference code's, for which alpha 0.4 is tuned) or `mean`
  (learn2learn's examples).
- Network (`--net ours`, the default): learn2learn's `OmniglotCNN` layout (four
  blocks of [3x3 conv with stride 2 and padding 1, BatchNorm, ReLU], the spatial
  mean, a linear classifier), changed where it differs from metalearn's conv4:
  the convolutions have no bias (OmniglotCNN's have one: BatchNorm's batch mean
  cancels it, but it is a parameter that gets adapted); BatchNorm has an offset
  and no scale (`--bn-scale` adds one; OmniglotCNN has both), eps 1e-3
  (`--bn-eps`; OmniglotCNN 1e-5), and keeps no running statistics (OmniglotCNN's
  `BatchNorm2d` tracks them, though in training mode, the only mode used here, it
  normalises with the batch's own too); weights start Glorot-uniform and offsets
  and biases at 0 (OmniglotCNN: classifier weights N(0, 1), BatchNorm scales
  U(0, 1)). Padding needs no change: metalearn's `conv3x3` pads every side by 1,
  as `padding=1` does. `--net l2l` runs the stock `OmniglotCNN` instead.

`--device cuda` runs the network on the GPU (episodes are still drawn on the host,
then copied over, as learn2learn's examples do).

Prints one JSON line: meta-steps/s over the timed steps (the warm-up steps are
timed apart), peak RSS (and on a GPU torch's peak GPU memory), torch's threads,
versions.
"""

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.data import default_data_root, load_omniglot

DRAWERS = 20  # drawings of every Omniglot character
ROTATIONS = 4  # multiples of 90 degrees
MAML_TRAIN = 1200  # the MAML paper's training characters


def import_learn2learn():
    """`import learn2learn`, also where torchvision's C++ ops cannot load.

    learn2learn imports torchvision (for its data sets). The torchvision wheel that
    matches the CPU build of torch is built for CUDA: its ops library does not load
    without CUDA torch, and torchvision 0.28 then fails on import registering
    fake kernels for two ops that do not exist (`torchvision::nms`, `qnms`).
    Declaring those two ops first lets the rest of torchvision, which nothing here
    uses, import.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou) -> Tensor")
        import_learn2learn.library = library  # keep the declarations alive
    import learn2learn

    return learn2learn


l2l = import_learn2learn()


# --- data -----------------------------------------------------------------------


class Episode(NamedTuple):
    """One N-way task as torch tensors."""

    support_inputs: torch.Tensor  # [N*K, 1, S, S]
    support_targets: torch.Tensor  # [N*K]
    query_inputs: torch.Tensor  # [N*Q, 1, S, S]
    query_targets: torch.Tensor  # [N*Q]


def maml_train_characters(num_characters: int, seed: int) -> np.ndarray:
    """Rows of the MAML split's training characters: the first 1200 of a permutation
    drawn from `seed` (`metalearn.tasks.omniglot.maml_split`, which imports JAX)."""
    return np.random.default_rng(seed).permutation(num_characters)[:MAML_TRAIN]


def training_images(root: Path, split_seed: int = 0) -> np.ndarray:
    """The training characters' images `[1200, 20, 28, 28]` uint8, ink = 1."""
    images = load_omniglot(root, 28).images
    return images[maml_train_characters(len(images), split_seed)]


def sample_episode(
    rng: np.random.Generator, images: np.ndarray, ways: int, shots: int, query: int
) -> Episode:
    """An N-way task from `images [C, 20, S, S]`: N classes in a random order (label
    = position), each rotated by its own random multiple of 90 degrees, K + Q of
    its drawings (support first)."""
    classes = rng.choice(len(images), ways, replace=False)
    drawers = np.stack([rng.permutation(DRAWERS)[: shots + query] for _ in classes])
    turns = rng.integers(0, ROTATIONS, ways)
    chosen = images[classes[:, None], drawers]  # [N, K + Q, S, S]
    rotated = np.stack(
        [np.rot90(c, t, axes=(-2, -1)) for c, t in zip(chosen, turns, strict=True)]
    )
    inputs = torch.from_numpy(rotated.astype(np.float32)).unsqueeze(2)
    side = inputs.shape[2:]  # (1, S, S)
    labels = torch.arange(ways)
    return Episode(
        support_inputs=inputs[:, :shots].reshape(ways * shots, *side),
        support_targets=labels.repeat_interleave(shots),
        query_inputs=inputs[:, shots:].reshape(ways * query, *side),
        query_targets=labels.repeat_interleave(query),
    )


def to_device(episode: Episode, device: torch.device) -> Episode:
    """The episode's tensors on `device`."""
    return Episode(*(tensor.to(device) for tensor in episode))


# --- network --------------------------------------------------------------------


class BatchNorm(nn.Module):
    """BatchNorm on the current batch's statistics, always (no running statistics):
    an offset (`bias`) and, if `scale`, a scale (`weight`).

    Without a scale it passes a constant scale of ones, not `None`: torch's
    second derivative of `batch_norm` with no weight fails when the bias is
    differentiated ("Expected a proper Tensor but got None"), which second-order
    MAML does.
    """

    def __init__(self, channels: int, eps: float, scale: bool):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        if scale:
            self.weight = nn.Parameter(torch.ones(channels))
        else:
            self.register_buffer("weight", torch.ones(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, None, None, self.weight, self.bias, training=True, eps=self.eps
        )


class ConvBlock(nn.Module):
    """3x3 convolution with stride 2 and padding 1 (no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, filters: int, eps: float, scale: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, 3, stride=2, padding=1, bias=False)
        nn.init.xavier_uniform_(self.conv.weight)
        self.normalize = BatchNorm(filters, eps, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.normalize(self.conv(x)))


class Conv4(nn.Module):
    """metalearn's conv4 in learn2learn's `OmniglotCNN` layout: `base` (four
    blocks), the spatial mean, `classifier`. Inputs `[B, 1, S, S]`."""

    def __init__(self, ways: int, filters: int = 64, bn_scale=False, bn_eps=1e-3):
        super().__init__()
        self.base = nn.Sequential(
            ConvBlock(1, filters, bn_eps, bn_scale),
            *[ConvBlock(filters, filters, bn_eps, bn_scale) for _ in range(3)],
        )
        self.classifier = nn.Linear(filters, ways)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.base(x).mean(dim=(2, 3)))


def make_network(
    net: str, ways: int, filters: int = 64, bn_scale=False, bn_eps=1e-3
) -> nn.Module:
    """`ours`: `Conv4` (metalearn's conv4); `l2l`: learn2learn's stock
    `OmniglotCNN`."""
    if net == "l2l":
        return l2l.vision.models.OmniglotCNN(ways, hidden_size=filters)
    return Conv4(ways, filters, bn_scale, bn_eps)


def haiku_to_torch(params: dict) -> dict[str, torch.Tensor]:
    """metalearn conv4's haiku parameters (or gradients) as `Conv4`'s named tensors:
    conv weights HWIO -> OIHW, the head's `[F, N]` -> `[N, F]`."""
    named = {}
    for index in range(4):
        layer = params[f"conv_{index}"]
        prefix = f"base.{index}"
        named[f"{prefix}.conv.weight"] = np.transpose(layer["w"], (3, 2, 0, 1))
        named[f"{prefix}.normalize.bias"] = layer["offset"]
        if "scale" in layer:
            named[f"{prefix}.normalize.weight"] = layer["scale"]
    named["classifier.weight"] = np.transpose(params["head"]["w"])
    named["classifier.bias"] = params["head"]["b"]
    return {name: torch.tensor(np.asarray(value)) for name, value in named.items()}


# --- MAML -----------------------------------------------------------------------


def make_loss(ways: int, scale: str):
    """`per_class`: N x the mean cross-entropy (= summed / examples per class);
    `mean`: the mean."""
    factor = ways if scale == "per_class" else 1

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return factor * F.cross_entropy(logits, targets)

    return loss


def meta_step(maml, episodes: list[Episode], loss, inner_steps: int):
    """One meta-gradient, learn2learn's way: per task clone, adapt, backward the
    query loss; then the summed gradients times 1/tasks. Leaves the mean
    meta-gradient in the parameters' `.grad`; returns (mean query loss, mean query
    accuracy)."""
    total_loss = total_accuracy = 0.0
    for episode in episodes:
        learner = maml.clone()
        for _ in range(inner_steps):
            support_logits = learner(episode.support_inputs)
            learner.adapt(loss(support_logits, episode.support_targets))
        logits = learner(episode.query_inputs)
        query_loss = loss(logits, episode.query_targets)
        query_loss.backward()
        total_loss += query_loss.item()
        hits = logits.argmax(dim=1) == episode.query_targets
        total_accuracy += hits.float().mean().item()
    for parameter in maml.parameters():
        parameter.grad.data.mul_(1.0 / len(episodes))
    return total_loss / len(episodes), total_accuracy / len(episodes)


# --- the timed run --------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1, help="support per class")
    parser.add_argument("--query", type=int, default=1, help="query per class")
    parser.add_argument("--batch", type=int, default=32, help="tasks per meta-step")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--outer-lr", type=float, default=1e-3, help="Adam's lr")
    parser.add_argument("--order", choices=("first", "second"), default="second")
    parser.add_argument(
        "--loss-scale", choices=("per_class", "mean"), default="per_class"
    )
    parser.add_argument("--net", choices=("ours", "l2l"), default="ours")
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--bn-scale", action="store_true", help="learn a BN scale")
    parser.add_argument("--bn-eps", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=100, help="meta-steps timed")
    parser.add_argument("--warmup", type=int, default=3, help="meta-steps before")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--data-root", type=Path, default=None, help="default: $METALEARN_DATA"
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    images = training_images(args.data_root or default_data_root(), args.split_seed)
    network = make_network(
        args.net, args.ways, args.filters, args.bn_scale, args.bn_eps
    ).to(device)
    maml = l2l.algorithms.MAML(
        network, lr=args.inner_lr, first_order=args.order == "first"
    )
    optimizer = torch.optim.Adam(maml.parameters(), lr=args.outer_lr)
    loss = make_loss(args.ways, args.loss_scale)

    def train(steps: int) -> tuple[float, tuple[float, float]]:
        start, result = time.perf_counter(), (float("nan"), float("nan"))
        for _ in range(steps):
            optimizer.zero_grad()
            episodes = [
                to_device(
                    sample_episode(rng, images, args.ways, args.shots, args.query),
                    device,
                )
                for _ in range(args.batch)
            ]
            result = meta_step(maml, episodes, loss, args.inner_steps)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the last Adam step's kernels, inside the time
        return time.perf_counter() - start, result

    warmup_s, _ = train(args.warmup)
    seconds, (meta_loss, accuracy) = train(args.steps)
    result = {
        "steps_per_s": args.steps / seconds,
        "seconds": seconds,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        ),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "final_meta_loss": meta_loss,
        "final_accuracy": accuracy,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "learn2learn": l2l.__version__,
            "numpy": np.__version__,
        },
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
