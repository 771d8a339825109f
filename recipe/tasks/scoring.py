"""A quick local check of responses, for tables (checkpoint selection, eval, tests).

Not the official reward: that comes from the reward service (Math-Verify, sandbox). Math: the
last \\boxed{} compared exactly (or numerically) with the gold answer. Code: the program runs in a
child Python process with a wall-clock limit; it is trusted about as much as our own tiny model's
output is — use the reward service for untrusted models.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from protocol.schema import CodeReference, MathReference
from recipe.tasks.items import TaskItem
from reward_service.extract import last_boxed, program

if TYPE_CHECKING:
    from reward_service.scorer import Scorer

ScoreFn = Callable[[Sequence[TaskItem], Sequence[str]], list[bool]]
"""(items, responses) -> correct?, one per pair: the local check or the reward service's."""

CODE_TIMEOUT_S = 5.0


def _normalise(answer: str) -> str:
    return "".join(answer.strip().strip("$").split())


def math_correct(response: str, ref: MathReference) -> bool:
    got = last_boxed(response)
    if got is None:
        return False
    a, b = _normalise(got), _normalise(ref.answer)
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def _run(source: str, stdin: str) -> subprocess.CompletedProcess[str] | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "solution.py")
        with open(path, "w") as fh:
            fh.write(source)
        try:
            return subprocess.run([sys.executable, "-I", "-S", path], input=stdin, capture_output=True,
                                  text=True, timeout=CODE_TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            return None


def code_correct(response: str, ref: CodeReference) -> bool:
    src = program(response)
    if src is None:
        return False
    if ref.test_code:
        # A program that exits 0 before the tests run must not pass: require a fresh nonce.
        nonce = uuid.uuid4().hex
        done = _run(f"{src}\n\n{ref.test_code}\n\ncheck({ref.entry_point})\nprint({nonce!r})\n", "")
        if done is None or done.returncode != 0 or nonce not in done.stdout:
            return False
    for test in ref.io_tests:
        done = _run(src, test.stdin)
        if done is None or done.returncode != 0 or done.stdout.split() != test.stdout.split():
            return False
    return True


def is_correct(item: TaskItem, response: str) -> bool:
    ref = item.reference
    return math_correct(response, ref) if isinstance(ref, MathReference) else code_correct(response, ref)


def score_all(items: Sequence[TaskItem], responses: Sequence[str], workers: int = 2) -> list[bool]:
    """is_correct for each (item, response) pair; code runs `workers` at a time.

    A pair that repeats is checked once: a model sharpened by RL samples the same program for an
    item again and again, and each check of a program is a fresh Python process.
    """
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    keys = [(it.id, it.reference.model_dump_json(), r) for it, r in zip(items, responses)]
    first: dict[tuple[str, str, str], int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    with ThreadPoolExecutor(workers) as pool:
        verdicts = dict(zip(first, pool.map(is_correct, [items[i] for i in first.values()],
                                            [responses[i] for i in first.values()])))
    return [verdicts[key] for key in keys]


def with_reward_service(scorer: Scorer) -> ScoreFn:
    """The official verdicts (Math-Verify, sandbox) as a ScoreFn, for eval and selection tables."""
    from reward_service.scorer import Item

    def score(items: Sequence[TaskItem], responses: Sequence[str]) -> list[bool]:
        verdicts = scorer.score([Item(it.task, r, it.reference) for it, r in zip(items, responses, strict=True)])
        return [v.status.value == "correct" for v in verdicts]

    return score
