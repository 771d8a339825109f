from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.sft import (
    STATE_FILE,
    SFTConfig,
    _collate,
    _encode,
    bucketed_batches,
    completion_loss,
    train_sft,
)


def _loss_on(path: Path, examples: list[tuple[str, str]]) -> float:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    with torch.no_grad():
        return float(completion_loss(model, *_collate(_encode(tok, examples, 256), tok.pad_token_id)))


def test_sft_lowers_loss_and_saves_loadable_checkpoints(tiny_model: Path, examples: list[tuple[str, str]],
                                                        tmp_path: Path) -> None:
    cfg = SFTConfig(init_model=str(tiny_model), output_dir=str(tmp_path / "sft"), batch_size=16, lr=3e-3,
                    warmup_steps=5, max_steps=20, max_minutes=0, save_steps=[10], save_every_minutes=0,
                    log_every_steps=10)
    saved = train_sft(cfg, examples)
    assert [c.step for c in saved] == [10, 20]
    for ckpt in saved:
        assert (ckpt.path / "model.safetensors").is_file() and (ckpt.path / "tokenizer.json").is_file()
        assert json.loads((ckpt.path / STATE_FILE).read_text())["step"] == ckpt.step
    sample = examples[::7][:32]
    assert _loss_on(saved[-1].path, sample) < _loss_on(tiny_model, sample) - 0.5


def test_save_every_steps_saves_at_multiples_and_at_the_end(tiny_model: Path, examples: list[tuple[str, str]],
                                                             tmp_path: Path) -> None:
    cfg = SFTConfig(init_model=str(tiny_model), output_dir=str(tmp_path / "sft"), batch_size=8,
                    warmup_steps=0, max_steps=12, max_minutes=0, save_every_steps=5, save_every_minutes=0)
    assert [c.step for c in train_sft(cfg, examples)] == [5, 10, 12]


def test_loss_mask_covers_completion_and_eos_only(tiny_model: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    (ex,) = _encode(tok, [("Question: What is 1 + 2?\nAnswer:\n", "\\boxed{3}")], 256)
    ids, mask, loss_mask = _collate([ex, ex], tok.pad_token_id)
    completion = tok("\\boxed{3}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids[0, loss_mask[0]].tolist() == completion
    assert int(loss_mask[0, :ex.n_prompt].sum()) == 0 and int(mask.sum()) == 2 * len(ex.ids)


def test_bucketed_batches_cover_each_index_once_and_group_by_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 80) for _ in range(1000)]
    batches = list(bucketed_batches(lengths, 16, 8, random.Random(1)))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 20  # random batches of 16 from U(5, 80) would spread ~65


def test_same_config_gives_the_same_bits_and_records_its_kernels(tiny_model: Path, examples: list[tuple[str, str]],
                                                                 tmp_path: Path) -> None:
    # A fresh process: one that hosted an in-process vLLM engine (earlier tests) ignores
    # torch.set_num_threads, as vLLM's CPU worker replaces it with a no-op.
    script = f"""
import json, torch
from safetensors.torch import load_file
from learner.sft import STATE_FILE, train_sft
from protocol.config.sft import SFTConfig
examples = json.loads(open({str(tmp_path / 'examples.json')!r}).read())
def run(name):
    cfg = SFTConfig(init_model={str(tiny_model)!r}, output_dir={str(tmp_path)!r} + "/" + name, batch_size=8,
                    warmup_steps=2, max_steps=6, max_minutes=0, save_every_minutes=0, threads=1)
    return train_sft(cfg, [tuple(e) for e in examples])[-1].path
a, b = load_file(str(run("a") / "model.safetensors")), load_file(str(run("b") / "model.safetensors"))
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
kernels = json.loads(open({str(tmp_path)!r} + "/a/step-000006/" + STATE_FILE).read())["kernels"]
print(json.dumps({{"same": same, "kernels": kernels, "capability": torch.backends.cpu.get_cpu_capability().lower(),
                  "torch": torch.__version__}}))
"""
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same"], "two runs of one config gave different checkpoint bits"
    kernels = out["kernels"]
    assert kernels["threads"] == 1 and kernels["ATEN_CPU_CAPABILITY"] == out["capability"]
    assert kernels["torch"] == out["torch"]