"""References that arrive by the stream (not through the API's checks): an odd one is a per-item
verdict, never an error that fails its batch."""

from __future__ import annotations

from protocol.schema import CodeReference, IOTest, TaskKind, VerdictStatus
from reward_service.scorer import Item, Scorer

ECHO = "```python\nprint(input())\n```"


def test_lone_surrogate_stdin_and_bad_entry_point_are_per_item(default_scorer: Scorer) -> None:
    items = [
        Item(TaskKind.code, ECHO, CodeReference(io_tests=[IOTest(stdin="a\ud800b\n", stdout="x")])),
        Item(TaskKind.code, "```python\ndef f():\n    pass\n```",
             CodeReference(test_code="def check(c):\n    pass\n", entry_point="f 0 1")),
        Item(TaskKind.code, ECHO, CodeReference(io_tests=[IOTest(stdin="7\n", stdout="7")])),
    ]
    got = default_scorer.score(items)
    assert got[0].status is VerdictStatus.wrong and "output differs" in got[0].detail  # it ran
    assert got[1].status is VerdictStatus.wrong and "identifier" in got[1].detail
    assert got[2].status is VerdictStatus.correct
