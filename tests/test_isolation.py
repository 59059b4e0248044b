"""The tests never write to the user's own folders: every folder moshi-tui writes to (sessions,
the demo model and tokenizers, MLX's kernel cache, the config file) resolves inside the run's
sandbox (tests/conftest.py), in the test process and in the processes the tests start; and
conftest's `users_folders_untouched` fails the run when the user's own moshi-tui folders changed
anyway."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SANDBOX, USER_FOLDERS


def folders() -> dict[str, str]:
    """Where moshi-tui would write, as this process's environment says."""
    from engine.cli.config import config_path
    from engine.files.export import default_session_dir
    from engine.model import demo, fullsize
    from engine.model.mlx_env import persist_jit_cache

    return {"sessions": str(default_session_dir()), "demo model": str(demo.default_cache_dir()),
            "tokenizers": str(fullsize.tokenizer_path()), "kernel cache": persist_jit_cache({}),
            "config file": str(config_path())}


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.parametrize("where", ["this process", "a process the tests start"])
def test_moshi_tuis_folders_are_in_the_sandbox(where, monkeypatch, tmp_path_factory):
    monkeypatch.delenv("MOSHI_TUI_CONFIG")  # (the tests set it to no file at all)
    if where == "this process":
        got = folders()
    else:
        # (this very function, not this module: importing it would run conftest there too)
        script = f"import json\n{inspect.getsource(folders)}\nprint(json.dumps(folders()))"
        r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
    # (the demo model lives in pytest's temporary folder once tests/conftest_models.py made it,
    # or in the one a developer names in MOSHI_TUI_TEST_CACHE)
    roots = [SANDBOX, tmp_path_factory.getbasetemp()]
    roots += [Path(p) for p in [os.environ.get("MOSHI_TUI_TEST_CACHE")] if p]
    for what, path in got.items():
        assert any(_inside(path, root) for root in roots), (what, path, roots)
        for kind, user in USER_FOLDERS.items():
            assert not _inside(path, user), f"{what} goes to the user's {kind} folder: {path}"
