"""The `moshi-tui` console script: the app by default, everything else through `engine.cli`."""

from __future__ import annotations


def _run_app(run) -> int:
    from .app import run_app  # Textual is imported only when the app is wanted

    return run_app(run)


def main(argv: list[str] | None = None) -> None:
    from engine.cli.main import main as engine_main

    engine_main(argv, run_app=_run_app)


if __name__ == "__main__":
    main()
