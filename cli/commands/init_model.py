"""`ringrl init-model OUT [CONFIG]`: the config's starting model, written to OUT (services mode).

`ringrl train` builds its start model in its own run folder; the services (`ringrl serve rollout`,
`ringrl serve learner`) need one at a path they are given. This writes the same model there: the
tiny MoE with its locally trained tokenizer (or `model.path`), by default distilled and chosen by
entropy exactly as `ringrl train` does. A folder that already holds a model is left alone, so a
one-shot deploy step can run it on every start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from protocol.config.train import TrainConfig


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command("init-model")
    def init_model(
        out: Path = typer.Argument(..., help="Folder to write the model to (Hugging Face format)."),
        config: Optional[Path] = typer.Argument(None, help="Run config (YAML); default: the shipped demo."),
        sft: bool = typer.Option(True, "--sft/--no-sft",
                                 help="Distil the built model and pick the checkpoint by entropy, as "
                                      "`ringrl train` does (minutes); --no-sft: the untrained model."),
    ) -> None:
        """Build the run's starting model into OUT; nothing to do if OUT already holds a model."""
        from rich.console import Console

        from cli.errors import fail, load_or_fail
        from protocol.config.train import DEFAULT_CONFIG, TrainConfig

        cfg = load_or_fail(config or DEFAULT_CONFIG, TrainConfig)
        console = Console()
        if (out / "config.json").is_file():
            typer.echo(f"init-model: {out} already holds a model (config.json); nothing to do")
            return
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            fail(f"{out} exists and holds no model (no config.json); give an empty or new folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"cannot create {out.parent}: {exc.strerror}")

        from recipe.tasks import TaskDataError
        from reward_service.sandbox import SandboxUnavailable

        # Work beside OUT (same filesystem), then move the result in with one rename: an
        # interrupted run leaves OUT without config.json, so the next run starts over.
        work = out.parent / f".{out.name}.init-model"
        try:
            chosen = _build(cfg, work, sft, console)
            _install(Path(chosen), out, work)
        except (TaskDataError, ValueError) as exc:
            fail(str(exc))
        except SandboxUnavailable as exc:
            fail(f"{exc} (checkpoint choice scores code in the sandbox; set reward.sandbox.backend, "
                 f"or pass --no-sft)")
        except OSError as exc:
            fail(f"writing the model: {exc}")
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        typer.echo(f"init-model: wrote the starting model to {out}")


def _build(cfg: TrainConfig, work: Path, sft: bool, console: Console) -> str:
    """The folder of the chosen starting model (inside `work`, or model.path)."""
    import shutil
    from contextlib import closing

    from recipe.distil import distil, prepare_model

    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left
    work.mkdir(parents=True)
    init = prepare_model(cfg.model, cfg.tasks, cfg.run.seed, work, console)
    distil_cfg = cfg.sft.model_copy(update={"init_model": init, "output_dir": str(work / "sft")})
    if not sft or not (distil_cfg.max_steps or distil_cfg.max_minutes):
        return init
    from recipe.driver import choose_start
    from reward_service.scorer import Scorer

    # Made before SFT, so a machine without a working sandbox fails before minutes of training.
    with closing(Scorer(cfg.reward)) as scorer:
        checkpoints = distil(distil_cfg, cfg.tasks, console)
        return choose_start(cfg, checkpoints, console, scorer)


def _install(chosen: Path, out: Path, work: Path) -> None:
    import os
    import shutil

    staged = work / "out"
    shutil.copytree(chosen, staged)
    # Readable by every uid: the services that load it need not be the user that wrote it (in
    # the compose stack init-model runs as root, learner and rollout as uid 10001), and
    # safetensors writes its files owner-only.
    for path in [staged, *staged.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    if out.is_dir():
        out.rmdir()  # empty (checked above); rename needs the name free
    os.replace(staged, out)
