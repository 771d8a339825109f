"""The reward API fuzzed from its own OpenAPI document over real HTTP: schemathesis with every check
(no 5xx; every status and body one the document declares; schema-valid requests accepted, invalid
ones refused with a 4xx; the declared bearer token enforced), then honest items must still score 1.

It runs schemathesis's own runner (`st run`, all phases but stateful, which has no links to follow
here): its pytest loader for a fixture-made schema does not work with this pytest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from protocol.auth import Tokens
from tests.reward.live import running_server

# Small bounds, so generated items reach them (and past them, negated) often.
CONFIG = {"max_request_bytes": 256 * 1024, "max_batch": 4, "max_io_tests": 3, "max_response_chars": 4096,
          "max_answer_chars": 256, "max_test_chars": 1024}
EXAMPLES = 1000  # per operation: about a minute on 2 shared cores
SEED = 15
TOKENS = Tokens(api="fuzz-token")  # as deployed: the document declares the bearer scheme


@pytest.fixture(scope="module")
def fuzzed_url() -> Iterator[str]:
    with running_server(TOKENS, **CONFIG) as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_answer_is_one_the_spec_declares(fuzzed_url: str, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [str(st), "run", f"{fuzzed_url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", str(SEED),
         "--request-timeout", "60", "--header", f"Authorization: Bearer {TOKENS.api}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=840)
    report = run.stdout[-12000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) >= EXAMPLES, report


@pytest.mark.slow
def test_still_serving_after_the_fuzzing(fuzzed_url: str) -> None:
    items = [{"task": "math", "response": "so \\boxed{\\frac{1}{2}}", "answer": "0.5"},
             {"task": "code", "response": "```python\nprint(int(input()) * 2)\n```",
              "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}}]
    r = httpx.post(f"{fuzzed_url}/v1/score", json={"items": items}, headers=TOKENS.headers(), timeout=60)
    assert r.status_code == 200, r.text
    assert [x["reward"] for x in r.json()["results"]] == [1.0, 1.0]
    assert httpx.get(f"{fuzzed_url}/healthz", headers=TOKENS.headers()).json()["ok"] is True
    assert httpx.post(f"{fuzzed_url}/v1/score", json={"items": items}).status_code == 401
