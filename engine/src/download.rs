//! Fetching a file from the Hugging Face Hub (or any server speaking its
//! `resolve` API, `HF_ENDPOINT`) into the local hub cache, in the layout
//! `huggingface_hub` uses: `models--org--name/snapshots/<commit>/<file>`,
//! with `refs/<revision>` naming the commit. The file is written to a
//! `.part` file first and renamed when complete, so a cache never holds a
//! half-downloaded model.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::source::HubSettings;

/// How long connecting and waiting for the response head may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A stall in the body longer than this fails the download.
const BODY_STALL: Duration = Duration::from_secs(120);

/// Downloads `file` of `repo` at `revision` into the cache; returns its path.
pub fn download(hub: &HubSettings, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let url = format!("{}/{repo}/resolve/{revision}/{file}", hub.endpoint);
    let failed = |why: String| {
        EngineError::Missing(format!(
            "hf:{repo}@{revision}:{file}: not in the cache and the download failed ({why})"
        ))
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(None)
        .timeout_per_call(None)
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = &hub.token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| failed(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(failed(format!("{url}: HTTP {status}")));
    }
    let commit = response
        .headers()
        .get("x-repo-commit")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| revision.to_string());
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return Err(failed(format!("{url}: bad X-Repo-Commit {commit:?}")));
    }
    let repo_dir = hub
        .cache
        .join(format!("models--{}", repo.replace('/', "--")));
    let target = repo_dir.join("snapshots").join(&commit).join(file);
    let parent = target.parent().unwrap_or(&repo_dir).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| EngineError::io(&parent, e))?;
    let part = target.with_extension("part");
    let mut out = std::fs::File::create(&part).map_err(|e| EngineError::io(&part, e))?;
    let mut body = response.body_mut().as_reader();
    copy_with_stall_limit(&mut body, &mut out).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        failed(format!("{url}: {e}"))
    })?;
    out.flush().map_err(|e| EngineError::io(&part, e))?;
    drop(out);
    std::fs::rename(&part, &target).map_err(|e| EngineError::io(&target, e))?;
    if commit != revision {
        let refs = repo_dir.join("refs");
        std::fs::create_dir_all(&refs).map_err(|e| EngineError::io(&refs, e))?;
        std::fs::write(refs.join(revision), &commit).map_err(|e| EngineError::io(&refs, e))?;
    }
    tracing::info!(repo, revision, file, path = %target.display(), "downloaded model file");
    Ok(target)
}

/// Copies until the end, failing when no byte arrives for [`BODY_STALL`].
fn copy_with_stall_limit(
    reader: &mut impl std::io::Read,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    let mut last = std::time::Instant::now();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                total += n as u64;
                last = std::time::Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && last.elapsed() < BODY_STALL => {}
            Err(e) => return Err(e),
        }
    }
}
