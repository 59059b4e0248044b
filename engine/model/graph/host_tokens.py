"""LmGen's token bookkeeping (its `gen_sequence` and the codebook delays) on the host."""

from __future__ import annotations

import numpy as np

UNGENERATED = -2  # LmGen.ungenerated_token


class HostTokens:
    """LmGen's `gen_sequence` and delay arithmetic, in numpy, index for index."""

    def __init__(self, cfg, max_steps: int):
        self.delays = list(cfg.audio_delays)
        self.n_q = cfg.audio_codebooks
        self.dep_q = cfg.depformer.num_slices
        self.max_delay = max(self.delays)
        self.text_start = cfg.text_out_vocab_size
        self.pad = cfg.audio_padding_token
        self.max_steps = max_steps
        self.seq = np.full((1 + self.n_q, max_steps), UNGENERATED, np.int32)
        self.step_idx = 0

    def reset(self) -> None:
        self.seq.fill(UNGENERATED)
        self.step_idx = 0

    def inputs(self, other_audio) -> np.ndarray:
        """The (1 + n_q,) token ids step `step_idx` feeds the LM (text, then each codebook)."""
        t = self.step_idx
        if t >= self.max_steps:
            raise ValueError(f"reached max-steps {self.max_steps}")
        self.seq[1 + self.dep_q :, t] = other_audio
        vec = np.empty(1 + self.n_q, np.int32)
        vec[0] = self.text_start if t == 0 else self.seq[0, t - 1]
        for cb, delay in enumerate(self.delays):
            g = t - 1 - delay
            vec[1 + cb] = self.seq[1 + cb, g] if g >= 0 else self.pad
        if (vec == UNGENERATED).any():
            raise ValueError(f"ungenerated value in the input tokens at step {t}")
        return vec

    def record(self, text: int, audio: np.ndarray) -> None:
        t = self.step_idx
        self.seq[0, t] = text
        for cb in range(self.dep_q):
            g = t - self.delays[cb]
            if g >= 0:
                self.seq[1 + cb, g] = audio[cb]
        self.step_idx = t + 1

    def last_audio(self) -> np.ndarray | None:
        g = self.step_idx - 1 - self.max_delay
        if g < 0:
            return None
        tokens = self.seq[1 : 1 + self.dep_q, g]
        if (tokens == self.pad).any():
            return None
        if (tokens == UNGENERATED).any():
            raise ValueError(f"ungenerated value in last-audio tokens {self.step_idx}")
        return tokens.astype(np.uint32).reshape(1, -1)
