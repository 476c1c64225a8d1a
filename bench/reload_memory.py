"""RSS of one process across model reloads, in-process: build_serving_model again and again, one model alive.

    python -m bench.reload_memory --store model_store --name default --reloads 20
    python -m bench.reload_memory --reloads 20 --no-release     # without release_build_memory (the baseline)

Without --store it trains the small test model (tests/small_artifacts.py, seconds) into a temporary store.
Each line: reload index, RSS in MB, objects tracked by the garbage collector, torch ShapeEnv objects alive.
Results and what they mean: docs/soak.md.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import warnings
from pathlib import Path

import torch
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from service.serving.loading import build_serving_model
from service.serving.memory import release_build_memory
from service.serving.settings import Settings


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="model store (default: train the small model)")
    parser.add_argument("--name", default="default")
    parser.add_argument("--versions", default=None, help="comma-separated versions to alternate (default: all)")
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--no-release", action="store_true", help="skip release_build_memory after each swap")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = args.store or _small_store(Path(tempfile.mkdtemp(prefix="reload-memory-")))
    model_dir = store / args.name
    versions = args.versions.split(",") if args.versions else sorted(
        child.name for child in model_dir.iterdir() if (child / "model.json").is_file())
    settings = Settings(model_store=store, model_name=args.name, warmup_candidates=(1, 16), analysis_candidates=100)
    serving = None
    print("reload rss_mb gc_objects shape_envs", flush=True)
    for index in range(args.reloads):
        built = build_serving_model(settings, model_dir / versions[index % len(versions)])
        serving = built  # the swap: the previous model loses its last reference
        del built
        if not args.no_release:
            release_build_memory()
        else:
            gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape_envs = sum(isinstance(obj, ShapeEnv) for obj in gc.get_objects())
        print(index, f"{rss_mb():.0f}", len(gc.get_objects()), shape_envs, flush=True)
    assert serving is not None


def _small_store(root: Path) -> Path:
    from tests.small_artifacts import save_small_mmoe

    for version, seed in (("v1", 1), ("v2", 2)):
        save_small_mmoe(root, "default", version, seed)
    return root


if __name__ == "__main__":
    main()
