//! Helpers shared by the integration tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Renders `url` in a headless chromium: the DOM after the page loaded, and a screenshot written
/// to `screenshot`. `None` (and a note on stderr) when no chromium is installed, so the caller
/// skips its browser checks cleanly; a browser that is installed but fails is a test failure.
#[allow(dead_code)]
pub fn headless_page(url: &str, screenshot: &std::path::Path) -> Option<String> {
    let Some(bin) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        eprintln!("SKIP browser check: no chromium installed (make test installs Debian's chromium)");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if let Some(dir) = screenshot.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    run(&["--window-size=1280,1600", &format!("--screenshot={}", screenshot.display())]);
    assert!(std::fs::metadata(screenshot).is_ok_and(|m| m.len() > 0), "no screenshot at {}", screenshot.display());
    Some(run(&["--dump-dom"]))
}
