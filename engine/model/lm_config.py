"""LM configs in Kyutai's config.json format: read and checked (readable messages, no MLX),
and turned into moshi_mlx's LmConfig."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelLoadError, ModelSourceError
from engine.model.kind import model_kind

if TYPE_CHECKING:  # pragma: no cover
    from moshi_mlx.models import LmConfig

# Keys moshi_mlx's LmConfig.from_config_dict reads without a default.
REQUIRED_CONFIG_KEYS = (
    "dim",
    "num_heads",
    "num_layers",
    "causal",
    "layer_scale",
    "context",
    "max_period",
    "positional_embedding",
    "depformer_dim",
    "depformer_num_heads",
    "depformer_num_layers",
    "depformer_dim_feedforward",
    "depformer_pos_emb",
    "dep_q",
    "text_card",
    "card",
    "n_q",
    "delays",
)


_POSITIVE_INT_KEYS = (
    "dim",
    "num_heads",
    "num_layers",
    "context",
    "max_period",
    "depformer_dim",
    "depformer_num_heads",
    "depformer_num_layers",
    "depformer_dim_feedforward",
    "dep_q",
    "text_card",
    "card",
    "n_q",
)


def load_lm_config(path: Path, what: str | None = None) -> dict:
    """Read and check an LM config in Kyutai's config.json format."""
    what = what or f"lm config {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelSourceError(f"{what} is not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read {what}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelSourceError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if isinstance(data, dict):
        model_kind(data, what)  # a model this app cannot talk with: say what it is
    check_lm_config(data, what)
    return data


def check_lm_config(data: Any, what: str = "lm config") -> None:
    """The checks that make `LmConfig.from_config_dict` succeed, with readable messages."""
    if not isinstance(data, dict):
        raise ModelSourceError(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in data]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ModelSourceError(f"{what} is missing key{'s' if len(missing) > 1 else ''} {keys}")
    for key in _POSITIVE_INT_KEYS:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelSourceError(f"{what}: {key!r} must be a positive integer, got {value!r}")
    delays = data["delays"]
    if not isinstance(delays, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in delays
    ):
        raise ModelSourceError(f"{what}: 'delays' must be a list of non-negative integers")
    if len(delays) != data["n_q"] + 1:
        raise ModelSourceError(
            f"{what}: 'delays' has {len(delays)} entries, expected n_q + 1 = {data['n_q'] + 1}"
            " (the text delay first)"
        )
    if data["dep_q"] > data["n_q"]:
        raise ModelSourceError(f"{what}: 'dep_q' ({data['dep_q']}) exceeds 'n_q' ({data['n_q']})")
    for dim, heads in (("dim", "num_heads"), ("depformer_dim", "depformer_num_heads")):
        if data[dim] % data[heads]:
            raise ModelSourceError(f"{what}: {dim!r} must be a multiple of {heads!r}")


def make_lm_config(lm_config: dict | None) -> "LmConfig":
    """moshi_mlx's LmConfig from a Kyutai config.json dict (None: Moshi 7B, config_v0_1)."""
    from moshi_mlx import models

    if lm_config is None:
        return models.config_v0_1()
    try:
        return models.LmConfig.from_config_dict(lm_config)
    except KeyError as exc:
        raise ModelLoadError(f"invalid lm config: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid lm config: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
