"""MLX's process settings, made before MLX runs anything (it reads them once)."""

from __future__ import annotations

# MLX's CUDA backend records this many operations into one CUDA graph before it launches it
# (its default: 20); fewer, larger graphs cost the host less per step.
CUDA_OPS_PER_GRAPH = 100


def tune_mlx_env(environ=None) -> dict:
    """MLX settings for this process and those it starts, before MLX runs anything (it reads
    them once): its CUDA kernel cache kept (persist_jit_cache) and, on Linux (where a GPU is
    MLX's CUDA backend: the setting is CUDA's alone there), CUDA_OPS_PER_GRAPH operations per
    CUDA graph.  What the user set is left alone.  Returns what was set."""
    import os
    import sys

    env = os.environ if environ is None else environ
    done = {}
    path = persist_jit_cache(env)
    if path:
        done["MLX_PTX_CACHE_DIR"] = path
    if sys.platform.startswith("linux") and not env.get("MLX_MAX_OPS_PER_BUFFER"):
        env["MLX_MAX_OPS_PER_BUFFER"] = done["MLX_MAX_OPS_PER_BUFFER"] = str(CUDA_OPS_PER_GRAPH)
    return done


def persist_jit_cache(environ=None) -> str | None:
    """Keep MLX's CUDA kernel cache out of /tmp: set MLX_PTX_CACHE_DIR (unless set) to
    <moshi-tui cache>/mlx-ptx/<mlx version>. MLX's CUDA backend compiles kernels with NVRTC
    on first use and stores the PTX in /tmp/mlx/<version>/ptx by default, which a reboot
    empties: a cold cache means a long warm-up while every kernel is compiled again. Returns
    the directory, or None if left alone."""
    import os
    from importlib import metadata

    env = os.environ if environ is None else environ
    if env.get("MLX_PTX_CACHE_DIR"):
        return None
    try:
        version = metadata.version("mlx")
    except metadata.PackageNotFoundError:
        version = "unknown"
    from engine.model.demo import default_cache_dir

    path = str(default_cache_dir().parent / "mlx-ptx" / version)
    env["MLX_PTX_CACHE_DIR"] = path
    return path
