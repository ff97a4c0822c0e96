"""Reference sentence embeddings for all-MiniLM-L6-v2, made with sentence-transformers.

Writes the JSON the engine's embedding tests compare against
(engine/tests/data/minilm_reference.json). Runs fully offline from a local model
directory in Hugging Face / sentence-transformers layout (scripts/setup.sh puts
one at .cache/models/all-minilm-l6-v2).

Usage (in a virtualenv with torch and sentence-transformers):

    python scripts/reference/minilm_reference.py \
        .cache/models/all-minilm-l6-v2 engine/tests/data/minilm_reference.json

Embeddings are encoded with normalize_embeddings=False, so they are exactly what
the module pipeline in modules.json produces (if it ends in a Normalize module,
they are unit length anyway; "normalize_in_pipeline" records that).
"""

import json
import os
import shlex
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

LONG_SENTENCE_DESCRIPTION = '" ".join("token%d" % i for i in range(600))'
SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Grüße aus München — café, naïve, 東京, 🚀",
    "",
    # ~600 words, far past max_seq_length word pieces, so it gets truncated.
    " ".join("token%d" % i for i in range(600)),
]


def main():
    model_dir, out_path = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")

    with open(os.path.join(model_dir, "modules.json"), encoding="utf-8") as f:
        modules = json.load(f)
    with open(os.path.join(model_dir, "1_Pooling", "config.json"), encoding="utf-8") as f:
        pooling = json.load(f)

    # One sentence per call, so no padding enters the computation.
    embeddings = [
        model.encode([s], normalize_embeddings=False, convert_to_numpy=True)[0] for s in SENTENCES
    ]
    token_ids = [
        model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"]
        for s in SENTENCES
    ]

    result = {
        "model": "all-MiniLM-L6-v2",
        "generator": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
        "sentence_transformers_version": sentence_transformers.__version__,
        "torch_version": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "normalize_in_pipeline": any(m["type"].endswith(".Normalize") for m in modules),
        "pooling": pooling,
        "long_sentence": LONG_SENTENCE_DESCRIPTION + " (last entry of sentences)",
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "embeddings": [[float(x) for x in row] for row in embeddings],
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
