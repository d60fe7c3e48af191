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

/// `registrar config check` from a directory without `config/`: the
/// defaults are built in; `--version` names the commit.
#[test]
fn the_binary_runs_from_anywhere_and_says_what_it_is() {
    let elsewhere = std::env::temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(["config", "check"])
        .current_dir(&elsewhere)
        .env_remove("APP_CONFIG_DIR")
        .env_remove("APP_ENV")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("configuration is valid: APP_ENV=local"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("postgres:postgres@"),
        "the password is redacted: {stdout}"
    );

    let typo = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(["config", "check"])
        .current_dir(&elsewhere)
        .env_remove("APP_CONFIG_DIR")
        .env("APP_ENV", "locl")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(stderr.contains("warning: APP_ENV=locl"), "{stderr}");

    let version = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .arg("--version")
        .output()
        .expect("the binary runs");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.starts_with(&format!("registrar {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
}

/// Started with neither PostgreSQL nor Redis reachable, the server keeps
/// running (it waits for them) and says, once each, which address it tried,
/// which setting names it and how to start them.
#[test]
fn a_server_without_its_dependencies_names_their_addresses_and_the_fix() {
    use std::io::{BufRead, BufReader};

    let (pg_port, redis_port) = (crate::kit::free_port(), crate::kit::free_port());
    let mut child = registrar("local")
        .arg("serve")
        .env("APP__HTTP__PORT", "0")
        .env(
            "APP__DATABASE__URL",
            format!("postgres://postgres:hunter22@127.0.0.1:{pg_port}/registrar"),
        )
        .env(
            "APP__REDIS__URL",
            format!("redis://127.0.0.1:{redis_port}/0"),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut postgres, mut redis) = (None, None);
    while postgres.is_none() || redis.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = said.recv_timeout(left) else {
            break;
        };
        if line.contains("PostgreSQL unreachable at start") {
            postgres = Some(line);
        } else if line.contains("Redis unreachable at start") {
            redis = Some(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    let postgres = postgres.expect("a start-up line about PostgreSQL");
    assert!(
        postgres.contains(&format!("127.0.0.1:{pg_port}"))
            && postgres.contains("database.url")
            && postgres.contains("scripts/services.sh")
            && !postgres.contains("hunter22"),
        "{postgres}"
    );
    let redis = redis.expect("a start-up line about Redis");
    assert!(
        redis.contains(&format!("127.0.0.1:{redis_port}"))
            && redis.contains("redis.url")
            && redis.contains("scripts/services.sh"),
        "{redis}"
    );
}
