"""The suite turns deprecation warnings raised from our own code into errors (pyproject's
filterwarnings), and leaves third-party ones as warnings."""

from __future__ import annotations

import warnings

import pytest


def test_our_deprecations_are_errors() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="flatten_dense.core.x")


def test_third_party_deprecations_stay_warnings() -> None:
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="somebody_else")
