"""Pull the final answer (math) or the program (code) out of a model response."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FENCE_HEADER = re.compile(r"[ \t]*(?:python3?|py)?[ \t]*\r?\n", re.IGNORECASE)
FENCE = "```"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces (non-empty); None if there is none.

    One pass with a stack of open braces, so the time is linear in the response: scanning forward
    from each `\\boxed{` to its closing brace is quadratic when a response opens many and closes
    none (a policy that learns it stalls every item scored after it).
    """
    opens = {m.end() for m in _BOXED.finditer(text)}  # content start of each \boxed{
    stack: list[int] = []  # content start of each open brace; -1 for a plain one
    best_start, best = -1, None
    for i, c in enumerate(text):
        if c not in "{}" or (i and text[i - 1] == "\\"):
            continue
        if c == "{":
            stack.append(i + 1 if i + 1 in opens else -1)
        elif stack:
            start = stack.pop()
            if start > best_start:
                content = text[start:i].strip()
                if content:
                    best_start, best = start, content
    return best


def math_answer(text: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """The final answer: the last match of `pattern` (group 1 if any), else the last \\boxed{}."""
    if pattern is None:
        return last_boxed(text)
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    answer = (m.group(1) if pattern.groups else m.group(0)).strip()
    return answer or None


def program(text: str, whole_text: bool = False) -> str | None:
    """The last fenced python (or unlabelled) block; the whole text if allowed and none exists.

    Fences pair left to right as a lazy regex would, found with str.find (linear): a regex
    `(.*?)```` rescans to the end of the text from every unclosed opening.
    """
    blocks, pos = [], 0
    while (p := text.find(FENCE, pos)) >= 0:
        header = _FENCE_HEADER.match(text, p + len(FENCE))
        if header is None:
            pos = p + 1
            continue
        end = text.find(FENCE, header.end())
        if end < 0:
            break  # no fence after this opening: none after any later one either
        blocks.append(text[header.end():end])
        pos = end + len(FENCE)
    if blocks:
        return blocks[-1]
    return text if whole_text and text.strip() else None
