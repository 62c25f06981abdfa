import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


import pytest  # noqa: E402 (after the path set-up above)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny SentencePiece tokenizer, left padding (modules may define their own ``tokenizer``)."""
    from tiny_models import build_tiny_tokenizer

    tok = build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    """A seeded tiny random LLaMA matching ``tokenizer``."""
    from tiny_models import build_tiny_llama

    return build_tiny_llama(vocab_size=len(tokenizer), seed=0)


def pytest_addoption(parser):
    parser.addoption(
        "--real-webui",
        default="",
        help="comma-separated real WebUIs (forge, reforge) for tests/webui_real; none: those tests skip",
    )
