"""Answer extraction and metrics: how a model's free text becomes right or wrong.

Extraction and metrics are named in task files (``extract: {kind: number}``,
``metric: numeric``), so a new data set needs no Python.  The rules follow the
conventions the paper's numbers were produced with:

* GSM8K: the number after "The answer is" or inside ``\\boxed{}``, else the last number
  in the text; commas inside numbers are dropped, signs and decimals kept, and two
  numbers are equal when they are equal as numbers (``18.0 == 18``).
* TriviaQA / NQ: SQuAD-style normalised exact match (lower case, no punctuation, no
  articles, single spaces) against any alias; an empty prediction is always wrong.
* Multiple choice: the first stand-alone option letter.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidConfigError

# -- numbers -----------------------------------------------------------------------------

_NUM = r"(?:(?<![\w)])-)?(?:\$\s*)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(?:\\boxed\{)?\s*(" + _NUM + r")", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*\$?\s*(" + _NUM + r")\s*\}")
_ANY_NUM = re.compile(_NUM)


def _clean_number(text: str) -> str:
    """``"$ 1,234.50"`` -> ``"1234.5"``; ``"-7"`` stays; trailing ``.0`` dropped."""
    s = text.replace(",", "").replace("$", "").replace(" ", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0" if s else ""
    return s


def extract_number(text: str) -> str:
    """The answer number of a chain of thought ('' when the text has no number)."""
    for pattern in (_ANSWER_IS, _BOXED):
        found = pattern.findall(text)
        if found:
            return _clean_number(found[-1])
    found = _ANY_NUM.findall(text)
    return _clean_number(found[-1]) if found else ""


def numbers_equal(pred: str, gold: str) -> bool:
    if not pred or not gold:
        return False
    try:
        return abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return pred == gold


# -- letters ------------------------------------------------------------------------------


def extract_letter(text: str, letters: str = "ABCDE") -> str:
    """The first option letter that stands alone: ``B``, ``(B)``, ``B.``, ``Answer: B``.

    A letter inside a word (the ``A`` of ``Apple``) is not an answer.
    """
    pattern = re.compile(r"(?<![A-Za-z])([" + re.escape(letters) + r"])(?![A-Za-z])")
    m = pattern.search(text)
    return m.group(1) if m else ""


# -- text -----------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def first_word(text: str) -> str:
    """The first word with surrounding punctuation and quotes removed (LAMBADA)."""
    words = text.split()
    return words[0].strip(string.punctuation + "“”‘’") if words else ""


def extract_regex(text: str, pattern: str) -> str:
    """Group 1 (or the whole match) of the first match; '' when nothing matches."""
    m = re.search(pattern, text, flags=re.MULTILINE)
    if not m:
        return ""
    return (m.group(1) if m.groups() else m.group(0)).strip()


# -- registries used by task files -----------------------------------------------------------

EXTRACTORS: dict[str, Callable[..., str]] = {
    "number": lambda text, **_: extract_number(text),
    "letter": lambda text, letters="ABCDE", **_: extract_letter(text, letters),
    "first_line": lambda text, **_: first_line(text),
    "first_word": lambda text, **_: first_word(text),
    "regex": lambda text, pattern, **_: extract_regex(text, pattern),
    "raw": lambda text, **_: text.strip(),
}


def extract(kind: str, text: str, **options: Any) -> str:
    if kind not in EXTRACTORS:
        raise InvalidConfigError(f"unknown extraction {kind!r} (known: {', '.join(sorted(EXTRACTORS))})")
    if kind == "regex":
        if "pattern" not in options:
            raise InvalidConfigError("extraction 'regex' needs a 'pattern'")
        pattern = options["pattern"]
        try:
            re.compile(pattern) if isinstance(pattern, str) else None
        except re.error as err:
            raise InvalidConfigError(f"extraction 'regex': invalid pattern {pattern!r}: {err}") from None
        if not isinstance(pattern, str):
            raise InvalidConfigError(f"extraction 'regex': the pattern must be a string, got {pattern!r}")
    try:
        return EXTRACTORS[kind](text, **options)
    except (TypeError, ValueError, re.error) as err:  # an option of the wrong type or name
        raise InvalidConfigError(f"extraction {kind!r} with options {options}: {err}") from None


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else [str(g) for g in gold]


def exact(pred: str, gold: str | Sequence[str]) -> bool:
    return bool(pred) and any(pred.strip() == g.strip() for g in _golds(gold))


def normalized_exact(pred: str, gold: str | Sequence[str]) -> bool:
    """Normalised exact match against any alias; an empty prediction is wrong."""
    p = normalize_answer(pred)
    return bool(p) and any(p == normalize_answer(g) for g in _golds(gold))


def contains(pred: str, gold: str | Sequence[str]) -> bool:
    """Some normalised alias occurs in the normalised prediction (as whole words)."""
    p = f" {normalize_answer(pred)} "
    return any((g := normalize_answer(a)) and f" {g} " in p for a in _golds(gold))


def numeric(pred: str, gold: str | Sequence[str]) -> bool:
    return any(numbers_equal(pred, _clean_number(g)) for g in _golds(gold))


def choice(pred: str, gold: str | Sequence[str]) -> bool:
    """Option letters, compared case-insensitively."""
    return bool(pred) and any(pred.strip().upper() == g.strip().upper() for g in _golds(gold))


METRICS: dict[str, Callable[[str, str | Sequence[str]], bool]] = {
    "exact": exact,
    "normalized_exact": normalized_exact,
    "contains": contains,
    "numeric": numeric,
    "choice": choice,
}


def score(metric: str, pred: str, gold: str | Sequence[str]) -> bool:
    if metric not in METRICS:
        raise InvalidConfigError(f"unknown metric {metric!r} (known: {', '.join(sorted(METRICS))})")
    return METRICS[metric](pred, gold)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensible at 0 % and 100 % too)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10000, seed: int = 0) -> tuple[float, list[float]]:
    """Accuracy of ``a`` minus ``b`` on the same items, in points, with a 95 % paired bootstrap interval.

    Pairing matters: two systems answering the same items are correlated, so the interval
    of the difference is much narrower than the two separate intervals suggest.
    """
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(x) == 0:
        return 0.0, [0.0, 0.0]
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(100 * float(x.mean()), 2), [round(100 * float(lo), 2), round(100 * float(hi), 2)]
