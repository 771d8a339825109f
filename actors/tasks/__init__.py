"""Task data: built-in generated tasks with teacher solutions, user JSONL files, local checks."""

from actors.tasks.build import Split, build_tasks, generate, sft_examples, tokenizer_corpus
from actors.tasks.config import TasksConfig
from actors.tasks.generators import SOURCES, TASK_OF, Source
from actors.tasks.items import PROMPT_TEMPLATE, TaskItem, format_prompt
from actors.tasks.jsonl import TaskDataError, load_jsonl
from actors.tasks.scoring import ScoreFn, is_correct, score_all, with_reward_service

__all__ = ["PROMPT_TEMPLATE", "SOURCES", "TASK_OF", "Source", "Split", "TaskDataError", "TaskItem",
           "ScoreFn", "TasksConfig", "build_tasks", "format_prompt", "generate", "is_correct", "load_jsonl",
           "score_all", "sft_examples", "tokenizer_corpus",
           "with_reward_service"]
