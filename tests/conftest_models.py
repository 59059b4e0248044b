"""Fixtures for the demo model, generated once per test session into a private cache.

Use from a test module with `pytest_plugins = ["conftest_models"]`.

- `demo_cache`: the cache root (also exported as MOSHI_TUI_CACHE for the whole session, so
  `--demo` in this process resolves to it).
- `demo_files`: the generated `engine.model.demo.DemoFiles`.
- `demo_env`: a copy of os.environ with MOSHI_TUI_CACHE and PYTHONPATH set, for subprocesses.

Set MOSHI_TUI_TEST_CACHE to a directory to reuse one cache across runs (saves ~3 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    from engine.model import demo

    reuse = os.environ.get("MOSHI_TUI_TEST_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("moshi-tui-cache")
    saved = os.environ.get(demo.CACHE_ENV)
    os.environ[demo.CACHE_ENV] = str(cache)
    try:
        demo.ensure_demo()
        yield cache
    finally:
        if saved is None:
            os.environ.pop(demo.CACHE_ENV, None)
        else:
            os.environ[demo.CACHE_ENV] = saved


@pytest.fixture(scope="session")
def demo_files(demo_cache):
    from engine.model import demo

    return demo.DemoFiles.at(demo_cache / demo.DEMO_DIR_NAME)


@pytest.fixture(scope="session")
def demo_env(demo_cache) -> dict[str, str]:
    env = dict(os.environ)
    env["MOSHI_TUI_CACHE"] = str(demo_cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env
