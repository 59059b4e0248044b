"""Which Kyutai models this app can talk with, told apart by their config.json.

It runs the models that take audio in and give audio (and text) out, one 80 ms step at a time
through moshi_mlx's `LmGen.step`: Moshi (moshiko, moshika: a conversation) and Hibiki (live
speech translation: the user speaks one language, Hibiki speaks another; its LM is conditioned,
as Kyutai's web server conditions it).  Text-only models (Helium), speech-to-text (audio in,
text out) and text-to-speech (text in) are refused with one line saying what they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ModelSourceError

# Kyutai's web server (moshi_mlx.local_web) conditions a model that has conditioners with this
CONDITION = ("description", "very_good")


@dataclass(frozen=True)
class ModelKind:
    name: str  # "moshi" or "hibiki"
    mode: str  # "conversation" or "translation"
    codebooks: int  # Mimi codebooks each way (the user's in, the model's out): dep_q


MOSHI = ModelKind("moshi", "conversation", 8)  # moshi_mlx's config_v0_1 (no config.json)

_REFUSED = {
    "helium": "a text-only language model (Helium): it neither hears nor speaks",
    "stt": "a speech-to-text model: it hears but does not speak",
    "asr": "a speech-to-text model: it hears but does not speak",
    "tts": "a text-to-speech model: it speaks from text, it does not listen",
}


def model_kind(config: dict | None, what: str = "the model") -> ModelKind:
    """The kind of model a Kyutai config.json describes (None: Moshi v0.1).  Raises
    ModelSourceError naming what the model is when this app cannot talk with it."""
    if config is None:
        return MOSHI
    model_type = str(config.get("model_type") or "").lower()
    for key, text in _REFUSED.items():
        if key in model_type:
            raise ModelSourceError(f"{what} is {text}; moshi-tui runs Moshi and Hibiki",
                                   exit_code=2)
    n_q, dep_q = config.get("n_q"), config.get("dep_q")
    if n_q == 0:  # (a config missing its keys is told so by the config check)
        raise ModelSourceError(f"{what} is {_REFUSED['helium']}; moshi-tui runs Moshi and "
                               "Hibiki", exit_code=2)
    if dep_q == 0:
        raise ModelSourceError(f"{what} is {_REFUSED['stt']}; moshi-tui runs Moshi and Hibiki",
                               exit_code=2)
    codebooks = int(dep_q or 8)
    if "hibiki" in model_type or config.get("conditioners"):
        return ModelKind("hibiki", "translation", codebooks)
    return ModelKind("moshi", "conversation", codebooks)


def condition_tensor(model):
    """The condition a conditioned model (Hibiki) is run with, as Kyutai's web server runs it;
    None for a model without conditioners."""
    provider = getattr(model, "condition_provider", None)
    if provider is None:
        return None
    name, value = CONDITION
    return provider.condition_tensor(name, value)
