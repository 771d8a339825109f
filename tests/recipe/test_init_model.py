"""`ringrl init-model OUT [CONFIG]` as a user (or a compose one-shot) runs it: a real subprocess.
Only --no-sft here; the SFT path is `ringrl train`'s own (recipe.distil, recipe.driver.choose_start)
and takes minutes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def ringrl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("ringrl")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(path.rglob("*"))}


def test_builds_a_loadable_model_once(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "models" / "start"
    r = ringrl("init-model", out, "--no-sft")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"wrote the starting model to {out}" in r.stdout
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "qwen3_moe"  # the default config's tiny MoE
    assert len(AutoTokenizer.from_pretrained(out)) == cfg.vocab_size
    # Another uid loads it in a deployment (init-model runs as root there, the services do not).
    for p in [out, *out.rglob("*")]:
        assert p.stat().st_mode & (stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0)), p
    assert sorted(os.listdir(out.parent)) == ["start"], "the work folder is removed"

    before = _tree(out)
    again = ringrl("init-model", out, "--no-sft")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already holds a model" in again.stdout and "nothing to do" in again.stdout
    assert _tree(out) == before


def test_uses_the_given_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {hidden: 48, layers: 1}\nsft: {max_steps: 5}\n")
    out = tmp_path / "start"
    r = ringrl("init-model", out, config, "--no-sft")
    assert r.returncode == 0, r.stdout + r.stderr
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(out)
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (48, 1)


@pytest.mark.parametrize("config, message", [
    ("missing.yaml", "config file not found"),
    ("bad.yaml", "run.nme"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text("run: {nme: x}\n")
    out = tmp_path / "start"
    r = ringrl("init-model", out, tmp_path / config)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not out.exists()


def test_a_folder_with_something_else_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "start"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = ringrl("init-model", out, "--no-sft")
    assert r.returncode == 2 and "holds no model" in r.stderr, r.stdout + r.stderr
    assert sorted(os.listdir(out)) == ["notes.txt"]
