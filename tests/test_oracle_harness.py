"""The oracle harness runs the reference engine, never our package of the same import name."""

from pathlib import Path

import pytest
from oracle import REPO_ROOT, reference_or_skip

import kgen


@pytest.mark.oracle
def test_driver_imports_the_reference_kgen_and_round_trips_json():
    result = reference_or_skip("smoke", {"tags": ["1girl", "ünïcode"]})
    reference_file = Path(result["file"]).resolve()
    assert result["echo"] == {"tags": ["1girl", "ünïcode"]}
    assert ".cache" in reference_file.parts
    assert not reference_file.is_relative_to(Path(kgen.__file__).resolve().parent)
    assert reference_file.is_relative_to(REPO_ROOT)
