"""`ringrl serve learner`: a user's mistakes end with one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.app import app


def test_serve_learner_needs_redis(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learner:\n  model_path: /nope\n")
    r = CliRunner().invoke(app, ["serve", "learner", str(cfg)], env={})
    assert r.exit_code != 0 and "redis.url" in r.output and "Traceback" not in r.output


def test_serve_learner_names_a_bad_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learner:\n  token_budget: -3\n")
    r = CliRunner().invoke(app, ["serve", "learner", str(cfg)], env={})
    assert r.exit_code != 0 and "learner.token_budget" in r.output


def test_serve_learner_missing_model(tmp_path: Path, redis_url: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run:\n  output_dir: {tmp_path}\nredis:\n  url: {redis_url}\nlearner:\n  model_path: {tmp_path}/nope\n")
    r = CliRunner().invoke(app, ["serve", "learner", str(cfg)], env={})
    assert r.exit_code != 0 and "learner.model_path" in r.output and "Traceback" not in r.output
