"""GenerationConfig: the one check of generation settings that the CLI, the API, the server
and config/task files share (issue 28 items 5 and 12)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unite_llm.errors import InvalidConfigError, UniteError
from unite_llm.sampling import GenerationConfig

XFF = b"\xff".decode("utf-8", "surrogateescape")  # what argv holds for the byte 0xFF


@pytest.mark.parametrize("stop", [["\ud800"], "\udcff", ["ok", "x\udfffy"]])
def test_a_lone_surrogate_in_a_stop_string_is_a_config_error_naming_stop(stop) -> None:
    with pytest.raises(InvalidConfigError, match=r"stop string.*not valid UTF-8"):
        GenerationConfig(stop=stop)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": "5"}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": None}, "top_p"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"stop": [3]}, "stop"),
        ({"stop": 3}, "stop"),
    ],
)
def test_settings_of_the_wrong_type_are_config_errors(kwargs, field) -> None:
    with pytest.raises(InvalidConfigError, match=field):
        GenerationConfig(**kwargs)


def test_a_string_stop_is_one_stop_string() -> None:
    assert tuple(GenerationConfig(stop="Answer").stop) == ("Answer",)


def test_cli_stop_of_an_undecodable_byte_is_one_line_not_a_traceback() -> None:
    """``unite generate --stop "$(printf '\\xff')"``: argv's undecodable byte arrives as a lone
    surrogate; it is refused before any model loads."""
    run = subprocess.run(
        [sys.executable, "-m", "unite_llm.cli", "generate", "-m", "smollm2-135m-instruct", "--stop", XFF, "Hi"],
        capture_output=True,
        timeout=120,
    )
    err = run.stderr.decode("utf-8", "replace")
    assert run.returncode == InvalidConfigError.exit_code == UniteError.exit_code, err
    assert "Traceback" not in err and err.count("\n") == 1 and "stop string" in err, err


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-30, 1e308])
def test_an_extreme_temperature_samples_without_nan(temperature: float) -> None:
    """Found by the server's schema fuzz (a 500): temperature 5e-324 divided every log-probability
    to -inf, and -inf - -inf is NaN.  A tiny temperature is greedy, a huge one near-uniform."""
    import warnings

    import numpy as np

    from unite_llm.sampling import choose

    probs = np.array([0.2, 0.5, 0.3])
    config = GenerationConfig(temperature=temperature, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        picks = {choose(probs, config, np.random.default_rng(s)) for s in range(20)}
    if temperature < 1e-20:
        assert picks == {1}
    else:
        assert len(picks) > 1
