"""Resource use every stage reports in ``metrics.json``: peak memory."""

from __future__ import annotations

import resource
import sys


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory when a GPU is in use)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    peak = {"peak_rss_mb": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak
