"""`moshi-tui serve`: the command line (the server itself is engine.session.serve.server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import MoshiTuiError, UsageError
from engine.session.serve.server import BUSY_CLOSE_CODE, MAX_WAITING_PER_CLIENT, run_server


def build_parser() -> argparse.ArgumentParser:
    from engine.cli.options import _Parser, add_model_options, add_sampling_options

    p = _Parser(
        prog="moshi-tui serve",
        description="Serve the model over Kyutai's websocket protocol (/api/chat), for Kyutai's "
        "web UI, moshi.client, the Rust CLI or `moshi-tui --remote`.",
    )
    add_model_options(p)
    add_sampling_options(p)  # (each conversation's, unless its URL asks for others)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    g.add_argument("--port", type=int, default=8998, help="port (default 8998; 0 picks a free one)")
    g.add_argument("--max-steps", type=int, help="LM context length before a new segment starts")
    g.add_argument("--static", metavar="DIR",
                   help="also serve a built web client (index.html) from DIR at /")
    g.add_argument("--max-conversations", type=int, metavar="N",
                   help="exit after N conversations (default: serve until interrupted)")
    g.add_argument("--max-waiting-per-client", type=int, metavar="N",
                   default=MAX_WAITING_PER_CLIENT,
                   help="connections one address may have waiting for its turn (default "
                   f"{MAX_WAITING_PER_CLIENT}); another gets an error message and close code "
                   f"{BUSY_CLOSE_CODE} (try again later)")
    return p


def main(argv: list[str] | None = None) -> int:
    from engine.cli.options import model_options, sampling
    from engine.pipeline.alloc import tune_allocator

    tune_allocator()  # a fresh codec per conversation: freed memory must go back to the OS

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {args.port}")
    if args.static and not Path(args.static, "index.html").is_file():
        raise UsageError(f"--static: no index.html in {args.static}")
    if args.max_conversations is not None and args.max_conversations < 1:
        raise UsageError("--max-conversations must be at least 1")
    if args.max_waiting_per_client < 1:
        raise UsageError("--max-waiting-per-client must be at least 1")
    if args.max_steps is not None and args.max_steps < 2:
        raise UsageError("--max-steps must be at least 2")
    return run_server(model_options(args), address=args.host, port=args.port,
                      max_steps=args.max_steps, sampling=sampling(args), static=args.static,
                      max_conversations=args.max_conversations,
                      max_waiting_per_client=args.max_waiting_per_client)


def cli_main(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except MoshiTuiError as e:
        print(f"moshi-tui: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(cli_main())
