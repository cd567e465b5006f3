"""Environment first (JAX and W&B read it when first used), then shared fixtures."""

import contextlib
import fcntl
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compare runs with each other, not with an optimised build: XLA's cheapest
# code generation halves the cold compile time of the suite (CI starts cold).
XLA_TEST_FLAGS = [
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]
try:
    JAXLIB = version("jaxlib")
except PackageNotFoundError:  # a source build on the path: keep the common flags
    JAXLIB = "unknown"
if JAXLIB.startswith("0.10."):
    # XLA:CPU's older loop emitters compile these programs in half the time of its
    # fusion emitters (measured on jaxlib 0.10.2); jaxlib 0.12 no longer knows the
    # flag, and XLA stops the process on a flag it does not know
    XLA_TEST_FLAGS += [
        "--xla_cpu_use_fusion_emitters=false",
        "--xla_cpu_parallel_codegen_split_count=1",
    ]
os.environ.setdefault("XLA_FLAGS", " ".join(XLA_TEST_FLAGS))
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
# one persistent compile cache for in-process runs, train.py subprocesses and unit
# tests alike (train.compile_cache reads this variable)
os.environ.setdefault("METALEARN_COMPILE_CACHE", str(REPO / ".cache" / "jax"))
sys.path.insert(0, str(Path(__file__).parent))  # tests' own helpers

import pytest  # noqa: E402

from metalearn.config import register_configs  # noqa: E402
from metalearn.runtime import use_compile_cache  # noqa: E402

register_configs()
use_compile_cache(os.environ["METALEARN_COMPILE_CACHE"])

SHARED_NPZ = REPO.parent / "shared" / "data" / "omniglot" / "omniglot.npz"


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """A dir shared by every xdist worker of this test session, and whether this
    worker must make its contents: the first to get here makes them while holding
    a lock, the others wait for it and reuse them."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's temp dir, above each worker's own
    shared = root / f"shared_{name}"
    shared.mkdir(exist_ok=True)
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / ".made"
        yield shared, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """`python train.py` with the quick settings (W&B offline, figures on) in a
    fresh interpreter, finished: `(run dir, its stdout and stderr)`. Shared by the
    session (and its workers): copy the dir before changing it. (A run this
    process started would count as its own: a refused resume would mark it
    failed.)"""
    from helpers import QUICK, train_py

    with made_once(tmp_path_factory, "finished") as (shared, make):
        run_dir = shared / "run"
        if make:
            result = train_py(*QUICK, "eval.figures=true", f"hydra.run.dir={run_dir}")
            (shared / "result.json").write_text(
                json.dumps({"stdout": result.stdout, "stderr": result.stderr})
            )
        output = json.loads((shared / "result.json").read_text())
    return run_dir, SimpleNamespace(**output)


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """A data root with Omniglot prepared from the shared npz (skips without it)."""
    if not SHARED_NPZ.is_file():
        pytest.skip(f"no shared Omniglot data at {SHARED_NPZ}")
    from metalearn.data.__main__ import main

    with made_once(tmp_path_factory, "data_root") as (root, make):
        if make:
            assert (
                main(["omniglot", "--from", str(SHARED_NPZ), "--root", str(root)]) == 0
            )
    return root


@pytest.fixture(scope="session")
def image_folder_root(tmp_path_factory) -> Path:
    """Generated class folders per split (tests/helpers.py: write_image_folder)."""
    from helpers import write_image_folder

    with made_once(tmp_path_factory, "image_folder") as (root, make):
        if make:
            write_image_folder(root, "split_folders")
    return root


@pytest.fixture(scope="session")
def mini_imagenet_standin(tmp_path_factory) -> SimpleNamespace:
    """A data root with generated images under miniImageNet's own file names, 2
    per class, and split files listing just those (tests of the presets set K and
    Q to 1)."""
    from helpers import write_mini_standin

    with made_once(tmp_path_factory, "mini_imagenet") as (root, make):
        if make:
            write_mini_standin(root / "mini_imagenet", root / "splits", 2, "images")
    return SimpleNamespace(data_root=root, split_dir=root / "splits")
