"""Answer extraction and metrics against hand-checked outputs, for every built-in task.

Each case is an output a model could write and the verdict a person reading it would
give; the built-in task files are loaded so their extraction/metric settings are the
ones tested.
"""

from __future__ import annotations

import pytest

from unite_llm.errors import InvalidConfigError
from unite_llm.eval import scoring
from unite_llm.eval.tasks import Task

GSM_CASES = [
    # (model output, gold from the data file, correct?)
    (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18.\nThe answer is \\boxed{18}",
        "Therefore, the answer is 18",
        True,
    ),
    ("So the total is 1,234 + 1 = 1,235 dollars.\nThe answer is 1,235", "Therefore, the answer is 1235", True),
    ("The answer is \\boxed{1,235}", "#### 1,235", True),
    ("He lost 5 - 12 = -7 degrees.\nThe answer is -7", "Therefore, the answer is -7", True),
    ("The temperature fell by 7, so it is 5-12 = -7", "#### -7", True),  # last number, negative
    ("The price is $18.00 in total", "#### 18", True),  # decimals equal as numbers
    ("10 - 3 = 7 apples remain. She has 3 apples left.", "#### 7", False),  # last number is 3
    ("The answer is 18. Then 5 more arrive, 23.", "#### 23", False),  # 'The answer is' wins over the last number
    ("I do not know.", "#### 5", False),  # no number at all
    ("\\boxed{42} after 3 steps", "#### 42", True),  # boxed wins over the last number
    ("The answer is: $ 2,000", "#### 2000", True),
]


@pytest.mark.parametrize("output,gold_text,correct", GSM_CASES)
def test_gsm8k_extraction_and_numeric_match(output: str, gold_text: str, correct: bool) -> None:
    task = Task.load("gsm8k")
    gold = scoring.extract("number", gold_text)
    assert task.score(task.extract(output), gold) is correct


def test_gsm8k_numbers() -> None:
    assert scoring.extract_number("The answer is \\boxed{1,234,567}") == "1234567"
    assert scoring.extract_number("so -3.50 is left") == "-3.5"
    assert scoring.extract_number("from 3-5 people") == "5"  # a hyphen between numbers is not a sign
    assert scoring.extract_number("nothing here") == ""
    assert not scoring.numbers_equal("", "0")


def test_gsm8k_gold_of_the_papers_items(datasets) -> None:
    task = Task.load("gsm8k", datasets_dir=datasets)
    items = task.items(limit=None)
    assert len(items) == 1319
    assert items[0].gold == "18"  # Janet's ducks: "Therefore, the answer is 18"
    assert all(i.gold and i.gold.lstrip("-").replace(".", "").isdigit() for i in items)  # commas removed


QA_CASES = [
    ("The Beatles.", ["Beatles", "The Beatles"], True),  # article and punctuation dropped
    ("George V.", ["George V", "King George V"], True),
    ("  sunset   BOULEVARD ", ["Sunset Boulevard"], True),
    ("Sunset", ["Sunset Boulevard"], False),  # a part is not an exact match
    ("", ["the"], False),  # empty prediction is wrong even if the gold normalises to empty
    (".", ["."], False),
    ("Dalziel and Pascoe", ["Dalziel & Pascoe", "Dalziel and Pascoe"], True),
]


@pytest.mark.parametrize("task_name", ["triviaqa", "nq"])
@pytest.mark.parametrize("output,gold,correct", QA_CASES)
def test_short_answer_tasks(task_name: str, output: str, gold: list[str], correct: bool) -> None:
    task = Task.load(task_name)
    assert task.score(task.extract(output + "\nQuestion: next"), gold) is correct


def test_short_answer_first_line_only() -> None:
    task = Task.load("triviaqa")
    assert task.extract(" Harry Patch.\n\nQuestion: who") == "Harry Patch."


LETTER_CASES = [
    (" B", "B", True),
    (" (C)", "C", True),
    (" D.", "D", True),
    (" Answer: A", "A", True),
    (" A", "B", False),
    (" Apples", "A", False),  # a letter inside a word is no answer
    ("", "A", False),
]


LETTER_TASKS = {"arc_challenge": "ABCDE", "arc_easy": "ABCDE", "piqa": "AB", "mmlu": "ABCD", "cmmlu": "ABCD"}


@pytest.mark.parametrize(
    "task_name,output,gold,correct",
    [(t, o, g, c) for t, letters in LETTER_TASKS.items() for o, g, c in LETTER_CASES if g in letters],
)
def test_letter_tasks(task_name: str, output: str, gold: str, correct: bool) -> None:
    task = Task.load(task_name)
    assert task.score(task.extract(output), gold) is correct


def test_piqa_letters_limited_to_two_options() -> None:
    assert Task.load("piqa").extract(" C") == ""


def test_lambada_first_word() -> None:
    task = Task.load("lambada")
    assert task.score(task.extract(" bushes. But she did not"), "bushes") is True
    assert task.score(task.extract(" “Matilda,” she said"), "Matilda") is True
    assert task.score(task.extract(" the other team."), "Kelly") is False
    assert task.score(task.extract(""), "Kelly") is False


def test_contains_and_regex_metrics() -> None:
    assert scoring.contains("It was Sunset Boulevard, I think", ["Sunset Boulevard"])
    assert not scoring.contains("Sunsets", ["Sunset"])
    assert scoring.extract("regex", "Final: 42 apples", pattern=r"Final: (\d+)") == "42"
    assert scoring.extract("regex", "nothing", pattern=r"Final: (\d+)") == ""
    with pytest.raises(InvalidConfigError, match="unknown metric"):
        scoring.score("bleu", "a", "a")
    with pytest.raises(InvalidConfigError, match="unknown extraction"):
        scoring.extract("magic", "a")


def test_wilson_interval() -> None:
    lo, hi = scoring.wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.09  # 7.1 % for 0/50
    lo, hi = scoring.wilson_interval(25, 50)
    assert lo == pytest.approx(0.366, abs=1e-3) and hi == pytest.approx(0.634, abs=1e-3)
