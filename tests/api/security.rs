//! Security settings of a deployment (issue 11), checked on the real binary.

use std::process::Command;

/// The binary run with `APP_ENV` and the repository's configuration.
fn registrar(app_env: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registrar"));
    command
        .env("APP_ENV", app_env)
        .env(
            "APP_CONFIG_DIR",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env_remove("APP__AUTH__JWT_SECRET");
    command
}

#[test]
fn a_production_server_refuses_the_signing_key_shipped_in_the_repository() {
    let output = registrar("production")
        .arg("serve")
        .output()
        .expect("the binary runs");

    assert_eq!(
        output.status.code(),
        Some(2),
        "exit 2: a configuration error"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
}
