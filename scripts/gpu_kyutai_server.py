"""The Python part of scripts/gpu_kyutai_server.sh: Kyutai's PyTorch `moshi.server` at full size
with random weights, talked to by `moshi-tui --remote`, its figures in one JSON.

    python -m scripts.gpu_kyutai_server weights DIR [--device cuda] [--size full|tiny]
        Random Moshi 7B (loaders._lm_kwargs, bf16) and Mimi weights, saved with safetensors as
        DIR/moshi.safetensors and DIR/mimi.safetensors, the lm kwargs as DIR/config.json (what
        `moshi.server --config-path` reads), torch's version and the device as DIR/meta.json.
        `--size tiny`: a 2-layer LM of the same vocabulary, for a dry run on a CPU.
    python -m scripts.gpu_kyutai_server serve ARGS...
        `python -m moshi.server ARGS...`; with `--device cpu` on a machine without CUDA, the
        warm-up's torch.cuda.synchronize() is skipped (it is the only CUDA call on that path).
    python -m scripts.gpu_kyutai_server wav IN OUT SECONDS
        IN repeated to SECONDS of audio (the client's input for a session of that length).
    python -m scripts.gpu_kyutai_server figures --stats S --server-log L --json OUT [--meta M]
        The client's stats.json (`moshi-tui --remote ... --stats-json S`) and the server's log
        (its "frame handled in X ms" lines) as one JSON: frames both ways, the round trip, the
        Opus costs, the end-to-end estimate, the server's frame times.

Each subcommand imports only what it needs: `weights` and `serve` run in the Python that has
torch and moshi, `wav` and `figures` in any Python 3 (the standard library and numpy).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import wave
from pathlib import Path

# Small enough for a CPU: the dimensions of the LM, the vocabulary and the codebooks kept
TINY_LM = {"dim": 128, "num_heads": 4, "num_layers": 2, "hidden_scale": 2.0,
           "depformer_dim": 64, "depformer_dim_feedforward": 128, "depformer_num_heads": 4,
           "depformer_num_layers": 2}
FRAME_HANDLED = re.compile(r"frame handled in ([0-9.]+) ?ms")
TEXT_TOKEN = re.compile(r"text token '")


def cmd_weights(args) -> int:
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"weights: no CUDA device for --device {args.device} (torch {torch.__version__})",
              file=sys.stderr)
        return 2
    kwargs = dict(loaders._lm_kwargs)
    if args.size == "tiny":
        kwargs.update(TINY_LM)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        lm = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=args.device, dtype=torch.bfloat16)
        state = {k: v.contiguous() for k, v in lm.state_dict().items()}
        n_params = sum(v.numel() for v in state.values())
        save_file(state, str(out / "moshi.safetensors"))
        del lm, state
        mimi = loaders.get_mimi(None, device=args.device)
        save_file({k: v.contiguous() for k, v in mimi.state_dict().items()},
                  str(out / "mimi.safetensors"))
    (out / "config.json").write_text(json.dumps(kwargs, indent=1))
    meta = {"size": args.size, "seed": args.seed, "lm_params": n_params, "dtype": "bfloat16",
            "torch": torch.__version__, "device": args.device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        from importlib.metadata import version

        meta["moshi"] = version("moshi")
    except Exception:
        meta["moshi"] = None
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"weights: {n_params / 1e9:.2f} B parameters ({args.size}) written to {out}")
    return 0


def cmd_serve(argv: list[str]) -> int:
    import runpy

    import torch

    if "cpu" in _arg(argv, "--device") and not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None  # (the warm-up's only CUDA call)
    sys.argv = ["moshi.server", *argv]
    runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)
    return 0


def _arg(argv: list[str], name: str) -> str:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return ""


def cmd_wav(args) -> int:
    with wave.open(args.src, "rb") as r:
        params, frames = r.getparams(), r.readframes(r.getnframes())
    need = int(args.seconds * params.framerate) * params.sampwidth * params.nchannels
    if not frames:
        print(f"wav: {args.src} holds no audio", file=sys.stderr)
        return 2
    data = (frames * (need // len(frames) + 1))[:need]
    with wave.open(args.dst, "wb") as w:
        w.setparams(params)
        w.writeframes(data)
    return 0


def _pct(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, (50, 95, 99))
    return {"n": int(a.size), "p50": round(float(p50), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2), "max": round(float(a.max()), 2),
            "over_80ms": int((a > 80.0).sum())}


def server_log_figures(text: str) -> dict:
    """The server's "frame handled in X ms" times (one per 80 ms frame it stepped) and how many
    text tokens it logged."""
    handled = [float(m.group(1)) for m in FRAME_HANDLED.finditer(text)]
    return {"frame_handled_ms": _pct(handled), "text_tokens": len(TEXT_TOKEN.findall(text)),
            "connections": text.count("accepted connection")}


def client_figures(stats: dict) -> dict:
    stages = stats.get("stages_ms") or {}
    keep = ("rtt", "e2e", "encode", "encode_work", "decode_work", "model")
    return {
        "end_reason": stats.get("end_reason"),
        "error": stats.get("error"),
        "duration_s": stats.get("duration_s"),
        "frames": stats.get("frames"),  # captured = sent, processed = received, played
        "stages_ms": {k: stages[k] for k in keep if k in stages},
        "counters": stats.get("counters"),
        "server": {k: v for k, v in (stats.get("model") or {}).items() if k.startswith("server_")},
        "text_tokens": len(((stats.get("transcript") or {}).get("tokens")) or []),
        "diagnosis": stats.get("diagnosis"),
    }


def cmd_figures(args) -> int:
    try:
        stats = json.loads(Path(args.stats).read_text())
    except (OSError, ValueError) as e:
        print(f"figures: cannot read the client's stats {args.stats}: {e}", file=sys.stderr)
        return 2
    try:
        log = Path(args.server_log).read_text(errors="replace")
    except OSError as e:
        print(f"figures: cannot read the server's log {args.server_log}: {e}", file=sys.stderr)
        return 2
    out = {"server": server_log_figures(log), "client": client_figures(stats)}
    if args.meta and Path(args.meta).is_file():
        out["weights"] = json.loads(Path(args.meta).read_text())
    Path(args.json).write_text(json.dumps(out, indent=1))
    c, s = out["client"], out["server"]
    frames = c["frames"] or {}
    st = c["stages_ms"]
    p50 = lambda k: (st.get(k) or {}).get("p50")  # noqa: E731
    print(f"figures: frames sent {frames.get('captured')}, received {frames.get('processed')}, "
          f"played {frames.get('played')}; rtt p50 {p50('rtt')} ms, e2e p50 {p50('e2e')} ms, "
          f"opus {p50('encode_work')} + {p50('decode_work')} ms; server frame handled p50 "
          f"{s['frame_handled_ms'].get('p50')} ms over {s['frame_handled_ms']['n']} frames "
          f"-> {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    p = argparse.ArgumentParser(prog="gpu_kyutai_server", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("dir")
    w.add_argument("--device", default="cuda")
    w.add_argument("--size", choices=("full", "tiny"), default="full")
    w.add_argument("--seed", type=int, default=1234)
    v = sub.add_parser("wav")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("seconds", type=float)
    f = sub.add_parser("figures")
    f.add_argument("--stats", required=True)
    f.add_argument("--server-log", required=True)
    f.add_argument("--json", required=True)
    f.add_argument("--meta")
    sub.add_parser("serve", help="python -m moshi.server ARGS...")
    args = p.parse_args(argv)
    return {"weights": cmd_weights, "wav": cmd_wav, "figures": cmd_figures}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
