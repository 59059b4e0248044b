"""A component the suite needs (jackd, PortAudio's JACK host API) that is missing skips its
tests on a developer's machine, but fails them under CI=true: CI installs everything, so a
skip there means a broken install that would otherwise pass unnoticed."""

from __future__ import annotations

import pytest

from tests.conftest import require


def test_missing_component_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="jackd"):
        require("device tests need JACK: jackd not found")


def test_missing_component_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: device tests need JACK"):
        require("device tests need JACK: jackd not found")
