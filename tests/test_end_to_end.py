"""End to end on a real (tiny) model: the CLI loads the format model from a local folder through the loader
and the transformers backend, runs the TIPO pipeline and prints a parseable, reproducible prompt.

The format model (tests/format_model.py) is a tiny LLaMA trained on synthetic TIPO-format text, so its
completions have the real shape: comma-separated tags, then EOS.
"""

from __future__ import annotations

import io
import json

import pytest

from kgen import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir():
    from format_model import format_model_dir, format_model_or_skip

    format_model_or_skip()
    return format_model_dir()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_upsamples_with_a_local_model_folder(model_dir):
    args = (
        "1girl, solo, long hair",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--seed",
        "3",
        "--json",
        "--tag-length",
        "short",
        "--format",
        "tag only",
        "--max-new-tokens",
        "160",
    )
    code, out, err = run_cli(*args)
    assert code == 0, err
    record = json.loads(out)
    assert record["special"] == ["1girl"]
    assert {"solo", "long hair"} <= set(record["general"])
    assert record["new_tags"], "the model added no tag"
    assert record["completion_tokens"] > 0 and record["generate_passes"] >= 1
    for tag in record["new_tags"]:
        assert tag in record["prompt"]
    again = json.loads(run_cli(*args)[1])
    assert again["prompt"] == record["prompt"]  # a seed fully determines the output on CPU


def test_cli_variants_use_the_tree_sampler_and_differ(model_dir):
    code, out, err = run_cli(
        "1girl, solo",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--seed",
        "5",
        "--json",
        "--variants",
        "4",
        "--tag-length",
        "very short",
        "--format",
        "tag only",
        "--max-new-tokens",
        "160",
    )
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seed"] for r in records] == [5, 6, 7, 8]
    assert len({r["prompt"] for r in records}) == 4
    assert all("1girl" in r["prompt"] for r in records)
