"""Sampling controls (engine.model.sampling): Kyutai's defaults, checked values, the web UI's
query parameters, and a seed that makes the model's choices reproducible."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.errors import UsageError
from engine.model.sampling import Sampling
from tests.conftest import ROOT

pytest_plugins = ["conftest_models"]


def test_defaults_are_kyutais():
    from moshi_mlx import utils

    s = Sampling()
    text, audio = s.samplers()
    ref = utils.Sampler()
    for got in (text, audio):
        assert (got.temp, got.top_p, got.top_k) == (ref.temp, ref.top_p, ref.top_k)
    assert s.describe() == "text t=0.8 top-p 0.95, audio t=0.8 top-p 0.95"


@pytest.mark.parametrize("kw", [dict(text_temperature=-1), dict(audio_top_k=-3),
                                dict(text_top_p=0), dict(seed=-1), dict(audio_top_k=2.5)])
def test_bad_values_are_refused(kw):
    with pytest.raises(UsageError):
        Sampling(**kw)


def test_query_parameters_round_trip():
    s = Sampling(text_temperature=0.5, text_top_k=25, seed=9)
    back, applied, ignored = Sampling().with_query({**s.to_query(), "pad_mult": "0"})
    assert back == s and ignored == ["pad_mult"] and "text_topk" in applied


def test_a_seed_makes_the_models_choices_reproducible(demo_files):
    """The model process seeds MLX once warm: the same seed and input give the same tokens,
    another seed other tokens."""
    import mlx.core as mx

    from engine.model.load import load_lm
    from engine.model.source import ModelOptions, resolve
    from engine.model.worker import Stepper, seed_mlx, warm

    model, _ = load_lm(resolve(ModelOptions(demo=True)))
    codes = np.zeros((8, 1), np.uint32)

    def tokens(seed, sampling=None):
        st = Stepper(model, 200, "onesync", sampling or Sampling(seed=seed))
        warm(st)
        seed_mlx(seed)
        out = [st.step(codes)[0] for _ in range(40)]
        st.lm.restore()
        return out

    a, b, c = tokens(7), tokens(7), tokens(8)
    assert a == b and a != c
    greedy = Sampling(text_temperature=0.0, audio_temperature=0.0)
    mx.random.seed(1)
    g1 = tokens(None, greedy)
    mx.random.seed(2)
    assert tokens(None, greedy) == g1  # temperature 0: the same whatever the random state


def test_a_bad_value_on_the_command_line_is_one_line():
    r = subprocess.run([sys.executable, "-m", "tui.cli", "--demo", "--headless",
                        "--text-temperature", "-2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "moshi-tui: error: text temperature must be between 0 and 10, not -2.0"
