"""A datasets folder with small stand-ins for the guide's four datasets (kde4, imdb,
billsum, bookcorpus), laid out the way ``--datasets-dir`` looks them up."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "moving", "brilliant", "funny", "charming", "superb"]
NEGATIVE = ["boring", "awful", "dull", "terrible", "clumsy", "tedious", "weak"]
SUBJECTS = ["The film", "This movie", "The plot", "The acting", "The story", "The ending"]
PHRASES = [
    ("I love SQL", "Me encanta SQL"),
    ("The file was saved", "El archivo fue guardado"),
    ("Open the window", "Abre la ventana"),
    ("Credits", "Créditos"),
    ("The plugin gives you quick access", "La extensión le permite un acceso rápido"),
    ("Close the document", "Cierra el documento"),
    ("Print the page", "Imprime la página"),
    ("The tree view", "La vista de árbol"),
]


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def review(rng: random.Random, positive: bool) -> str:
    words = POSITIVE if positive else NEGATIVE
    return f"{rng.choice(SUBJECTS)} was {rng.choice(words)} and {rng.choice(words)}."


def build_guide_datasets(root: Path) -> Path:
    """Lay out root/{kde4,imdb,billsum,bookcorpus} and return root."""
    import datasets

    rng = random.Random(7)
    _write_jsonl(
        root / "kde4" / "en-es" / "train.jsonl",
        [
            {"id": str(i), "translation": {"en": en, "es": es}}
            for i, (en, es) in enumerate(PHRASES * 3)
        ],
    )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    imdb = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "text": [review(rng, i % 2 == 1) for i in range(count)],
                    "label": [i % 2 for i in range(count)],
                },
                features=features,
            )
            for split, count in (("train", 24), ("test", 24), ("unsupervised", 6))
        }
    )
    imdb.save_to_disk(str(root / "imdb"))
    for split, count in (("train", 6), ("ca_test", 12), ("test", 3)):
        _write_jsonl(
            root / "billsum" / f"{split}.jsonl",
            [
                {
                    "text": f"Section {i}. The state shall fund {rng.choice(SUBJECTS).lower()} "
                    f"programs for {i + 2} years and report to the legislature.",
                    "summary": f"Funds programs for {i + 2} years.",
                    "title": f"An act relating to program {i}",
                }
                for i in range(count)
            ],
        )
    _write_jsonl(
        root / "bookcorpus" / "train.jsonl",
        [{"text": f"{review(rng, i % 3 == 0)} Chapter {i} ends here."} for i in range(150)],
    )
    return root
