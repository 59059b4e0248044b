"""Command dispatch for everything that runs without the UI.

The console script lives in `tui.cli` (so that `engine` never imports the UI); it calls
`dispatch()` here and only imports Textual when the app itself is wanted.
"""

from __future__ import annotations

import sys

from engine.errors import MoshiTuiError


def _devices(argv) -> int:
    import json

    from engine.audio.devices import format_devices, list_devices
    from engine.cli.options import _Parser

    p = _Parser(prog="moshi-tui devices",
                description="List the audio devices PortAudio sees, with the index or name "
                "that --input/--output take.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    args = p.parse_args(argv)
    devs = list_devices()
    print(json.dumps(devs, indent=2) if args.json else format_devices(devs))
    return 0


def dispatch(argv: list[str] | None, run_app=None) -> int:
    """Run the command in argv; returns the exit code. `run_app(run)` runs the UI with the
    typed configuration (`engine.session.runner.RunConfig`)."""
    from engine.cli.options import build_parser, run_config
    from engine.model.mlx_env import tune_mlx_env

    tune_mlx_env()  # before anything here runs MLX (the model server inherits it)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "devices":
        return _devices(argv[1:])
    if argv and argv[0] == "bench":
        from engine.cli.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        from engine.cli.serve import main as serve_main

        return serve_main(argv[1:])
    from engine.cli.config import config_argv, describe

    parser = build_parser()
    from_file, path = config_argv(parser)
    args = parser.parse_args(from_file + argv)  # (the command line comes last: it wins)
    if args.print_config:
        print(describe(args, path))
        return 0
    run = run_config(args)
    if args.headless or run_app is None:
        from engine.cli.headless import run_headless

        return run_headless(run)
    return run_app(run)


def main(argv: list[str] | None = None, run_app=None) -> int:
    try:
        code = dispatch(argv, run_app)
    except MoshiTuiError as e:
        print(f"moshi-tui: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
