//! Polling for a condition with a deadline.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`. Tests wait for conditions, never for fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it holds, or panics with `what` after
/// `timeout`: [`eventually`] for a condition that yields nothing.
pub async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    eventually(what, timeout, || std::future::ready(check().then_some(()))).await
}
