"""One task item: what the model is asked, how its answer is checked, and a teacher solution."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from protocol.schema import Reference, TaskKind

PROMPT_TEMPLATE = "Question: {question}\nAnswer:\n"
"""The one plain prompt format used by SFT, rollouts and evaluation alike. The completion (teacher
solution or sampled response) follows it directly and ends with the tokenizer's EOS token."""


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question.strip())


def content_key(source: str, question: str) -> str:
    """Identity of an item by content: equal questions are the same item whatever their seed."""
    normalised = " ".join(question.split())
    return hashlib.sha256(f"{source}\x00{normalised}".encode()).hexdigest()


class TaskItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Stable id: source and a content hash prefix.")
    task: TaskKind = Field(description="math or code: selects the verifier.")
    source: str = Field(description="Generator name (chain_sum, leg_counting, legs_fn, linear_fn) or file name.")
    question: str = Field(description="The question alone, without the prompt template.")
    prompt: str = Field(description="Exact text given to the model (template applied).")
    reference: Reference = Field(description="What a response is checked against.")
    solution: str | None = Field(default=None, description="Teacher completion (without EOS), if known.")


def make_item(task: TaskKind, source: str, question: str, reference: Reference,
              solution: str | None) -> TaskItem:
    key = content_key(source, question)
    return TaskItem(id=f"{source}-{key[:12]}", task=task, source=source, question=question,
                    prompt=format_prompt(question), reference=reference, solution=solution)
