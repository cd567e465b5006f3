"""What the test modules share: paths, quick settings, config composition, ways to
run `train.py` (in this process or a fresh one), and a reader of W&B offline files.

The one module tests import besides the library (test modules never import each
other). `conftest.py` sets the environment before anything here starts JAX.
"""

import csv
import functools
import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import jax
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "conf"
STUDIES = REPO / "studies"

# Overrides that make a run take seconds: few steps, a small evaluation, no
# prediction figures (tests that want them drop the last override).
QUICK = [
    "outer.steps=40",
    "train.log_every=10",
    "eval.every=20",
    "eval.num_tasks=20",
    "eval.num_query=20",
    "eval.figures=false",
]
# Runs inside the test process leave Python's logging as it is: Hydra's logging
# setup would close the handlers absl installed on pytest's captured stderr (and
# with them that stream). Hydra still prints its errors to stderr.
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


# --- configs --------------------------------------------------------------------


def compose_config(overrides=(), return_hydra_config: bool = False) -> DictConfig:
    """The config `python train.py *overrides` composes (no command-line parsing)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )


def options(group: str) -> list[str]:
    """The options of a config group: the YAML files in `conf/<group>/`."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


# --- running train.py -----------------------------------------------------------


@functools.cache
def train_module() -> ModuleType:
    """`train.py` loaded as a module (its `main` is the `@hydra.main` entry)."""
    return load_script(REPO / "train.py", "train_entry")


def load_script(path: Path, name: str) -> ModuleType:
    """A script that is not in a package, loaded as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_main(*argv: str) -> int:
    """`python train.py *argv`, run inside this process through train.py's own
    `main()` (Hydra parses `argv` exactly as on the command line). Returns the exit
    code; what train.py prints goes to this process's stdout/stderr (capsys)."""
    saved = sys.argv
    sys.argv = ["train.py", *argv, *QUIET]
    full_error = os.environ.pop("HYDRA_FULL_ERROR", None)  # Hydra's short messages
    try:
        train_module().main()
    except SystemExit as exit_:
        return 0 if exit_.code is None else int(exit_.code)
    finally:
        sys.argv = saved
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return 0


def python_script(
    script: str | Path, *args: str, check: bool = True, timeout: float = 300, env=None
) -> subprocess.CompletedProcess:
    """`python <script> *args` from the repo root in a fresh interpreter; with
    `check`, fails the test (showing stderr's tail) unless it exits 0."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_py(
    *overrides: str, check: bool = True, timeout: float = 300, env=None
) -> subprocess.CompletedProcess:
    """`python train.py *overrides` in a fresh interpreter (end-to-end tests)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": ""} if env is None else env
    return python_script("train.py", *overrides, check=check, timeout=timeout, env=env)


# --- run dirs -------------------------------------------------------------------


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without the keys that measure time (they differ run to run)."""
    return {
        k: v
        for k, v in summary.items()
        if not k.startswith("perf/") and k != "train/seconds"
    }


def leaves(state) -> list:
    """A `TrainState`'s arrays, its PRNG key as raw data (comparable bit by bit)."""
    return jax.tree.leaves(state._replace(key=jax.random.key_data(state.key)))


def final_state(run_dir: Path):
    """The training state in the latest checkpoint of the run in `run_dir`."""
    from metalearn.build import build
    from metalearn.checkpoints import Checkpointer
    from metalearn.config import typed
    from metalearn.rundir import CHECKPOINT_DIR, CONFIG_FILE
    from metalearn.trainer import init_train_state

    parts = build(typed(read_json(run_dir / CONFIG_FILE)))
    template = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR)
    try:
        return checkpointer.restore(template)[0]
    finally:
        checkpointer.close()


# --- W&B offline files ----------------------------------------------------------
# A `run-<id>.wandb` file is a 7-byte header then LevelDB's log format (32 KiB blocks of
# chunks with a 7-byte header: crc32, length, type); each record is a protobuf `Record`.

BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRun(NamedTuple):
    run_id: str
    group: str
    job_type: str
    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int | None
    # define_metric records by name (or glob): their step metric and summaries
    metrics: dict[str, dict[str, Any]] = {}


def _records(data: bytes):
    from wandb.proto import wandb_internal_pb2

    assert data[:4] == b":W&B", "not a W&B run file"
    offset, pending = 7, b""
    while offset + 7 <= len(data):
        block_left = BLOCK_SIZE - offset % BLOCK_SIZE
        if block_left < 7:
            offset += block_left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if length == 0 and kind == 0:
            break
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == checksum, "bad crc"
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_run(path: str | Path, timeout: float = 20.0) -> OfflineRun:
    """Parses one `run-*.wandb` file, once W&B has finished writing it.

    `run.finish()` can return while W&B's service is still flushing the file, so a
    file whose tail is torn (bad checksum) or that has no exit record yet is read
    again, until `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = _parse(path)
            if run.exit_code is not None or time.monotonic() > deadline:
                return run
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _parse(path: str | Path) -> OfflineRun:
    run_info, config, history, summary, exit_code = None, {}, [], {}, None
    metrics: dict[str, dict[str, Any]] = {}
    for record in _records(Path(path).read_bytes()):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_info = record.run
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "metric":
            metric = record.metric
            metrics[metric.name or metric.glob_name] = {
                "step_metric": metric.step_metric,
                "summary": {
                    field.name
                    for field, value in metric.summary.ListFields()
                    if value is True
                },
            }
    assert run_info is not None, f"no run record in {path}"
    config = {
        k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()
    }
    return OfflineRun(
        run_id=run_info.run_id,
        group=run_info.run_group,
        job_type=run_info.job_type,
        name=run_info.display_name,
        config=config,
        history=history,
        summary=summary,
        exit_code=exit_code,
        metrics=metrics,
    )


def find_runs(root: str | Path) -> list[Path]:
    """Every offline run file below `root`."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))


def read_runs(root: str | Path) -> list[OfflineRun]:
    return [read_run(path) for path in find_runs(root)]


# --- generated image datasets ---------------------------------------------------
# Every synthetic class has its own colour pattern, and its id is written into the
# first pixel's red value (PNG keeps it exactly), so an episode's images tell which
# class they came from.

SIDE = 12  # pixels of the generated images (resized to `image_size` by the task)
SPLIT_CLASSES = {"train": 6, "val": 2, "test": 4}
PER_CLASS = 12


def class_image(class_id: int, index: int) -> np.ndarray:
    """A [SIDE, SIDE, 3] image: the class's own pattern plus per-image noise."""
    pattern = np.random.default_rng(class_id).integers(40, 216, (4, 4, 3))
    image = np.kron(pattern, np.ones((SIDE // 4, SIDE // 4, 1)))
    noise = np.random.default_rng(1000 * class_id + index).integers(
        -30, 31, image.shape
    )
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    image[0, 0, 0] = 10 * class_id % 256  # the class id (< 26), read from the pixels
    return image


def split_classes() -> dict[str, list[str]]:
    """Class names per split: c00..c11."""
    names, start = {}, 0
    for split, count in SPLIT_CLASSES.items():
        names[split] = [f"c{i:02d}" for i in range(start, start + count)]
        start += count
    return names


def write_image_folder(root: Path, layout: str, suffix: str = ".png") -> dict:
    """Writes the generated dataset in `layout`; returns the task options for it."""
    for split, names in split_classes().items():
        rows = []
        for name in names:
            class_id = int(name[1:])
            for index in range(PER_CLASS):
                filename = f"{name}{index:08d}{suffix}"
                folder = {
                    "split_folders": root / split / name,
                    "class_folders": root / name,
                    "csv": root / "images",
                }[layout]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(class_image(class_id, index)).save(folder / filename)
                rows.append((filename, name))
        if layout == "csv":
            write_csv(root / "splits" / f"{split}.csv", rows)
    options = [f"task.root={root}", f"task.layout={layout}"]
    if layout == "csv":
        options.append(f"task.split_dir={root / 'splits'}")
    if layout == "class_folders":  # 12 classes: 6 train, 2 val, 4 test
        options.append("task.split_fractions=[0.5,0.17,0.33]")
    return {"overrides": options}


def write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)


def write_mini_standin(root: Path, split_dir: Path, per_class: int, layout: str):
    """Generated images under the Ravi split's own file names: the first `per_class`
    files of every class (and split files listing just those)."""
    from metalearn.tasks.mini_imagenet import ravi_split_dir

    for split in ("train", "val", "test"):
        with (ravi_split_dir() / f"{split}.csv").open() as f:
            rows = list(csv.reader(f))[1:]
        kept, seen = [], {}
        for filename, label in rows:
            if seen.setdefault(label, 0) < per_class:
                seen[label] += 1
                kept.append((filename, label))
        write_csv(split_dir / f"{split}.csv", kept)
        for number, (filename, label) in enumerate(kept):
            folder = root / "images" if layout == "images" else root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            class_id = list(seen).index(label)
            image = class_image(class_id, number)
            Image.fromarray(image).save(folder / filename, quality=95)


# --- a quadratic test problem with closed-form answers -----------------------------
# A model whose prediction is its one parameter theta: a task with support targets C
# and query targets D has losses (theta - C)^2 and (theta - D)^2.

THETA, LR, C, D = 0.7, 0.1, 2.0, -1.0  # start, inner lr, support and query targets


def constant_model():
    """Predicts its single parameter theta for every input: MSE = (theta - y)^2."""
    from metalearn.models import Model

    return Model(
        init=lambda key, inputs: (jax.numpy.array(THETA), {}),
        apply=lambda theta, state, inputs, training: (
            jax.numpy.full((inputs.shape[0], 1), theta),
            state,
        ),
        embed=lambda theta, state, inputs: jax.numpy.ones((inputs.shape[0], 1)),
        head=lambda params: True,
        body=lambda params: {},
    )


def quadratic_problem():
    """The regression family of the constant model, and one task of it (a task
    axis of 1: support targets C at 3 points, query targets D at 2)."""
    from metalearn.metrics import mean_squared_error
    from metalearn.tasks import TaskBatch, TaskFamily

    family = TaskFamily("quadratic", None, (), mean_squared_error, {}, (1,), 1)
    task = TaskBatch(
        support_inputs=jax.numpy.zeros((1, 3, 1)),
        support_targets=jax.numpy.full((1, 3, 1), C),
        query_inputs=jax.numpy.zeros((1, 2, 1)),
        query_targets=jax.numpy.full((1, 2, 1), D),
    )
    return family, task


def adapted(steps):
    """Each SGD step on (theta - C)^2 maps theta -> C + (1 - 2 LR)(theta - C)."""
    return C + (1 - 2 * LR) ** steps * (THETA - C)
