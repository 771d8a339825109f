"""Task data: built-in generated tasks with teacher solutions, user JSONL files."""

from protocol.config.tasks import TasksConfig
from recipe.tasks.build import (
           Split,
           build_tasks,
           generate,
           sft_examples,
           tokenizer_corpus,
)
from recipe.tasks.generators import SOURCES, TASK_OF, Source
from recipe.tasks.items import PROMPT_TEMPLATE, TaskItem, format_prompt
from recipe.tasks.jsonl import TaskDataError, load_jsonl

__all__ = ["PROMPT_TEMPLATE", "SOURCES", "TASK_OF", "Source", "Split", "TaskDataError", "TaskItem",
           "TasksConfig", "build_tasks", "format_prompt", "generate", "load_jsonl",
           "sft_examples", "tokenizer_corpus"]
