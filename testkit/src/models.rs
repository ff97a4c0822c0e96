//! Where the real models `scripts/setup.sh` installs live
//! (`CORTEX_MODELS_DIR` overrides the repository's `.cache/models`).

use std::path::PathBuf;

/// The model cache.
pub fn models_dir() -> PathBuf {
    std::env::var_os("CORTEX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"))
}

/// A model file or folder of the cache; a clear failure when absent.
pub fn model_path(relative: &str) -> PathBuf {
    let path = models_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/setup.sh` (or `make test`) first",
        path.display()
    );
    path
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: a real chat model.
pub fn smollm_path() -> PathBuf {
    model_path("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// all-MiniLM-L6-v2 in Hugging Face layout: a real embedding model.
pub fn minilm_dir() -> PathBuf {
    model_path("all-minilm-l6-v2")
}
