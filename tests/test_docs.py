"""The docs name only what exists: README.md, docs/*.md and the docstrings and comments of
engine/ and tui/ may name a module (`engine.session.wsproto`, `tui.app`) or a file of this
repository (`scripts/bench_aec.py`, `engine/audio/aec.py`, a bare `playout.py`) only if it is
there; a dotted name that goes past a module (`engine.audio.BUNDLED_SPEECH`) must be a name
that module defines.

CHANGELOG.md is not checked: it records each change in the words of its day, and the modules
it names are the ones that change touched then (`engine/pipeline.py` before the engine was split
into packages, `engine/alloc.py` before it moved); renaming them to today's paths would misstate
the history.  README and docs/ describe the tree as it is, so they must match it.
"""

from __future__ import annotations

import ast
import glob
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The folders of this repository a path may start with, and the files at its top.
ROOTS = ("engine", "tui", "tests", "scripts", "locks", "screenshots", "docs", ".ci")
TOP_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", ".gitignore")
PACKAGES = ("engine", "tui")
DOTTED_ROOTS = PACKAGES + ("scripts", "tests")  # dotted names checked: engine.x, scripts.x, ...
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".git", ".venv", "node_modules"}

# Files of other projects the docs name by their bare name (Kyutai's moshi / moshi_mlx, the
# LiveKit binding, the Moshi protocol spec).  A bare name that is neither here nor in the
# repository is a stale one.
EXTERNAL_FILES = {
    "local.py", "local_web.py", "server.py", "protocol.md", "encoder.ts", "apm.rs",
    "config.json", "model.safetensors", "mimi.safetensors", "config.toml",
    "model.q4.safetensors", "tokenizer_spm_32k_3.model", "sitecustomize.py", "env.sh",
    "alsa.conf",
}
# What a session writes into its folder (README names them for users).
SESSION_FILES = {"transcript.md"}
# Files that left the repository and that docs/benchmarks.md still names, as history: the
# commands that measured its figures, as they ran.
HISTORY = {"docs/benchmarks.md": {"scripts/gpu_step_probe.py", "gpu_step_probe.py"}}

DOTTED = re.compile(r"(?<![\w./])(?:" + "|".join(DOTTED_ROOTS) + r")(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(
    r"(?<![\w./$~-])(?:" + "|".join(re.escape(r) for r in ROOTS) + r")/[\w./*-]*"
)
TOP = re.compile(r"(?<![\w./-])(?:" + "|".join(re.escape(f) for f in TOP_FILES) + r")(?![\w-])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
BARE = re.compile(r"(?<![\w./$-])[\w-]+\.(?:py|sh|md|txt|toml|tcss)(?![\w/-])")


def _files() -> list[Path]:
    out = []
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(ROOT / root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            out += [Path(dirpath) / f for f in filenames]
    out += [ROOT / f for f in TOP_FILES if (ROOT / f).exists()]
    return out


_BASENAMES: set[str] | None = None


def _basenames() -> set[str]:
    global _BASENAMES
    if _BASENAMES is None:
        _BASENAMES = {p.name for p in _files()}
    return _BASENAMES


def _module_file(parts: list[str], root: Path) -> Path | None:
    base = root.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if base.is_dir():  # a namespace-style folder (engine/, tui/ have no code in __init__)
        return base
    return None


def _top_level(body):
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            if isinstance(node, (ast.If, ast.Try, ast.With)) or field == "body" and isinstance(
                    node, ast.ExceptHandler):
                yield from _top_level(getattr(node, field, []) or [])


def _defines(module: Path, name: str) -> bool:
    """Whether `module` defines `name` at its top level (a def, class, assignment or import)."""
    if module.is_dir():
        return False
    for node in _top_level(ast.parse(module.read_text()).body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name).split(".")[0] == name for a in node.names):
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
    return False


def dotted_ok(name: str, root: Path = ROOT) -> bool:
    """`engine.a.b[.attr...]`: the longest module prefix exists, and the first name after it
    (if any) is a submodule or a name that module defines."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = _module_file(parts[:i], root)
        if module is None:
            continue
        if i == len(parts):
            return True
        return _defines(module, parts[i])
    return False


def path_ok(path: str, root: Path = ROOT) -> bool:
    """A repository path: a file or folder, a glob that matches one, a module path without
    its `.py` (`tests/test_aec`), or a module path with an attribute (`tests/test_aec._f`)."""
    p = path.rstrip(".,;:")
    if "*" in p:
        return bool(glob.glob(str(root / p)))
    if (root / p).exists() or (root / (p.rstrip("/") + ".py")).exists():
        return True
    head, _, last = p.rpartition("/")
    if "." in last:
        stem = last.split(".")[0]
        return (root / head / (stem + ".py")).exists() or (root / head / stem).is_dir()
    return False


def bare_ok(name: str, basenames: set[str] | None = None) -> bool:
    known = basenames if basenames is not None else _basenames()
    return name in known or name in EXTERNAL_FILES or name in SESSION_FILES


def stale_names(text: str, root: Path = ROOT, basenames: set[str] | None = None,
                base: Path | None = None) -> list[str]:
    """Every module or file name in `text` that does not exist here (and, for a Markdown file
    in folder `base`, every relative link target that does not)."""
    bad = []
    if base is not None:
        for m in LINK.finditer(text):
            target = m.group(1)
            if not re.match(r"[a-z]+:", target) and not (base / target).exists():
                bad.append(target)
    for m in DOTTED.finditer(text):
        if not dotted_ok(m.group(0), root):
            bad.append(m.group(0))
    spans = []
    for m in PATH.finditer(text):
        spans.append(m.span())
        if not path_ok(m.group(0), root):
            bad.append(m.group(0))
    for m in TOP.finditer(text):
        if not (root / m.group(0)).exists():
            bad.append(m.group(0))
    for m in BARE.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        if not bare_ok(m.group(0), basenames):
            bad.append(m.group(0))
    return bad


def docstrings_and_comments(source: str) -> str:
    """The docstrings (a module's, a class's, a function's, an attribute's: every statement that
    is a bare string) and the comments of a Python module, one after another."""
    out = [node.value.value for node in ast.walk(ast.parse(source))
           if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
           and isinstance(node.value.value, str)]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append(tok.string)
    return "\n".join(out)


def _docs() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _code() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if not SKIP_DIRS & set(p.parts))


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_what_exists(doc):
    assert doc.exists(), f"{doc.relative_to(ROOT)} is missing"
    bad = [n for n in stale_names(doc.read_text(), base=doc.parent)
           if n not in HISTORY.get(str(doc.relative_to(ROOT)), ())]
    assert not bad, f"{doc.relative_to(ROOT)} names what does not exist: {sorted(set(bad))}"


def test_docstrings_and_comments_name_only_what_exists():
    offenders = {}
    for path in _code():
        bad = stale_names(docstrings_and_comments(path.read_text()))
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(set(bad))
    assert not offenders, "stale names in docstrings or comments: " + "; ".join(
        f"{k}: {', '.join(v)}" for k, v in sorted(offenders.items()))


def test_the_docs_do_name_modules_and_files():
    # The checks above must have something to check: the docs really name modules and files.
    text = "\n".join(p.read_text() for p in _docs())
    assert len(DOTTED.findall(text)) >= 10
    assert len(PATH.findall(text)) >= 20


def test_the_checker_catches_stale_names(tmp_path):
    # A made-up module, attribute, path and bare file name are each caught, and real ones are
    # not, so the tests above cannot pass vacuously.
    (tmp_path / "engine" / "session").mkdir(parents=True)
    (tmp_path / "engine" / "session" / "__init__.py").write_text("")
    (tmp_path / "engine" / "session" / "wsproto.py").write_text("HANDSHAKE = 0\ndef encode(): pass\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bench_aec.py").write_text("")
    names = {"wsproto.py", "bench_aec.py", "__init__.py"}
    good = ("`engine.session.wsproto`, engine.session.wsproto.HANDSHAKE, engine.session, "
            "scripts/bench_aec.py, scripts/bench_*.py, `wsproto.py`, Kyutai's local.py.")
    assert stale_names(good, tmp_path, names) == []
    for stale in ("engine.session.wsprot", "engine.wsproto", "engine.session.wsproto.NOPE",
                  "scripts/bench_aec2.py", "engine/alloc.py", "scripts/gpu_*.sh", "modelload.py"):
        assert stale_names(f"see `{stale}` here.", tmp_path, names) == [stale], stale
    # A Markdown link is resolved from the file's own folder.
    (tmp_path / "docs").mkdir()
    links = "[a](../scripts/bench_aec.py), [b](https://x.org/y.md), [c](../missing/#top)"
    assert stale_names(links, tmp_path, names, base=tmp_path / "docs") == ["../missing/"]
    # In code, a docstring and a comment are read; a string that is not a docstring is not.
    src = ('"""Module: engine.diagnose."""\n'
           "x = 'engine.not_a_doc'  # see engine.stats\n"
           "def f():\n    'engine/alloc.py'\n")
    found = stale_names(docstrings_and_comments(src), tmp_path, names)
    assert sorted(found) == ["engine.diagnose", "engine.stats", "engine/alloc.py"]


def test_readme_is_for_users():
    # Issue 26's README: at most 250 lines, and the two commands first, as .ci/run runs them.
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = text.split("```")[1]
    assert "./scripts/setup.sh && .venv/bin/moshi-tui --demo" in first_block
    assert ".venv/bin/python -m pytest -q" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci


def test_history_names_are_really_gone():
    # The allowance for history is only for files that left: one that exists needs none.
    for names in HISTORY.values():
        for name in names:
            assert not (ROOT / name).exists() and name not in _basenames(), name
