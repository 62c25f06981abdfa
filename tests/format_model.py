"""A tiny LLaMA that writes TIPO-format text, trained on synthetic data in a couple of minutes on CPU.

Random-weight models produce random tokens; end-to-end tests and the TGTS benchmark need completions that
look like a TIPO model's: a comma-separated ``tag:`` line of plausible length, then EOS. This module builds
such a model reproducibly (fixed seeds, fixed data generator, fixed step count), caches it under
``<repo>/.cache/format_model/<key>/`` and loads it from there afterwards. Nothing here is committed.

    from format_model import load_format_model, tipo_prompt
    model, tokenizer = load_format_model()

Run ``python tests/format_model.py`` to build (or rebuild with ``--force``) and print a few samples.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / ".cache" / "format_model"

# Bump when the data generator or the training recipe changes: the cache key includes it.
RECIPE_VERSION = 3

SUBJECTS = [
    ["1girl", "solo"],
    ["1boy", "solo"],
    ["2girls"],
    ["1girl", "1boy"],
    ["multiple girls"],
    ["no humans"],
]
COMMON = [
    "long hair",
    "short hair",
    "looking at viewer",
    "smile",
    "blush",
    "open mouth",
    "bangs",
    "blue eyes",
    "brown hair",
    "black hair",
    "red eyes",
    "skirt",
    "shirt",
    "long sleeves",
    "hair ornament",
    "gloves",
    "dress",
    "thighhighs",
    "holding",
    "jewelry",
    "closed mouth",
    "standing",
    "hat",
    "upper body",
    "sitting",
    "white shirt",
    "green eyes",
    "ribbon",
    "simple background",
    "white background",
    "full body",
    "jacket",
    "closed eyes",
    "hair between eyes",
    "purple eyes",
    "yellow eyes",
    "ponytail",
    "twintails",
    "braid",
    "collarbone",
    "earrings",
    "bow",
    "hair bow",
    "pleated skirt",
    "boots",
    "school uniform",
    "sidelocks",
    "cowboy shot",
    "from side",
    "outdoors",
    "sky",
    "day",
    "cloud",
    "tree",
    "flower",
    "night",
    "star (sky)",
    "water",
    "indoors",
    "window",
    "food",
    "animal ears",
    "tail",
    "wings",
    "weapon",
    "sword",
    "book",
    "hand up",
    "arms up",
    "parted lips",
    "teeth",
    "detached sleeves",
    "frills",
    "necktie",
    "scarf",
    "fang",
    "glasses",
    "heterochromia",
    "one eye closed",
    "wariza",
    "kneeling",
    "lying",
    "on back",
    "petals",
    "cherry blossoms",
    "sunlight",
    "blue sky",
    "grass",
    "building",
    "city",
    "rain",
    "snow",
    "umbrella",
    "bag",
    "cup",
    "chair",
    "table",
    "bed",
    "pillow",
    "scenery",
    "landscape",
    "mountain",
]
THEMES = {
    "school": [
        "school uniform",
        "serafuku",
        "classroom",
        "desk",
        "chalkboard",
        "sailor collar",
        "neckerchief",
        "pleated skirt",
        "school bag",
        "kneehighs",
        "loafers",
        "indoors",
        "window",
        "sitting",
    ],
    "beach": [
        "beach",
        "ocean",
        "swimsuit",
        "bikini",
        "sand",
        "wet",
        "horizon",
        "palm tree",
        "sun hat",
        "barefoot",
        "outdoors",
        "blue sky",
        "water",
        "day",
    ],
    "fantasy": [
        "armor",
        "cape",
        "sword",
        "magic",
        "staff (weapon)",
        "castle",
        "elf",
        "pointy ears",
        "crown",
        "fire",
        "holding weapon",
        "gauntlets",
        "shield",
        "fantasy",
    ],
    "night": [
        "night",
        "night sky",
        "moon",
        "full moon",
        "star (sky)",
        "starry sky",
        "city lights",
        "lantern",
        "dark",
        "glowing",
        "outdoors",
        "scenery",
        "building",
    ],
    "cafe": [
        "cafe",
        "cup",
        "coffee",
        "table",
        "chair",
        "cake",
        "food",
        "holding cup",
        "apron",
        "maid",
        "maid headdress",
        "indoors",
        "plate",
        "spoon",
    ],
    "winter": [
        "snow",
        "snowing",
        "scarf",
        "winter clothes",
        "coat",
        "mittens",
        "breath",
        "earmuffs",
        "winter",
        "outdoors",
        "tree",
        "red scarf",
        "fur trim",
        "beanie",
    ],
}
CHARACTERS = {
    "hatsune miku": ("vocaloid", ["twintails", "aqua hair", "aqua eyes", "necktie", "detached sleeves"]),
    "kagamine rin": ("vocaloid", ["blonde hair", "short hair", "hair bow", "headphones"]),
    "hakurei reimu": ("touhou", ["brown hair", "red bow", "detached sleeves", "hair tubes", "red skirt"]),
    "kirisame marisa": ("touhou", ["blonde hair", "witch hat", "braid", "apron", "yellow eyes"]),
    "remilia scarlet": ("touhou", ["bat wings", "mob cap", "red eyes", "short hair", "blue hair"]),
    "saber (fate)": ("fate (series)", ["blonde hair", "green eyes", "ahoge", "armor", "hair bun"]),
    "tohsaka rin": ("fate (series)", ["black hair", "twintails", "red sweater", "blue eyes"]),
    "gawr gura": ("hololive", ["shark tail", "blue hair", "multicolored hair", "hood", "sharp teeth"]),
    "houshou marine": ("hololive", ["red hair", "heterochromia", "pirate hat", "twintails", "eyepatch"]),
    "rem (re:zero)": ("re:zero kara hajimeru isekai seikatsu", ["blue hair", "maid", "hair over one eye"]),
    "frieren": ("sousou no frieren", ["white hair", "elf", "pointy ears", "twintails", "green eyes"]),
    "raiden shogun": ("genshin impact", ["purple hair", "braid", "purple eyes", "kimono", "mole under eye"]),
    "march 7th (honkai: star rail)": (
        "honkai: star rail",
        ["pink hair", "short hair", "blue eyes", "jacket"],
    ),
    "asuna (sao)": ("sword art online", ["orange hair", "long hair", "brown eyes", "armor"]),
    "megumin": ("kono subarashii sekai ni shukufuku wo!", ["witch hat", "red eyes", "cape", "short hair"]),
}
ARTISTS = [
    "mignon",
    "fuzichoco",
    "ningen mame",
    "wlop",
    "ask (askzy)",
    "kantoku",
    "tony taka",
    "hiten (hitenkei)",
    "sakimichan",
    "rella",
    "as109",
    "ciloranko",
    "toosaka asagi",
    "yoneyama mai",
    "momoko (momopoco)",
    "shiratama (shiratamaco)",
    "nardack",
    "anmi",
    "torino aqua",
    "void 0",
]
META = [
    "highres",
    "absurdres",
    "lowres",
    "commentary request",
    "translated",
    "official art",
    "bad id",
    "english commentary",
    "commentary",
    "artist name",
    "signature",
    "dated",
    "watermark",
    "scan",
]
QUALITY = ["masterpiece", "best quality", "high quality", "normal quality", "low quality", "worst quality"]
RATINGS = ["general", "sensitive", "questionable", "explicit"]
LENGTH_BOUNDS = {"very_short": (6, 18), "short": (18, 36), "long": (36, 54), "very_long": (54, 72)}
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>"]
ADDED_TOKENS = [f"<|{name}|>" for name in (*LENGTH_BOUNDS, "tag_to_long", "gen_meta", "empty")]


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights; hashed into the cache key."""

    version: int = RECIPE_VERSION
    seed: int = 1234
    documents: int = 6000
    vocab_size: int = 1200
    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4  # = heads: transformers 4.30 has no grouped-query attention
    max_positions: int = 512
    batch_size: int = 16
    steps: int = 200
    learning_rate: float = 4e-3
    threads: int = 1  # more threads are slower on a shared 2-core machine
    max_train_seconds: float = 900.0  # safety stop only; normally all steps run (about 3 min)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _weighted_sample(rng: random.Random, pool: list[str], count: int, exclude: set[str]) -> list[str]:
    """Zipf-like: earlier entries in ``pool`` are more popular."""
    chosen: list[str] = []
    candidates = [tag for tag in pool if tag not in exclude]
    weights = [1.0 / (rank + 3) for rank in range(len(candidates))]
    while candidates and len(chosen) < count:
        index = rng.choices(range(len(candidates)), weights=weights)[0]
        chosen.append(candidates.pop(index))
        weights.pop(index)
    return chosen


@dataclass(frozen=True)
class SyntheticDocument:
    meta_lines: list[tuple[str, str]]
    target: str
    tags: list[str]

    def text(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.meta_lines]
        lines.append(f"target: {self.target}")
        lines.append("tag: " + ", ".join(self.tags))
        return "\n".join(lines)


def synthetic_document(rng: random.Random) -> SyntheticDocument:
    """One TIPO-format training document: meta block, target, then a tag line of the target's length."""
    characters = rng.sample(sorted(CHARACTERS), k=rng.choices([0, 1, 2], weights=[4, 5, 1])[0])
    copyrights = sorted({CHARACTERS[name][0] for name in characters})
    if not copyrights and rng.random() < 0.2:
        copyrights = [rng.choice(sorted({c for c, _ in CHARACTERS.values()}))]
    artist = [rng.choice(ARTISTS)] if rng.random() < 0.5 else []
    meta = rng.sample(META[:6], k=rng.randint(0, 2))
    quality = rng.choice(QUALITY[:3]) if rng.random() < 0.7 else rng.choice(QUALITY)
    rating = rng.choices(RATINGS, weights=[6, 3, 1, 0.2])[0]
    width, height = rng.choice([(1, 1), (3, 4), (2, 3), (4, 3), (16, 9), (9, 16), (1, 2)])
    length = rng.choices(list(LENGTH_BOUNDS), weights=[2, 3, 4, 2])[0]
    low, high = LENGTH_BOUNDS[length]
    count = rng.randint(low, high)

    subject = list(rng.choice(SUBJECTS[:2] if len(characters) == 1 else SUBJECTS))
    tags = subject + [name for name in characters] + [c for c in copyrights]
    for name in characters:
        tags += [tag for tag in CHARACTERS[name][1] if tag not in tags and rng.random() < 0.85]
    theme = THEMES[rng.choice(sorted(THEMES))]
    tags += _weighted_sample(rng, theme, min(len(theme), max(0, (count - len(tags)) // 3)), set(tags))
    tags += _weighted_sample(rng, COMMON, max(0, count - len(tags)), set(tags))
    head, tail = tags[: len(subject)], tags[len(subject) :]
    rng.shuffle(tail)  # TIPO's training data shuffles the general tags after the person count
    tags = head + tail

    meta_lines = [
        ("meta", ", ".join(meta)),
        ("rating", rating),
        ("artist", ", ".join(artist)),
        ("characters", ", ".join(characters)),
        ("copyrights", ", ".join(copyrights)),
        ("quality", quality),
        ("aspect ratio", f"{width / height:.1f}"),
    ]
    return SyntheticDocument([(k, v) for k, v in meta_lines if v], f"<|{length}|>", tags)


def tipo_prompt(document: SyntheticDocument, given_tags: int = 2) -> str:
    """The model input for ``document`` with only its first ``given_tags`` tags given (TIPO's expand mode)."""
    lines = [f"{key}: {value}" for key, value in document.meta_lines]
    lines.append(f"target: {document.target}")
    lines.append("tag: " + ", ".join(document.tags[:given_tags]))
    return "\n".join(lines)


def example_prompt(seed: int = 0, given_tags: int = 2) -> str:
    """A held-out prompt in the training distribution (documents with seeds >= 10**6 are never trained on)."""
    return tipo_prompt(synthetic_document(random.Random(10**6 + seed)), given_tags)


def _build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + ADDED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _train(recipe: Recipe, out_dir: Path, log=print) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(recipe.seed)
    texts = [synthetic_document(rng).text() for _ in range(recipe.documents)]
    tokenizer = _build_tokenizer(texts, recipe.vocab_size)
    encoded = [[*ids, tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=recipe.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
    model.train()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        _optimise(model, tokenizer, encoded, recipe, log)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))


def _optimise(model, tokenizer, encoded: list[list[int]], recipe: Recipe, log) -> None:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
    )
    order = list(range(len(encoded)))
    random.Random(recipe.seed + 1).shuffle(order)
    batch_rng = random.Random(recipe.seed + 2)
    started = time.perf_counter()
    for step in range(recipe.steps):
        rows = [encoded[i] for i in batch_rng.sample(order, recipe.batch_size)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        elapsed = time.perf_counter() - started
        if step % 50 == 0 or step == recipe.steps - 1:
            log(f"format model: step {step} loss {loss.item():.3f} ({elapsed:.0f}s)")
        if elapsed > recipe.max_train_seconds:
            log(f"format model: stopped at step {step} after {elapsed:.0f}s (time cap)")
            break


@contextlib.contextmanager
def _build_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def format_model_dir(recipe: Recipe = Recipe(), force: bool = False, log=print) -> Path:
    """Path of the cached model, training it first when missing (one builder at a time, atomic publish)."""
    target = CACHE_ROOT / recipe.key()
    with _build_lock(CACHE_ROOT / f"{recipe.key()}.lock"):
        if force and target.exists():
            shutil.rmtree(target)
        if not (target / "recipe.json").exists():
            staging = CACHE_ROOT / f"{recipe.key()}.building-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            _train(recipe, staging, log=log)
            os.replace(staging, target)
    return target


def load_format_model(recipe: Recipe = Recipe()):
    """``(model, tokenizer)`` of the tiny TIPO-format LLaMA, in eval mode on CPU (built on first use)."""
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    path = format_model_dir(recipe)
    model = (
        LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        if _has_dtype_kwarg()
        else (LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32))
    )
    model.eval()
    # Built from tokenizer.json directly: the saved tokenizer_config names a class only recent releases have.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_portable_tokenizer(path / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return model, tokenizer


def format_model_or_skip():
    """(model, tokenizer) for tests: built on demand in CI (``CI`` set), else only when already cached."""
    import os

    import pytest

    if not os.environ.get("CI") and not (CACHE_ROOT / Recipe().key() / "recipe.json").exists():
        pytest.skip("the format model is not built yet (about 3 min): python tests/format_model.py")
    return load_format_model()


def _portable_tokenizer(path: Path):
    """Read tokenizer.json also with old ``tokenizers`` (0.13, transformers 4.30's pin): BPE merges as
    "a b" strings, no fields it does not know."""
    from tokenizers import Tokenizer

    data = json.loads(path.read_text(encoding="utf-8"))
    model = data["model"]
    model.pop("ignore_merges", None)
    if model.get("merges") and isinstance(model["merges"][0], list):
        model["merges"] = [" ".join(pair) for pair in model["merges"]]
    return Tokenizer.from_str(json.dumps(data))


def _has_dtype_kwarg() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def main(argv: list[str]) -> None:
    import torch

    if "--force" in argv:
        format_model_dir(force=True)
    model, tokenizer = load_format_model()
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}; vocab {len(tokenizer)}")
    generator = torch.Generator().manual_seed(0)
    for seed in range(3):
        prompt = example_prompt(seed)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(300):
                logits = model(input_ids=ids).logits[0, -1]
                token = torch.multinomial(torch.softmax(logits / 0.7, -1), 1, generator=generator)
                ids = torch.cat([ids, token[None]], dim=1)
                if token.item() == tokenizer.eos_token_id:
                    break
        text = tokenizer.decode(ids[0], skip_special_tokens=False)
        tags = text.split("tag: ", 1)[1].replace("</s>", "").split(", ")
        print(f"--- {len(tags)} tags, {ids.shape[1]} tokens\n{text}")


if __name__ == "__main__":
    main(sys.argv[1:])
