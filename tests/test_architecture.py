"""The engine's shape holds: it never imports the UI, and its packages follow the path of a
frame (cli > bench > session > pipeline > model > files > telemetry > audio: a package imports
only the ones below it).  import-linter checks both contracts of pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, config: Path | None = None):
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    cmd = [exe] + (["--config", str(config)] if config else [])
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": str(Path(sys.executable).parent)})


def test_engine_never_imports_textual_or_tui():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine never imports the UI KEPT" in r.stdout


def test_engine_packages_are_layered():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def test_contract_catches_a_violation(tmp_path):
    # The same contract on a copy of the engine with one forbidden import must fail,
    # so the test above cannot pass vacuously.
    shutil.copytree(ROOT / "engine", tmp_path / "engine")
    shutil.copytree(ROOT / "tui", tmp_path / "tui")
    (tmp_path / "engine" / "sneaky.py").write_text("import textual.app\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "engine.sneaky -> textual" in r.stdout


def test_layers_contract_catches_an_upward_import(tmp_path):
    # The audio layer reaching up into the pipeline must break the layers contract.
    shutil.copytree(ROOT / "engine", tmp_path / "engine")
    shutil.copytree(ROOT / "tui", tmp_path / "tui")
    (tmp_path / "engine" / "audio" / "sneaky.py").write_text("import engine.pipeline.client\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "engine.audio is not allowed to import engine.pipeline" in r.stdout
