"""The command line: dry runs, JSON output, bulk JSONL, exit codes and messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kgen import cli
from kgen.engine.replay import ReplayBackend
from kgen.models.registry import find_model
from kgen.settings import TipoSettings

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def numbered_tags(prompt: str, seed: int) -> str:
    """A replay script: every call adds 12 fresh tags derived from the seed, then ends."""
    return "".join(f", tag{seed}x{i}" for i in range(12)) + "</s>"


@pytest.fixture
def replay(monkeypatch):
    backend = ReplayBackend(numbered_tags)
    monkeypatch.setattr(cli, "load_backend", lambda args: (backend, None))
    return backend


def test_dry_run_prints_the_pipelines_first_model_input():
    code, out, _ = run_cli(
        "--dry-run", "1girl, solo, hatsune_miku", "--nl", "A girl in a park.", "--seed", "7"
    )
    # TIPO's model input for tags + caption: the character field, the aspect ratio, the tag-length target
    # with the short-caption-to-tags task, the caption, then the remaining tags (underscores become spaces).
    expected = (
        "characters: hatsune miku\n"
        "aspect ratio: 1.0\n"
        "target: <|long|> <|short_to_tag|>\n"
        "short: A girl in a park.\n"
        "tag: 1girl, solo\n"
    )
    assert code == 0
    assert out == expected


def test_length_values_accept_spaces_and_underscores(capsys):
    spaced = run_cli("--dry-run", "1girl", "--tag-length", "very short")[1]
    underscored = run_cli("--dry-run", "1girl", "--tag-length", "very_short")[1]
    assert spaced == underscored
    assert "<|very_short|>" in spaced
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--dry-run", "1girl", "--tag-length", "medium")
    assert exit_info.value.code == 2
    assert "very_short" in capsys.readouterr().err


def test_dry_run_needs_no_model_and_no_network():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KGEN_MODELS_DIR": "/nonexistent-kgen-models"}
    proc = subprocess.run(
        [sys.executable, "-m", "kgen", "--dry-run", "1girl, solo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tag: 1girl, solo" in proc.stdout
    assert "torch" not in proc.stderr


def test_json_output_reports_fields_prompt_tokens_and_seconds(replay):
    code, out, _ = run_cli("1girl, solo", "--seed", "3", "--json", "--tag-length", "short")
    assert code == 0
    record = json.loads(out)
    assert record["prompt"]
    assert record["special"] == ["1girl"]
    assert "solo" in record["general"]
    assert record["completion_tokens"] > 0 and record["prompt_tokens"] > 0
    assert record["seconds"] >= 0
    assert record["generate_passes"] == len(replay.inputs)


def test_plain_output_is_the_final_prompt_and_keeps_user_tags(replay):
    code, out, _ = run_cli("1girl, solo, long hair", "--seed", "3", "--format", "tag only")
    assert code == 0
    for tag in ("1girl", "solo", "long hair"):
        assert tag in out


def test_bulk_dry_run_keeps_order_and_reports_bad_lines(tmp_path):
    requests = tmp_path / "in.jsonl"
    lines = [
        {"tags": "1girl, solo", "seed": 1},
        {"tags": "1boy", "ban_tags": "(unclosed"},
        "not json",
        {"nl": "A cat on a roof.", "nl_length": "very short"},
        {"tags": "1girl", "colour": "red"},
    ]
    requests.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    results = tmp_path / "out.jsonl"
    code, _, _ = run_cli("--dry-run", "--input", str(requests), "--output", str(results))
    assert code == 0
    records = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(records) == 5
    assert records[0]["model_input"] == "aspect ratio: 1.0\ntarget: <|long|>\ntag: 1girl, solo"
    assert "(unclosed" in records[1]["error"]
    assert records[2]["error"].startswith("line 3")
    assert "long: A cat on a roof." in records[3]["model_input"]
    assert "colour" in records[4]["error"]


def test_bulk_generation_in_order_with_errors_in_place(tmp_path, replay):
    requests = tmp_path / "in.jsonl"
    payload = [{"tags": f"1girl, tag{i}", "seed": 100 + i, "tag_length": "very_short"} for i in range(5)]
    payload.insert(2, {"tags": "1girl", "ban_tags": "(bad"})
    requests.write_text("".join(json.dumps(p) + "\n" for p in payload))
    results = tmp_path / "out.jsonl"
    code, _, _ = run_cli("--input", str(requests), "--output", str(results), "--batch-size", "4")
    assert code == 1  # one line failed
    records = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(records) == 6
    assert "error" in records[2]
    good = [r for r in records if "error" not in r]
    for i, record in enumerate(good):
        assert f"tag{i}" in record["general"]
        assert record["seed"] == 100 + i
    assert max(len(call) for call in replay.calls) > 1  # requests were batched


def test_same_seed_same_prompt(monkeypatch):
    outputs = []
    for _ in range(2):
        backend = ReplayBackend(numbered_tags)
        monkeypatch.setattr(cli, "load_backend", lambda args, b=backend: (b, None))
        outputs.append(run_cli("1girl, solo", "--seed", "11")[1])
    assert outputs[0] == outputs[1]


def test_bad_ban_regex_is_a_clear_error_naming_it():
    code, out, err = run_cli("--dry-run", "1girl", "--ban-tags", "hat, (ab")
    assert code == cli.EXIT_BAD_INPUT
    assert "(ab" in err and out == ""


def test_unavailable_model_gives_a_clear_message(tmp_path):
    code, _, err = run_cli("1girl", "--offline", "--models-dir", str(tmp_path), "--model", "TIPO-200M")
    assert code == cli.EXIT_NO_MODEL
    assert "could not load model" in err and "--dry-run" in err


def test_sampling_defaults_follow_the_models_protocol():
    args = cli.build_parser().parse_args(["x"])
    assert cli.sampling_from_args(args, find_model("DanTagGen-delta-rev2")) is None
    args = cli.build_parser().parse_args(["x", "--top-k", "5"])
    from kgen.protocol.dtg import DTG_SAMPLING

    dtg = cli.sampling_from_args(args, find_model("DanTagGen-delta-rev2"))
    assert dtg.top_k == 5 and dtg.temperature == DTG_SAMPLING.temperature
    tipo = cli.sampling_from_args(args, find_model("TIPO-200M"))
    assert tipo.top_k == 5 and tipo.temperature == 0.5


def test_variants_give_distinct_prompts_seeded_per_variant(replay):
    code, out, _ = run_cli(
        "1girl, solo", "--seed", "5", "--variants", "3", "--json", "--tag-length", "very short"
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seed"] for r in records] == [5, 6, 7]
    assert len({r["prompt"] for r in records}) == 3
    first_call = replay.calls[0]
    assert len(first_call) == 3 and len({i.prompt for i in first_call}) == 1  # one shared first model input


def test_variant_zero_equals_the_plain_run(monkeypatch):
    plain_backend, variant_backend = ReplayBackend(numbered_tags), ReplayBackend(numbered_tags)
    monkeypatch.setattr(cli, "load_backend", lambda args: (plain_backend, None))
    plain = json.loads(run_cli("1girl", "--seed", "9", "--json")[1])
    monkeypatch.setattr(cli, "load_backend", lambda args: (variant_backend, None))
    first = json.loads(run_cli("1girl", "--seed", "9", "--json", "--variants", "2")[1].splitlines()[0])
    assert first["prompt"] == plain["prompt"]


def test_setting_options_build_the_settings_and_the_request():
    args = cli.build_parser().parse_args(
        ["1girl", "--tag-length", "very_short", "--format", "<|general|>", "--seed", "-5", "--no-formatting"]
    )
    assert cli.settings_from_args(args) == TipoSettings(
        tag_length="very short", format="custom", template="<|general|>", seed=-1, no_formatting=True
    )
    request = cli.request_from_args(args)
    assert (request.tag_length, request.template, request.no_formatting) == (
        "very_short",
        "<|general|>",
        True,
    )
    preset = cli.settings_from_args(cli.build_parser().parse_args(["x", "--format", "tag only"]))
    assert preset.format == "tag only (DTG mode)" and preset.template == ""
