//! Records the commit the binary is built from (`registrar --version`):
//! `git rev-parse` when the source is a git checkout, `unknown` otherwise.

use std::{path::PathBuf, process::Command};

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=REGISTRAR_GIT_SHA={sha}");
    // Rebuild when a new commit moves HEAD (a detached checkout) or the
    // branch it names. Only paths that exist are named: cargo reruns a
    // build script on every build while one of them is missing (a
    // repository without packed-refs, a worktree whose HEAD is elsewhere).
    println!("cargo:rerun-if-changed=build.rs");
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let (git_dir, common) = (PathBuf::from(git_dir), PathBuf::from(common));
    let head = git_dir.join("HEAD");
    let mut watched = vec![head.clone(), common.join("packed-refs")];
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(reference) = text.trim().strip_prefix("ref: ") {
            watched.push(common.join(reference));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
