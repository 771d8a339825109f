"""The sandbox choice of the commands that score model output outside a run (eval, select-checkpoint)."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, get_args

from cli.errors import fail
from protocol.config.reward import SandboxBackend

if TYPE_CHECKING:
    from reward_service.scorer import Scorer

# typer takes an Enum, the config a Literal: the Enum is built from the Literal, so one list serves both.
SandboxChoice = Enum("SandboxChoice", {b: b for b in get_args(SandboxBackend)}, type=str)  # type: ignore[misc]

SANDBOX_HELP = "Sandbox backend that runs the model's programs (docs/reward.md); rlimit where user namespaces are off."


def scorer_or_fail(backend: SandboxChoice) -> Scorer:
    """The commands' Scorer; model-written code never runs outside a sandbox, so without one they stop."""
    from recipe.verdicts import standalone_scorer
    from reward_service.sandbox import SandboxUnavailable

    try:
        return standalone_scorer(backend.value)
    except SandboxUnavailable as exc:
        fail(f"{' '.join(str(exc).split())}; model-written code runs only in a sandbox: fix that, or pick "
             "another backend with --sandbox (docs/reward.md)")
