"""Refuse a CUDA build of torch in the CPU image (the Dockerfile runs this right after installing torch).

Why not `torch.cuda.is_available()`: on a build machine without a GPU it is False for a CUDA build too, so a
5 GB CUDA wheel that slipped in through a package index passed that check. The build itself says what it is:
`torch.version.cuda` is None and the version carries the `+cpu` local label only for a CPU wheel.
"""

from __future__ import annotations

import sys


def cuda_build_reason(version: str, cuda: str | None) -> str | None:
    """Why a torch of this `__version__` and `version.cuda` is not the CPU build, or None when it is."""
    if cuda is not None:
        return f"torch {version} is a CUDA build (torch.version.cuda = {cuda!r})"
    if not version.endswith("+cpu"):
        return f"torch {version} lacks the '+cpu' local version of PyTorch's CPU wheels"
    return None


def main() -> int:
    import torch

    reason = cuda_build_reason(torch.__version__, torch.version.cuda)
    if reason is not None:
        print(f"check_cpu_torch: {reason}; install torch from a CPU wheel (TORCH_PIP_ARGS: "
              "--index-url https://download.pytorch.org/whl/cpu, or --find-links to a +cpu wheel)", file=sys.stderr)
        return 1
    print(f"check_cpu_torch: torch {torch.__version__} (CPU build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
