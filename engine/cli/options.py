"""Command-line options shared by the app, the headless runner and the bench, and the typed
configuration they become (`run_config`): nothing below engine.cli reads the namespace."""

from __future__ import annotations

import argparse

from engine.model.graph.lm_step import MODES
from engine.model.sampling import Sampling
from engine.model.source import ModelOptions
from engine.session.config import SessionConfig
from engine.session.runner import RunConfig

PANELS = ("latency", "queues", "log", "turns")  # the app's panels: shown (on) or hidden (off) at start


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        from engine.errors import UsageError

        raise UsageError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        if hasattr(ns, "demo_model"):  # --demo [moshi|hibiki]: `demo` stays a yes/no
            ns.demo = ns.demo_model is not None
        return ns


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--voice", choices=["moshika", "moshiko"],
                   help="Moshi's voice: kyutai/moshika-mlx-* (female) or kyutai/moshiko-mlx-* "
                   "(male, the default), with -q for the weights")
    g.add_argument("--demo", nargs="?", const="moshi", choices=["moshi", "hibiki"],
                   dest="demo_model",
                   help="tiny random model generated locally (offline, seconds): Moshi-shaped, "
                   "or with 'hibiki' shaped like Kyutai's live translation model")
    g.add_argument("--hf-repo", help="Hugging Face repo (default kyutai/moshiko-mlx-q4)")
    g.add_argument("-q", "--quantized", type=int, choices=[4, 8],
                   help="4 or 8 bits: pre-quantized file, or runtime quantization of bf16")
    g.add_argument("--moshi-weight", help="local LM weights (.safetensors)")
    g.add_argument("--mimi-weight", help="local Mimi codec weights (.safetensors)")
    g.add_argument("--tokenizer", help="local sentencepiece text tokenizer (.model)")
    g.add_argument("--lm-config", help="LM config.json (Kyutai HF format) for models other than v0.1")
    g.add_argument("--random", action="store_true",
                   help="real-size Moshi v0.1 (7B; or --lm-config's model) with random weights, "
                   "built in memory (-q 4/8 to quantize): nothing to download; can this "
                   "machine run Moshi in real time?")
    g.add_argument("--save-weights", metavar="PATH",
                   help="with --random: also write the weights there (15 GB bf16, 4.8 GB q4)")
    g.add_argument("--lm-step", default="auto",
                   choices=["auto", *MODES],
                   help="how the LM steps (default auto: layered on CUDA, onesync elsewhere; "
                   "stock: moshi_mlx's LmGen as is), to compare them with `bench step`")
    g.add_argument("--codec", choices=["auto", "rustymimi", "mlx"], default="auto",
                   help="the Mimi audio codec in this process: rustymimi (CPU) or MLX's Mimi "
                   "(fast on a GPU); auto (default): mlx when MLX runs on a GPU here")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    d = Sampling()
    g = p.add_argument_group("sampling (defaults: Kyutai's)")
    for kind in ("text", "audio"):
        g.add_argument(f"--{kind}-temperature", type=float, metavar="T",
                       default=getattr(d, f"{kind}_temperature"),
                       help=f"{kind} token temperature (default {getattr(d, f'{kind}_temperature'):g}; 0: greedy)")
        g.add_argument(f"--{kind}-topk", type=int, metavar="K", default=getattr(d, f"{kind}_top_k"),
                       help=f"sample the {kind} token among the K likeliest (default 0: off, top-p instead)")
        g.add_argument(f"--{kind}-topp", type=float, metavar="P", default=getattr(d, f"{kind}_top_p"),
                       help=f"{kind} nucleus sampling (default {getattr(d, f'{kind}_top_p'):g})")
    g.add_argument("--seed", type=int, help="seed the model's sampling: the same input gives the same conversation")


def sampling(args) -> Sampling:
    return Sampling(text_temperature=args.text_temperature, text_top_k=args.text_topk,
                    text_top_p=args.text_topp, audio_temperature=args.audio_temperature,
                    audio_top_k=args.audio_topk, audio_top_p=args.audio_topp, seed=args.seed)


def add_session_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audio and session")
    g.add_argument("--input", "-i", metavar="DEV|FILE.wav",
                   help="input device (index or name), a WAV file paced in real time, or 'silence'")
    g.add_argument("--output", "-o", metavar="DEV|FILE.wav",
                   help="output device (index or name), a WAV file, or 'null'")
    g.add_argument("--seconds", type=float, help="stop after N seconds of live audio")
    g.add_argument("--stats-json", metavar="PATH", help="write session statistics as JSON")
    g.add_argument("--trace", metavar="PATH", help="write a Perfetto/Chrome trace of every frame")
    g.add_argument("--session-dir", metavar="DIR",
                   help="folder for this session's recordings, transcript and stats "
                   "(default: a new folder under the user data dir)")
    g.add_argument("--no-save", action="store_true",
                   help="do not write a session folder")
    g.add_argument("--max-steps", type=int, help="LM context length before a new segment starts")
    g.add_argument("--whole-frames", action="store_true",
                   help="encode each 80 ms frame once it is complete, as Kyutai's CLI does "
                   "(default: start on its first 40 ms while the rest is captured)")
    g.add_argument("--aec", choices=["auto", "on", "off"], default="auto",
                   help="echo cancellation on the microphone (WebRTC's AEC3), so Moshi does not "
                   "hear itself through speakers: auto (default) = on when the output is an "
                   "audio device, off for files and null; the a key toggles it live")
    g.add_argument("--noise-suppression", action="store_true",
                   help="also WebRTC's noise suppressor on the microphone (with --aec)")
    g.add_argument("--turn-pause-ms", type=float, default=600.0, metavar="MS",
                   help="turn-taking: your silence that ends your turn (600)")
    g.add_argument("--turn-min-speech-ms", type=float, default=160.0, metavar="MS",
                   help="turn-taking: shorter speech is noise, not an utterance (160)")
    g.add_argument("--debug-step-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)


def add_panel_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("app")
    for name in PANELS:
        g.add_argument(f"--panel-{name}", choices=["on", "off"],
                       help=f"show the {name} panel at start (the app's key toggles it)")
    g.add_argument("--print-config", action="store_true",
                   help="print the options in effect (config file + command line) and exit")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="moshi-tui",
        description="Talk with Kyutai's Moshi on your machine and see where every 80 ms frame goes.",
        epilog="Other commands: `moshi-tui devices` lists audio devices; "
        "`moshi-tui bench step|codec|pipeline` measures.",
    )
    add_model_options(p)
    add_sampling_options(p)
    add_session_options(p)
    p.add_argument("--headless", action="store_true", help="no UI: status lines on stdout")
    add_panel_options(p)
    p.add_argument("--remote", metavar="URL",
                   help="talk to a Moshi server at ws(s)://HOST:PORT/api/chat (moshi.server, "
                   "moshi_mlx.local_web, moshi-backend, moshi-tui serve) instead of running the model here")
    return p


def model_options(args) -> ModelOptions:
    return ModelOptions(
        hf_repo=args.hf_repo,
        quantized=args.quantized,
        moshi_weight=args.moshi_weight,
        mimi_weight=args.mimi_weight,
        tokenizer=args.tokenizer,
        lm_config=args.lm_config,
        demo=args.demo,
        demo_kind=args.demo_model or "moshi",
        voice=args.voice,
        random=args.random,
        save_weights=args.save_weights,
        codec=args.codec,
        lm_step=args.lm_step,
    )


def session_config(args) -> SessionConfig:
    if args.seconds is not None and args.seconds <= 0:
        from engine.errors import UsageError

        raise UsageError("--seconds must be positive")
    return SessionConfig(
        model=model_options(args),
        input=args.input,
        output=args.output,
        seconds=args.seconds,
        max_steps=args.max_steps,
        step_delay_ms=args.debug_step_delay_ms,
        keep_records=bool(getattr(args, "trace", None)),
        early_encode=not args.whole_frames,
        session_dir=args.session_dir,
        save=not args.no_save,
        options={k: v for k, v in vars(args).items() if not k.startswith("_")},
        remote=args.remote,
        aec=args.aec,
        sampling=sampling(args),
        noise_suppression=args.noise_suppression,
        turns=turn_thresholds(args),
    )


def turn_thresholds(args):
    """--turn-pause-ms and --turn-min-speech-ms as the turn detector's options."""
    from engine.errors import UsageError
    from engine.telemetry.voice import turn_options

    for flag, v in (("--turn-pause-ms", args.turn_pause_ms),
                    ("--turn-min-speech-ms", args.turn_min_speech_ms)):
        if not (v > 0 and v < 60_000):
            raise UsageError(f"{flag} must be between 0 and 60000 ms, not {v:g}")
    return turn_options(end_pause_ms=args.turn_pause_ms, min_utterance_ms=args.turn_min_speech_ms)


def run_config(args) -> RunConfig:
    """What the app or the headless runner is asked to do, typed, from the parsed options."""
    return RunConfig(
        session=session_config(args),
        stats_json=args.stats_json,
        trace=args.trace,
        panels={name: getattr(args, f"panel_{name}") == "on" for name in PANELS
                if getattr(args, f"panel_{name}", None)},
    )
