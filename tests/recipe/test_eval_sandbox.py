"""`ringrl eval` runs the model's programs only inside the reward service's sandbox.

The hostile responses go through the scoring path `ringrl eval` takes (`task_set` over a JSONL
file, `standalone_scorer`, `recipe.verdicts`), in place of what a model would have written.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.schema import TaskKind
from recipe.evaluate import task_set
from recipe.verdicts import correct, standalone_scorer, verdicts
from reward_service.sandbox import SandboxUnavailable
from reward_service.scorer import Scorer


@pytest.fixture(params=["warm", "bwrap", "rlimit"])
def scorer(request: pytest.FixtureRequest) -> Iterator[Scorer]:
    """`ringrl eval --sandbox BACKEND`'s Scorer; warm is the default."""
    try:
        s = standalone_scorer(request.param)
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    yield s
    s.close()


def fenced(source: str) -> str:
    return f"Here is my program.\n```python\n{source}```\n"


def test_eval_programs_cannot_write_the_host_or_read_its_secrets(
        scorer: Scorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    monkeypatch.setenv("RINGRL_TEST_SECRET", token)
    planted = tmp_path / "planted" / "pwned.txt"
    # Each item passes only if its program gets hold of the secret (and prints it), or plants a file.
    data = tmp_path / "hostile.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in [
        {"prompt": "Print the secret.", "task": "code", "tests": [{"stdin": "", "stdout": token}]},
        {"prompt": "Plant a file.", "task": "code", "tests": [{"stdin": "", "stdout": "planted"}]},
        {"prompt": "Write g.", "task": "code", "test_code": "def check(g):\n    assert g() == 1\n",
         "entry_point": "g"},
    ]))
    items = task_set(data, "held_out", 0, TaskKind.code, 0)
    read_file = fenced(f"print(open({str(secret)!r}).read())\n")
    read_env = fenced("import os\nprint(os.environ.get('RINGRL_TEST_SECRET'))\n")
    # A traceback's last line becomes the verdict's detail: smuggle the secret out through it.
    leak_in_error = fenced(f"raise SystemExit(open({str(secret)!r}).read())\n")
    plant = fenced(f"import os\nos.makedirs({str(planted.parent)!r}, exist_ok=True)\n"
                   f"open({str(planted)!r}, 'w').write('x')\nprint('planted')\n")
    plant_while_checked = fenced(f"import os\nos.makedirs({str(planted.parent)!r}, exist_ok=True)\n"
                                 f"open({str(planted)!r}, 'w').write('x')\n"
                                 f"def g():\n    return len(open({str(secret)!r}).read()) - {len(token) - 1}\n")
    hostile = [(items[0], read_file), (items[0], read_env), (items[0], leak_in_error),
               (items[1], plant), (items[2], plant_while_checked)]
    its, responses = [it for it, _ in hostile], [r for _, r in hostile]
    passed = correct(scorer, its, responses)  # what `outcomes` counts
    assert not planted.exists() and not planted.parent.exists()
    # No program gets hold of the secret, so none prints it. Planting may "succeed" inside the
    # sandbox's own private /tmp, which the host never sees: the check above is the one that counts.
    assert [passed[i] for i in (0, 1, 2, 4)] == [False] * 4, passed
    details = [v.detail for v in verdicts(scorer, its, responses)]
    assert not any(token in d for d in details), details
