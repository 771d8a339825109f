from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from protocol.schema import CodeReference, MathReference, TaskKind, VerdictStatus
from recipe.tasks import (
    SOURCES,
    TaskDataError,
    TasksConfig,
    build_tasks,
    load_jsonl,
    sft_examples,
    tokenizer_corpus,
)
from recipe.tasks.generators import legs_fn_item, linear_fn_item
from recipe.verdicts import correct, verdicts
from reward_service.scorer import Scorer

SMALL = TasksConfig(train_size=150, held_out_size=40)


def test_tasks_are_deterministic_by_seed() -> None:
    assert build_tasks(SMALL, "train") == build_tasks(SMALL, "train")
    other = build_tasks(SMALL.model_copy(update={"seed": 7}), "train")
    assert [it.id for it in other] != [it.id for it in build_tasks(SMALL, "train")]


@pytest.mark.parametrize("seeds", [(0, 0), (0, 1), (3, 11)])
def test_train_and_held_out_never_share_content(seeds: tuple[int, int]) -> None:
    train = build_tasks(SMALL.model_copy(update={"seed": seeds[0]}), "train")
    held = build_tasks(SMALL.model_copy(update={"seed": seeds[1]}), "held_out")
    assert train and held
    assert not {(it.source, it.question) for it in train} & {(it.source, it.question) for it in held}


def _easy_share(items: list, source: str) -> float:
    """Share of a math source's items in its small easy corner: two-term sums, one-animal counts."""
    mine = [it.question for it in items if it.source == source]
    easy = [q for q in mine if (q.count("+") + q.count("-") == 1 if source == "chain_sum" else "," not in q)]
    return len(easy) / len(mine)


@pytest.mark.parametrize("source", ["chain_sum", "leg_counting"])
def test_large_train_split_keeps_the_held_out_difficulty_mix(source: str) -> None:
    # A 2,000-item train split is far larger than the easy corner (200 two-term sums, 111
    # one-animal counts), so drawing distinct items would leave it almost all hard.
    cfg = TasksConfig(sources=[source], train_size=2000, held_out_size=200)
    train, held = _easy_share(build_tasks(cfg, "train"), source), _easy_share(build_tasks(cfg, "held_out"), source)
    assert train > 0.25 and abs(train - held) < 0.15, (train, held)


def test_every_source_present_with_short_prompts() -> None:
    held = build_tasks(SMALL, "held_out")
    assert {it.source for it in held} == {"chain_sum", "leg_counting", "legs_fn"}
    assert {it.task for it in build_tasks(SMALL, "held_out", TaskKind.code)} == {TaskKind.code}
    assert max(len(it.prompt) + len(it.solution or "") for it in held) < 200


def test_reward_service_accepts_teacher_solutions_and_rejects_corrupted_ones(scorer: Scorer) -> None:
    items = build_tasks(SMALL.model_copy(update={"sources": list(SOURCES)}), "held_out")
    assert {it.source for it in items} == set(SOURCES)
    right = verdicts(scorer, items, [it.solution or "" for it in items])
    assert [(it.id, v.status) for it, v in zip(items, right) if v.status is not VerdictStatus.correct] == []
    wrong = []
    for it in items:
        if isinstance(it.reference, MathReference):
            wrong.append((it.solution or "").replace(f"\\boxed{{{it.reference.answer}}}",
                                                      f"\\boxed{{{int(it.reference.answer) + 1}}}"))
        else:
            wrong.append((it.solution or "").replace("return", "return 1 +"))
    assert all(w != it.solution for w, it in zip(wrong, items))
    # Not merely not correct: each corrupted response was checked and found wrong (a failed HumanEval
    # check is an AssertionError), rather than failing to parse or run.
    assert all(v.status is VerdictStatus.wrong or v.detail.startswith("AssertionError")
               for v in verdicts(scorer, items, wrong))


def test_code_check_runs_the_function_on_hidden_inputs(scorer: Scorer) -> None:
    item = linear_fn_item(2, -3)
    assert item.question == "Write f with f(0)=-3, f(1)=-1, f(2)=1."
    table = "```python\ndef f(x):\n    return {0: -3, 1: -1, 2: 1}[x]\n```"
    assert correct(scorer, [item, item], [item.solution or "", table]) == [True, False]


def test_a_repeated_item_and_response_is_scored_once(scorer: Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    item = linear_fn_item(2, -3)
    program = "```python\ndef f(x):\n    return 2 * x - 3\n```"
    other = program.replace("return 2 * x - 3", "return 2 * x + (-3)")
    batches: list[list[str]] = []
    score = scorer.score
    monkeypatch.setattr(scorer, "score", lambda batch: batches.append([it.response for it in batch]) or score(batch))
    assert correct(scorer, [item] * 4, [program, program, other, program]) == [True] * 4
    assert batches == [[program, other]]  # two distinct programs, each run once


def test_legs_fn_is_leg_counting_as_a_function_of_x(scorer: Scorer) -> None:
    item = legs_fn_item("cow", {"spider": 2, "duck": 3})
    assert item.question == "Write f(x): the legs of x cows and 2 spiders, 3 ducks."
    assert item.solution == ("```python\ndef f(x):\n    # 2 * 8 = 16\n    # 3 * 2 = 6\n    # 16 + 6 = 22\n"
                             "    return 4 * x + 22\n```")
    constant = "```python\ndef f(x):\n    return 22\n```"
    one_kind_missed = "```python\ndef f(x):\n    return 4 * x + 16\n```"
    assert correct(scorer, [item] * 3, [item.solution or "", constant, one_kind_missed]) == [True, False, False]


def test_linear_fn_teacher_works_out_the_slope_from_the_shown_values() -> None:
    for a, b in itertools.product(range(-9, 10), repeat=2):
        item = linear_fn_item(a, b)
        shown = dict(re.findall(r"f\((\d)\)=(-?\d+)", item.question))
        found = re.search(r"# slope: (-?\d+) ([+-]) (\d+) = (-?\d+)", item.solution or "")
        assert found, item.solution
        left, op, right, result = found.groups()
        assert left == shown["1"] and int(result) == a
        assert (int(right) if op == "-" else -int(right)) == int(shown["0"])
        assert int(left) + (int(right) if op == "+" else -int(right)) == a


def test_tokenizer_corpus_covers_prompts_and_solutions() -> None:
    corpus = tokenizer_corpus(SMALL)
    text = "".join(corpus)
    assert "\\boxed{" in text and "def f(x):" in text and "Question:" in text


def test_sft_examples_balance_small_sources() -> None:
    items = build_tasks(TasksConfig(train_size=60, sources=["chain_sum"]), "train")
    items += [linear_fn_item(a, 1) for a in range(6)]
    pairs = sft_examples(items)
    code = [p for p in pairs if "def f" in p[1]]
    assert len(code) == 60 and len(pairs) == 120
    assert len(sft_examples(items, balance=False)) == 66


def _write(tmp_path: Path, lines: list[object]) -> Path:
    p = tmp_path / "data.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_jsonl_loads_math_and_both_code_forms(tmp_path: Path, scorer: Scorer) -> None:
    p = _write(tmp_path, [
        {"prompt": "What is 2+2?", "task": "math", "answer": "4", "solution": "\\boxed{4}"},
        {"prompt": "Echo a number.", "task": "code", "tests": [{"stdin": "5\n", "stdout": "5\n"}],
         "solution": "```python\nprint(input())\n```"},
        "",
        {"prompt": "Write g.", "task": "code", "test_code": "def check(c):\n    assert c(1) == 2\n",
         "entry_point": "g", "solution": "```python\ndef g(x):\n    return 2 * x\n```"},
    ])
    items = load_jsonl(p)
    assert [it.task for it in items] == [TaskKind.math, TaskKind.code, TaskKind.code]
    assert isinstance(items[1].reference, CodeReference) and items[1].reference.io_tests[0].stdout == "5\n"
    assert all(correct(scorer, items, [it.solution or "" for it in items]))
    assert correct(scorer, items[1:2], ["```python\nprint(6)\n```"]) == [False]


@pytest.mark.parametrize("line, expected", [
    ("{not json", ":2: not valid JSON"),
    ("[1, 2]", ":2: expected a JSON object"),
    ({"prompt": "q", "task": "math"}, ":2: answer: required for a math task"),
    ({"prompt": "q", "task": "chem", "answer": "1"}, ":2: task:"),
    ({"prompt": "q", "task": "math", "answer": "1", "hint": "x"}, ":2: hint: unknown field"),
    ({"prompt": "q", "task": "code"}, ":2: tests: a code task needs"),
    ({"prompt": "q", "task": "code", "test_code": "def check(c): pass"}, ":2: entry_point: required"),
    ({"prompt": "q", "task": "code", "tests": [{"stdin": "1"}]}, ":2: tests.0.stdout:"),
    ({"task": "math", "answer": "1"}, ":2: prompt:"),
])
def test_jsonl_errors_name_line_and_field(tmp_path: Path, line: object, expected: str) -> None:
    p = _write(tmp_path, [{"prompt": "ok", "task": "math", "answer": "1"}, line])
    with pytest.raises(TaskDataError) as err:
        load_jsonl(p)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_jsonl_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(TaskDataError, match="no task items"):
        load_jsonl(_write(tmp_path, [""]))


def test_user_held_out_items_are_removed_from_train(tmp_path: Path) -> None:
    shared = {"prompt": "What is 1 + 1?", "task": "math", "answer": "2"}
    train = _write(tmp_path, [shared, {"prompt": "What is 2 + 5?", "task": "math", "answer": "7"}])
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps(shared) + "\n")
    cfg = TasksConfig(sources=[], train_files=[str(train)], held_out_files=[str(held)])
    assert [it.question for it in build_tasks(cfg, "train")] == ["What is 2 + 5?"]
    assert [it.question for it in build_tasks(cfg, "held_out")] == ["What is 1 + 1?"]
