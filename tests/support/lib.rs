//! Helpers for the integration tests: where the built binaries and the test models are.
//!
//! The binaries are the ones `cargo build --workspace` leaves next to the test executable
//! (scripts/test.sh builds them first). The models are the ones scripts/setup.sh converts
//! into `.deps/models/opta` (override with `OPTA_LMX_TEST_MODELS`).

use std::path::{Path, PathBuf};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A binary built by this workspace, e.g. `opta-lmx-worker`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A test model folder by name, e.g. `SmolLM2-135M-Instruct-4bit`.
pub fn model(name: &str) -> PathBuf {
    let root = std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".deps/models/opta"));
    let path = root.join(name);
    assert!(
        path.join("config.json").exists(),
        "test model {} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}
