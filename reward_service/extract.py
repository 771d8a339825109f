"""Pull the final answer (math) or the program (code) out of a model response."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces; None if there is none."""
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
    """The last fenced python (or unlabelled) block; the whole text if allowed and none exists."""
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    return text if whole_text and text.strip() else None
