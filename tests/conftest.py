"""Environment first (JAX and W&B read it when first used), then shared fixtures."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compare runs with each other, not with an optimised build: XLA's cheapest
# code generation halves the cold compile time of the suite (CI starts cold).
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
)
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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """`python train.py` with the quick settings (W&B offline, figures on) in a
    fresh interpreter, finished: `(run dir, the CompletedProcess)`. Shared by the
    session: copy the dir before changing it. (A run this process started would
    count as its own: a refused resume would mark it failed.)"""
    from helpers import QUICK, train_py

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = train_py(*QUICK, "eval.figures=true", f"hydra.run.dir={run_dir}")
    return run_dir, result


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """A data root with Omniglot prepared from the shared npz (skips without it)."""
    if not SHARED_NPZ.is_file():
        pytest.skip(f"no shared Omniglot data at {SHARED_NPZ}")
    from metalearn.data.__main__ import main

    root = tmp_path_factory.mktemp("data_root")
    assert main(["omniglot", "--from", str(SHARED_NPZ), "--root", str(root)]) == 0
    return root
