"""Answer and program extraction: the same results as the straightforward scans they replace, in
time linear in the response (a response built to make those scans quadratic is scored at once)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_service.extract import last_boxed, program

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def reference_boxed(text: str) -> str | None:
    """The quadratic scan extraction used before: from each \\boxed{ (last first) to its close."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            c = text[i]
            if c == "{" and text[i - 1] != "\\":
                depth += 1
            elif c == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def reference_program(text: str) -> str | None:
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else None


PIECES = ["\\boxed{", "\\fbox {", "{", "}", "\\", "\\{", "\\}", "7", " ", "x", "\n", "```", "```python\n",
          "```py \r\n", "```PYTHON3\n", "``", "print(1)\n"]
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=3000, deadline=None)
@given(texts)
def test_same_answer_as_the_scan(text: str) -> None:
    assert last_boxed(text) == reference_boxed(text)


@settings(max_examples=3000, deadline=None)
@given(texts)
def test_same_program_as_the_regex(text: str) -> None:
    assert program(text) == reference_program(text)


def test_known_cases() -> None:
    assert last_boxed("so \\boxed{1} and then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} \\boxed{ {a }") == "1"  # the last one never closes
    assert last_boxed("\\boxed{\\boxed{3}}") == "3"
    assert last_boxed("\\boxed{}") is None
    assert program("a\n```python\nx = 1\n```\nb\n```\ny = 2\n```") == "y = 2\n"
    assert program("```js\nno\n```") is None
    assert program("just code", whole_text=True) == "just code"


@pytest.mark.timeout(60)  # the scans replaced here take hours on these inputs
@pytest.mark.parametrize("text", [
    "\\boxed{" * 200_000,  # 1.4 MB of openings that never close
    "{" * 500_000 + "\\boxed{1}",
    "```python\n" * 150_000,  # fences that never close
    "``` " * 300_000,
], ids=["boxed-open", "braces", "fence-open", "fence-bad-header"])
def test_hostile_responses_are_linear(text: str) -> None:
    last_boxed(text)
    program(text, whole_text=True)


def _steps(fn: Callable[[str], object], text: str) -> int:
    """Python lines `fn` executes on `text`: a count of work that no machine load can change."""
    count = 0

    def tracer(frame: FrameType, event: str, _: object) -> Callable[..., object] | None:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn(text)
    finally:
        sys.settrace(None)
    return count


HOSTILE = {  # a unit of text repeated: responses that made the replaced scans quadratic
    "boxed-open": "\\boxed{",
    "boxed-nested": "\\boxed{{",
    "fence-open": "```python\n",
    "fence-bad-header": "``` ",
}


@pytest.mark.parametrize("unit", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("extract", [last_boxed, lambda t: program(t, whole_text=True)], ids=["boxed", "program"])
def test_work_grows_linearly_with_the_response(extract: Callable[[str], object], unit: str) -> None:
    small, large = _steps(extract, unit * 2_000), _steps(extract, unit * 8_000)
    assert large <= 4 * small + 50, (small, large)  # 4x the text: at most 4x the steps (+ set-up)


def test_the_step_count_sees_a_quadratic_scan() -> None:
    """The measure above would have caught the scan it replaced: 4x the text, ~16x the steps."""
    small, large = _steps(reference_boxed, "\\boxed{" * 100), _steps(reference_boxed, "\\boxed{" * 400)
    assert large > 12 * small, (small, large)
