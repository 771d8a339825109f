"""Body of a Math-Verify worker process: answers (prediction, gold) pairs over a pipe.

Math-Verify's own timeouts use signal.alarm, which only works in a process's main thread; this
loop runs there, and the parent enforces the real deadline by killing the process.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection

from math_verify import parse, verify

from protocol.schema import VerdictStatus


def as_latex(expr: str) -> str:
    """Math-Verify only reads LaTeX inside math delimiters."""
    s = expr.strip()
    return s if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s else f"${s}$"


def check(prediction: str, gold: str) -> tuple[VerdictStatus, str]:
    # The parent's kill is the deadline; Math-Verify's alarm-based ones would only duplicate it.
    gold_parsed = parse(as_latex(gold), parsing_timeout=None)
    if not gold_parsed:
        return VerdictStatus.wrong, f"reference {gold[:60]!r} does not parse"
    pred_parsed = parse(as_latex(prediction), parsing_timeout=None)
    if not pred_parsed:
        return VerdictStatus.wrong, f"answer {prediction[:60]!r} does not parse"
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return VerdictStatus.correct, f"{prediction[:60]} == {gold[:60]}"
    return VerdictStatus.wrong, f"{prediction[:60]} != {gold[:60]}"


def serve(conn: Connection) -> None:
    # It warns on every call that its own timeouts are off; the parent's kill replaces them.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        try:
            prediction, gold = conn.recv()
        except (EOFError, OSError):
            return
        try:
            status, detail = check(prediction, gold)
        except Exception as exc:  # a verifier bug on odd input scores 0, it must not end the worker
            status, detail = VerdictStatus.wrong, f"verifier error: {type(exc).__name__}"
        conn.send((status.value, detail))
