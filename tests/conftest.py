"""Shared fixtures: a tiny timm backbone at 32 px and tiny image folders made in the test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from headstart import BackboneSpec, Preprocessing, register_backbone  # noqa: E402

TINY = "tiny-cnn"
register_backbone(
    BackboneSpec(
        name=TINY,
        arch="test_efficientnet",
        preprocessing=Preprocessing(input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        description="a 99k-parameter timm test network, for tests",
    ),
    overwrite=True,
)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def make_image(path: Path, rgb, size=(40, 36), seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_folder(root: Path, per_class: int = 8, classes=("red", "green", "blue"), seed: int = 0) -> Path:
    for ci, name in enumerate(classes):
        for i in range(per_class):
            make_image(root / name / f"{name}_{i}.png", COLORS[name], seed=seed * 1000 + ci * 100 + i)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "photos")


@pytest.fixture
def tiny_kwargs() -> dict:
    return dict(
        backbone=TINY, weights="none", epochs=2, head_epochs=3, batch_size=8,
        precision="fp32", num_workers=0, seed=0, lr=3e-3,
    )


@pytest.fixture
def trained(folder: Path, tiny_kwargs: dict):
    from headstart import ImageClassifier

    return ImageClassifier(**tiny_kwargs).fit(folder)


def requires_shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


POSITIVE = ["good", "great", "love", "excellent", "fun", "wonderful"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "boring", "poor"]
FILLER = ["the", "movie", "was", "plot", "actors", "really", "a", "and", "it", "this"]


def make_texts(n: int = 48, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short 'reviews' whose sentiment a tiny model can learn from the words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = list(rng.choice(FILLER, size=rng.integers(3, 9)))
        words += list(rng.choice(POSITIVE if label == "positive" else NEGATIVE, size=2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT and a WordPiece tokenizer, built here, saved as a local
    Hugging Face model directory."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "##s", "!", ",", "."]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    return root


@pytest.fixture
def text_kwargs(tiny_bert) -> dict:
    return dict(backbone=str(tiny_bert), epochs=8, batch_size=8, lr=1e-2, backbone_lr=3e-3,
                precision="fp32", seed=0, patience=0)


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """Tests never read or fill the user's feature cache."""
    monkeypatch.setenv("HEADSTART_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))


class TinyEncoder(torch.nn.Module):
    """Mean-pooled token embeddings through one linear layer, and a head: what the
    contrastive loop needs of a text model."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 8))
        self.head = torch.nn.Linear(8, 2)

    def block_groups(self):
        return [[name for name, _ in self.backbone.named_parameters()]]

    def embed(self, input_ids, attention_mask):
        h = self.backbone(input_ids)
        mask = attention_mask.unsqueeze(-1).float()
        return (h * mask).sum(1) / mask.sum(1)


def tiny_token_backend():
    """A :class:`~headstart.training.tokens.TokenBackend` over 16 rows of 2 classes (8 each)
    and a :class:`TinyEncoder`: the contrastive step loop without a transformer."""
    from headstart.config import HeadConfig, TrainConfig
    from headstart.training.tokens import TokenBackend

    labels = np.repeat([0, 1], 8)
    ids = [np.array([1 + (i % 5), 10 + y, 3], dtype=np.int32) for i, y in enumerate(labels)]
    cfg = TrainConfig(task="text", head=HeadConfig(pooling="mean"), batch_size=8, precision="fp32").resolved()
    return TokenBackend(TinyEncoder(), ids, [""] * 16, labels, cfg, pad_id=0, device=torch.device("cpu"),
                        precision="fp32", loss_fn=None, progress=False, cache_parts=None, max_length=8, eval_batch=8,
                        phase2_recipe="contrastive")
