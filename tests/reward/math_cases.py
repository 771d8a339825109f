"""Equivalence table for the math verifier: (response, gold, expected status)."""

from __future__ import annotations

from fractions import Fraction

C, W, N = "correct", "wrong", "no_answer"


def boxed(x: str) -> str:
    return f"Working through it step by step... so the answer is \\boxed{{{x}}}."


# Fractions vs decimals, in both directions and in several LaTeX spellings.
_FRACTIONS = [(1, 2), (1, 4), (3, 4), (1, 5), (2, 5), (3, 8), (7, 8), (5, 4), (9, 20), (13, 10),
              (1, 8), (3, 2), (7, 4), (11, 20), (-1, 2), (-3, 4), (17, 5), (1, 16), (21, 8), (3, 25)]
FRACTION_CASES = []
for n, d in _FRACTIONS:
    dec = str(float(Fraction(n, d)))
    sign = "-" if n < 0 else ""
    FRACTION_CASES += [
        (boxed(dec), f"\\frac{{{n}}}{{{d}}}", C),
        (boxed(f"{sign}\\frac{{{abs(n)}}}{{{d}}}"), dec, C),
        (boxed(f"{n}/{d}"), dec, C),
        (boxed(f"{sign}\\dfrac{{{abs(n)}}}{{{d}}}"), f"{n}/{d}", C),
        (boxed(str(float(Fraction(n, d)) + 0.5)), f"\\frac{{{n}}}{{{d}}}", W),
    ]

INTEGER_CASES = [(boxed(str(k)), str(k), C) for k in (0, 1, 7, 42, 100, -5, 2024, 999)] + [
    (boxed(str(k + 1)), str(k), W) for k in (0, 1, 7, 42, 100, -5, 2024, 999)] + [
    (boxed("1{,}000"), "1000", C), (boxed("3.0"), "3", C), (boxed("12"), "21", W),
    (boxed("x = 5"), "5", C), (boxed("5^2"), "25", C), (boxed("2^{10}"), "1024", C),
]

LATEX_CASES = [
    (boxed("\\sqrt{2}"), "\\sqrt{2}", C),
    (boxed("\\sqrt{8}"), "2\\sqrt{2}", C),
    (boxed("\\frac{\\sqrt{3}}{2}"), "\\frac{\\sqrt{3}}{2}", C),
    (boxed("\\frac{1}{\\sqrt{2}}"), "\\frac{\\sqrt{2}}{2}", C),
    (boxed("2\\pi"), "2\\pi", C),
    (boxed("\\pi r^2"), "\\pi r^2", C),
    (boxed("\\pi"), "2\\pi", W),
    (boxed("\\sqrt{3}"), "\\sqrt{2}", W),
    (boxed("x^2 + 2x + 1"), "(x+1)^2", C),
    (boxed("(x+1)(x-1)"), "x^2 - 1", C),
    (boxed("x^2 + 1"), "x^2 - 1", W),
    (boxed("\\left(\\frac{1}{2}\\right)"), "0.5", C),
    (boxed("50\\%"), "50\\%", C),
    (boxed("\\text{(B)}"), "B", C),
    (boxed("3\\sqrt{3}"), "\\sqrt{27}", C),
    (boxed("e^{0}"), "1", C),
    (boxed("\\log_2 8"), "3", C),
    (boxed("\\binom{5}{2}"), "10", C),
    (boxed("\\frac{a}{b}"), "\\frac{a}{b}", C),
    (boxed("2a + 3b"), "3b + 2a", C),
    (boxed("2a + 3b"), "2a + 3c", W),
    (boxed("\\infty"), "\\infty", C),
    (boxed("-\\infty"), "\\infty", W),
    (boxed("\\cos(0)"), "1", C),
    (boxed("\\frac{3}{6}"), "\\frac{1}{2}", C),
    (boxed("0.333"), "\\frac{1}{3}", W),
    (boxed("6!"), "720", C),
    (boxed("10^{-2}"), "0.01", C),
    (boxed("1.5 \\times 10^{3}"), "1500", C),
    (boxed("\\frac{22}{7}"), "\\pi", W),
]

SET_CASES = [
    (boxed("\\{1, 2, 3\\}"), "\\{3, 2, 1\\}", C),
    (boxed("\\{1, 2\\}"), "\\{1, 2, 3\\}", W),
    (boxed("\\{-1, 1\\}"), "\\{1, -1\\}", C),
    (boxed("\\{0.5, 2\\}"), "\\{\\frac{1}{2}, 2\\}", C),
    (boxed("1, 2, 3"), "\\{1,2,3\\}", C),
    (boxed("\\{2, 4\\}"), "\\{2, 5\\}", W),
    (boxed("\\{\\sqrt{4}, 3\\}"), "\\{2, 3\\}", C),
    (boxed("\\emptyset"), "\\emptyset", C),
    (boxed("\\{1\\}"), "\\emptyset", W),
    (boxed("x = 2, x = -2"), "\\{-2, 2\\}", C),
]

INTERVAL_CASES = [
    (boxed("(0, 1]"), "(0, 1]", C),
    (boxed("(0, 1)"), "(0, 1]", W),
    (boxed("[0, 1]"), "(0, 1]", W),
    (boxed("[2, \\infty)"), "[2, \\infty)", C),
    (boxed("(-\\infty, 3)"), "(-\\infty, 3)", C),
    (boxed("(-\\infty, 3]"), "(-\\infty, 3)", W),
    (boxed("[\\frac{1}{2}, 2]"), "[0.5, 2]", C),
    (boxed("(1, 2) \\cup (3, 4)"), "(1, 2) \\cup (3, 4)", C),
    (boxed("(1, 2) \\cup (3, 5)"), "(1, 2) \\cup (3, 4)", W),
    (boxed("[-1, 1]"), "[-1, 1]", C),
    (boxed("[-1, 1]"), "[-2, 2]", W),
    (boxed("(0, \\infty)"), "(0, \\infty)", C),
]

TUPLE_CASES = [
    (boxed("(1, 2)"), "(1, 2)", C),
    (boxed("(2, 1)"), "(1, 2)", W),
    (boxed("(\\frac{1}{2}, 3)"), "(0.5, 3)", C),
    (boxed("(1, 2, 3)"), "(1, 2, 3)", C),
    (boxed("(1, 2, 4)"), "(1, 2, 3)", W),
]

NO_ANSWER_CASES = [
    ("I think the answer is 5.", "5", N),
    ("", "1", N),
    ("Let me compute: 2 + 2 = 4", "4", N),
    ("\\boxed{}", "0", N),
    ("The final answer is \\boxed", "3", N),
    ("\\boxed{ }", "3", N),
    ("We get $x = 3$ in the end.", "3", N),
    ("\\boxed{\\frac{1}{2}", "0.5", N),  # never closed
    ("So I give up.", "\\frac{1}{2}", N),
    ("answer: 7", "7", N),
]

LAST_BOXED_CASES = [
    ("First try \\boxed{3}, but actually \\boxed{4}.", "4", C),
    ("First try \\boxed{4}, but actually \\boxed{3}.", "4", W),
    ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{2}{4}}", "0.5", C),
    ("\\fbox{12}", "12", C),
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", C),
]

MIXED_CASES = [
    (boxed("0.75"), "75\\%", C),
    (boxed("\\frac{4}{3}\\pi"), "\\frac{4\\pi}{3}", C),
    (boxed("1.25"), "\\frac{5}{4}", C),
    (boxed("1.2"), "\\frac{5}{4}", W),
    (boxed("-0"), "0", C),
    (boxed("\\sqrt{16}"), "4", C),
    (boxed("\\sqrt{15}"), "4", W),
    (boxed("2.50"), "\\frac{5}{2}", C),
    (boxed("\\{1, 3\\}"), "\\{3, 1\\}", C),
    (boxed("(3, \\infty)"), "(3, \\infty)", C),
    (boxed("(3, \\infty)"), "[3, \\infty)", W),
    (boxed("\\frac{-1}{3}"), "-\\frac{1}{3}", C),
    (boxed("\\frac{1}{3}"), "-\\frac{1}{3}", W),
    (boxed("10"), "10.0", C),
    (boxed("\\tfrac{2}{3}"), "\\frac{2}{3}", C),
]

CASES = (MIXED_CASES + FRACTION_CASES + INTEGER_CASES + LATEX_CASES + SET_CASES + INTERVAL_CASES + TUPLE_CASES
         + NO_ANSWER_CASES + LAST_BOXED_CASES)
