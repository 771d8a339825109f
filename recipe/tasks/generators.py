"""The built-in tasks, generated offline with programmatic teacher solutions.

Sized for what a from-scratch tiny MoE learns in minutes on CPU (STACK-NOTES, last section):
one-digit chain sums and small leg counts (math); leg counts as a function of x and linear
functions from three values (code).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from protocol.config.tasks import SOURCES, TASK_OF, Source  # noqa: F401 (re-exported)
from protocol.schema import CodeReference, MathReference, TaskKind
from recipe.tasks.items import TaskItem, make_item


def _chain_sum_teacher(expression: str) -> tuple[str, str]:
    """One line per operation, left to right, then the boxed result."""
    tokens = expression.split()
    acc = int(tokens[0])
    lines = []
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        new = acc + int(operand) if op == "+" else acc - int(operand)
        lines.append(f"{acc} {op} {operand} = {new}")
        acc = new
    return "\n".join(lines + [f"\\boxed{{{acc}}}"]), str(acc)


def _leg_counting_teacher(animals: dict[str, int], legs: dict[str, int]) -> tuple[str, str]:
    """count * legs per kind, then a running sum, then the boxed total."""
    lines, parts = [], []
    for name, count in animals.items():
        part = count * legs[name]
        lines.append(f"{count} * {legs[name]} = {part}")
        parts.append(part)
    acc = parts[0]
    for part in parts[1:]:
        lines.append(f"{acc} + {part} = {acc + part}")
        acc += part
    return "\n".join(lines + [f"\\boxed{{{acc}}}"]), str(acc)


def chain_sum(seed: int) -> Iterator[TaskItem]:
    import reasoning_gym  # heavy; only when items are generated, not when a command starts

    ds = reasoning_gym.create_dataset("chain_sum", size=1_000_000, seed=seed, min_terms=2, max_terms=3,
                                      min_digits=1, max_digits=1, allow_negation=False)
    for i in range(len(ds)):
        expression = ds[i]["metadata"]["expression"]
        solution, answer = _chain_sum_teacher(expression)
        yield make_item(TaskKind.math, "chain_sum", f"What is {expression}?",
                        MathReference(answer=answer), solution)


def _listed(animals: dict[str, int]) -> str:
    """`2 cows, 1 spider`: how both leg tasks name their animals."""
    return ", ".join(f"{n} {name}{'s' if n > 1 else ''}" for name, n in animals.items())


def leg_counting(seed: int) -> Iterator[TaskItem]:
    import reasoning_gym
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    ds = reasoning_gym.create_dataset("leg_counting", size=1_000_000, seed=seed, min_animals=1,
                                      max_animals=3, min_instances=1, max_instances=3)
    for i in range(len(ds)):
        animals: dict[str, int] = ds[i]["metadata"]["animals"]
        solution, answer = _leg_counting_teacher(animals, ANIMALS)
        if answer != ds[i]["answer"]:
            raise AssertionError(f"leg_counting teacher disagrees with reasoning_gym on item {i}")
        yield make_item(TaskKind.math, "leg_counting", f"How many legs in total: {_listed(animals)}?",
                        MathReference(answer=answer), solution)


def _check_affine(slope: int, const: int) -> CodeReference:
    # Hidden inputs beyond the ones a question shows make a lookup table of them fail.
    test_code = ("def check(candidate):\n"
                 "    for x in (-3, 0, 1, 2, 5, 11):\n"
                 f"        assert candidate(x) == {slope} * x + ({const}), x\n")
    return CodeReference(test_code=test_code, entry_point="f")


def legs_fn_item(kind: str, others: dict[str, int]) -> TaskItem:
    """f(x) = legs of x animals of one kind plus a few of others: leg_counting as a program.

    Its facts (legs per animal, count * legs, small sums) are the ones leg_counting teaches, shared
    by many items, so a held-out item is a new combination of facts seen in training, not a new
    fact; the teacher works the constant out in comments, as leg_counting's solution does.
    """
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    work, constant = _leg_counting_teacher(others, ANIMALS)
    question = f"Write f(x): the legs of x {kind}s and {_listed(others)}."
    comments = "".join(f"    # {line}\n" for line in work.splitlines()[:-1])
    solution = f"```python\ndef f(x):\n{comments}    return {ANIMALS[kind]} * x + {constant}\n```"
    return make_item(TaskKind.code, "legs_fn", question, _check_affine(ANIMALS[kind], int(constant)), solution)


def legs_fn(seed: int) -> Iterator[TaskItem]:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    rng, names = random.Random(seed), sorted(ANIMALS)
    while True:
        kind, *others = rng.sample(names, rng.randint(2, 3))
        yield legs_fn_item(kind, {name: rng.randint(1, 3) for name in others})


def linear_fn_item(a: int, b: int) -> TaskItem:
    question = f"Write f with f(0)={b}, f(1)={a + b}, f(2)={2 * a + b}."
    body = f"{a} * x {'-' if b < 0 else '+'} {abs(b)}"
    # The slope is worked out in a comment, f(1) - f(0) in chain_sum's `x op y = z` form. At the
    # demo's model size that still does not carry over to held-out items: each item's slope is a
    # subtraction no other linear_fn item shows, so it is memorised (docs/data.md).
    slope = f"{a + b} - {b} = {a}" if b >= 0 else f"{a + b} + {-b} = {a}"
    solution = f"```python\ndef f(x):\n    # slope: {slope}\n    return {body}\n```"
    return make_item(TaskKind.code, "linear_fn", question, _check_affine(a, b), solution)


def linear_fn(seed: int) -> Iterator[TaskItem]:
    rng = random.Random(seed)
    while True:
        yield linear_fn_item(rng.randint(-9, 9), rng.randint(-9, 9))


GENERATORS: dict[Source, Callable[[int], Iterator[TaskItem]]] = {
    "chain_sum": chain_sum, "leg_counting": leg_counting, "legs_fn": legs_fn, "linear_fn": linear_fn}
