"""How the model picks its next text and audio tokens: temperature, top-k / top-p, a seed.

The defaults are Kyutai's (local.py and the MLX web server use moshi_mlx's `Sampler()`:
temperature 0.8, top-p 0.95, no top-k, for text and audio alike).  A top-k above 0 takes
precedence over top-p, as in moshi_mlx's sampler; temperature 0 is greedy.  With a seed the
same input gives the same conversation (the model process seeds MLX's generator once warm, and
again at each new conversation of `serve`).

`Sampling` travels to the model process as it is (in engine.model.messages.WorkerOptions and
`Configure`), and back as a plain dict (`as_dict`) in what it reports; `serve` reads it from
the query parameters Kyutai's web UI sends with the websocket URL (`with_query`), and
`--remote` sends it the same way (`to_query`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from engine.errors import UsageError

# Kyutai's web UI query parameter -> our field (the ones moshi_mlx's sampler supports)
QUERY_FIELDS = {
    "text_temperature": "text_temperature", "text_topk": "text_top_k",
    "audio_temperature": "audio_temperature", "audio_topk": "audio_top_k",
    "text_topp": "text_top_p", "audio_topp": "audio_top_p",
    "text_seed": "seed", "audio_seed": "seed",
}
# what the web UI sends that the MLX sampler has no notion of
UNSUPPORTED_QUERY = ("pad_mult", "repetition_penalty_context", "repetition_penalty")


@dataclass(frozen=True)
class Sampling:
    text_temperature: float = 0.8
    text_top_k: int = 0  # 0: off (top-p then)
    text_top_p: float = 0.95
    audio_temperature: float = 0.8
    audio_top_k: int = 0
    audio_top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        for kind in ("text", "audio"):
            t, k, p = (getattr(self, f"{kind}_{n}") for n in ("temperature", "top_k", "top_p"))
            if not (isinstance(t, (int, float)) and 0.0 <= t <= 10.0):
                raise UsageError(f"{kind} temperature must be between 0 and 10, not {t!r}")
            if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
                raise UsageError(f"{kind} top-k must be a whole number >= 0, not {k!r}")
            if not (isinstance(p, (int, float)) and 0.0 < p <= 1.0):
                raise UsageError(f"{kind} top-p must be in (0, 1], not {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise UsageError(f"the seed must be a whole number >= 0, not {self.seed!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def samplers(self):
        """moshi_mlx Samplers for text and audio."""
        from moshi_mlx import utils

        def one(kind: str):
            k = getattr(self, f"{kind}_top_k")
            return utils.Sampler(temp=float(getattr(self, f"{kind}_temperature")),
                                 top_p=float(getattr(self, f"{kind}_top_p")),
                                 top_k=k if k > 0 else None)

        return one("text"), one("audio")

    # ------------------------------------------------------------------ Kyutai's query string
    def with_query(self, query: dict[str, str]) -> tuple["Sampling", list[str], list[str]]:
        """These settings overridden by a websocket URL's query parameters: (sampling, names
        applied, names ignored).  A malformed value is a UsageError (one line)."""
        changes: dict = {}
        applied, ignored = [], []
        for name, raw in query.items():
            field = QUERY_FIELDS.get(name)
            if field is None:
                ignored.append(name)
                continue
            try:
                value = int(raw) if field.endswith("top_k") or field == "seed" else float(raw)
            except ValueError:
                raise UsageError(f"{name}={raw!r} is not a number") from None
            changes[field] = value
            applied.append(name)
        return replace(self, **changes), applied, ignored

    def to_query(self) -> dict[str, str]:
        """Every setting as query parameters: Kyutai's web UI's names, and `text_topp` /
        `audio_topp` (serve's; Kyutai's servers have no top-p and ignore them)."""
        q = {"text_temperature": f"{self.text_temperature!r}", "text_topk": str(self.text_top_k),
             "text_topp": f"{self.text_top_p!r}",
             "audio_temperature": f"{self.audio_temperature!r}",
             "audio_topk": str(self.audio_top_k), "audio_topp": f"{self.audio_top_p!r}"}
        if self.seed is not None:
            q["text_seed"] = q["audio_seed"] = str(self.seed)
        return q

    def describe(self) -> str:
        def one(kind: str) -> str:
            k = getattr(self, f"{kind}_top_k")
            cut = f"top-k {k}" if k else f"top-p {getattr(self, f'{kind}_top_p'):g}"
            return f"{kind} t={getattr(self, f'{kind}_temperature'):g} {cut}"

        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{one('text')}, {one('audio')}{seed}"
