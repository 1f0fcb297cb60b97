"""Issue 20 item 4: rubric content that would hang or exhaust memory is a one-line error naming the
rubric (template: time, value and output limits; YAML: alias expansion; messages: length).

Every case runs the real CLI in a subprocess with a timeout, so a regression fails the test instead
of hanging the suite (``{{ 9**(9**9) }}`` used to be folded at compile time, deaf to signals).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.judging.rubrics import SHIPPED_RUBRICS
from rlaif.judging.templates import render

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20  # seconds; each case below ends in about 2 s (the render deadline) or less

PAYLOADS = {
    "power": "{{ 9**(9**9) }}",
    "int_squaring": "{% set ns = namespace(n=2**30000) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
                    "{% endfor %}{{ ns.n > 0 }}",
    "string_repeat": "{{ 'x' * 10**10 }}",
    "nested_loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "output_size": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                "{{ ns.s|length }}",
    "macro_fanout": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "center_filter": "{{ 'x'|center(10**10) }}",
    "replace_method": "{{ ('x'*100000).replace('x', 'x'*100000) }}",
    "join_method": "{{ ('x'*1000).join(['y'*1000]*1000) }}",
    "format_width": "{{ '{:>9999999999}'.format(1) }}",
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``rlaif ARGS`` in a subprocess, killed (and the test failed) after TIMEOUT seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def rubric_with(tmp_path: Path, payload: str, name: str = "evil") -> Path:
    """The shipped honesty rubric with ``payload`` after the response."""
    text = (SHIPPED_RUBRICS / "honesty.yaml").read_text().replace("name: honesty", f"name: {name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("  {{ response }}\n", "  {{ response }}\n  " + payload + "\n", 1))
    return path


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_template_over_a_limit_is_one_line_naming_the_rubric(tmp_path: Path, case: str) -> None:
    path = rubric_with(tmp_path, PAYLOADS[case])
    lines = path.read_text().splitlines()
    expected = {f"{path}:{n}: template exceeds a limit" for n, text in enumerate(lines, 1) if PAYLOADS[case] in text}
    if case == "output_size":  # counted outside the template (names its first line), unless the deadline comes first
        expected.add(f"{path}:{lines.index('template: |') + 2}: template exceeds a limit")
    lint = cli("rubric", "lint", str(path), cwd=tmp_path)
    assert lint.returncode == 1, lint.stderr[-2000:]
    assert any(start in lint.stdout for start in expected), lint.stdout
    assert len(lint.stdout) < 2000
    preview = cli("rubric", "preview", str(path), "--prompt", "hi", "--response", "hello", cwd=tmp_path)
    assert preview.returncode == 2, preview.stderr[-2000:]
    assert "Traceback" not in preview.stderr
    error = preview.stderr.strip().splitlines()
    assert len(error) == 1 and any(start in error[0] for start in expected), error


def test_ordinary_templates_render_as_before() -> None:
    text = ("{{ 2**100 }} {{ [1, 2] * 2 }} {{ 'ab' ~ 'c' }} {{ 'a %s' % 'b' }} {{ 'x'|center(5) }}|"
            "{% for i in range(3) %}{{ i }}{% endfor %} {{ ['a', 'b']|join(',') }} {{ 'abc'|replace('b', 'B') }} "
            "{{ '{}!'.format('hi') }} {{ response|length }}")
    assert render(text, {"response": "r" * 200_000}, None, 0) == (
        "1267650600228229401496703205376 [1, 2, 1, 2] abc a b   x  |012 a,b aBc hi! 200000")


def alias_bomb(levels: int, field: str) -> str:
    """A rubric of a few hundred bytes whose ``field`` expands to 9**levels values."""
    lines = ["name: bomb", "method: logprob", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines + [f"{field}: *a{levels - 1}", "template: '{{ prompt }} {{ response }}'", ""])


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(6, "description"))  # 531441 strings: the lint message was 2.8 MB
    assert len(path.read_text()) < 1000
    lint = cli("rubric", "lint", str(path), cwd=tmp_path)
    assert lint.returncode == 1
    assert len(lint.stdout) < 1000
    assert f"{path}:1: YAML aliases expand to more than" in lint.stdout
    path.write_text(alias_bomb(12, "description"))  # 9**12 values: would never finish
    preview = cli("rubric", "preview", str(path), "--prompt", "hi", "--response", "hello", cwd=tmp_path)
    assert preview.returncode == 2 and "YAML aliases expand to more than" in preview.stderr
    assert len(preview.stderr.strip().splitlines()) == 1


def test_long_schema_message_is_cut_to_one_line(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(alias_bomb(2, "description").replace("*a1", "[" + ", ".join(["'" + "y" * 1000 + "'"] * 50) + "]"))
    lint = cli("rubric", "lint", str(path), cwd=tmp_path)
    assert lint.returncode == 1
    finding = next(line for line in lint.stdout.splitlines() if "description" in line)
    assert len(finding) < 600 and finding.endswith("(cut)")


STUDIO = """
import json, sys, time
from pathlib import Path
from starlette.testclient import TestClient
from rlaif.backends.base import BackendConfig
from rlaif.studio.app import Studio, build_app

folder, text = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
studio = Studio(folder, BackendConfig(engine="fake"))
client = TestClient(build_app(studio, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765",
                    headers={"X-Studio-Token": studio.token})
start = time.monotonic()
lint = client.post("/api/lint", json={"name": "evil.yaml", "text": text}).json()
preview = client.post("/api/preview", json={"name": "evil.yaml", "text": text, "prompt": "hi", "response": "yo"})
print(json.dumps({"lint": lint["findings"], "preview": [preview.status_code, preview.json().get("error")],
                  "seconds": time.monotonic() - start}))
"""


@pytest.mark.parametrize("case", ["power", "nested_loops"])
def test_the_studio_answers_a_rubric_over_a_limit(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "rubrics"
    folder.mkdir()
    text = rubric_with(tmp_path, PAYLOADS[case]).read_text()
    (tmp_path / "draft.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", STUDIO, str(folder), str(tmp_path / "draft.yaml")], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("template exceeds a limit" in finding["message"] for finding in out["lint"]), out
    assert out["preview"][0] == 422 and "template exceeds a limit" in out["preview"][1]
    assert out["seconds"] < 10
