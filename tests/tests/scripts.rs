//! scripts/test itself: a missing redis-server is an error unless skipped
//! explicitly. Runs the script with a PATH of stubs: a `cargo` that records
//! its arguments, no `redis-server`, no `apt-get`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PATH directory with the few tools the script needs and a stub `cargo`.
fn stub_path(dir: &Path, with_redis: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for tool in ["bash", "dirname", "id", "printf", "cat"] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let target = String::from_utf8(found.stdout).unwrap();
        let _ = std::fs::remove_file(dir.join(tool));
        std::os::unix::fs::symlink(target.trim(), dir.join(tool)).unwrap();
    }
    let log = dir.join("cargo.log");
    let _ = std::fs::remove_file(&log);
    let cargo = format!(
        "#!/bin/bash\necho \"$* CI=${{CI:-unset}}\" >> {}\n",
        log.display()
    );
    write_executable(&dir.join("cargo"), &cargo);
    if with_redis {
        // Everything the Redis tests need: the server, redis-cli (which
        // joins the test cluster), Sentinel, and openssl for TLS.
        for tool in ["redis-server", "redis-cli", "redis-sentinel", "openssl"] {
            write_executable(&dir.join(tool), "#!/bin/bash\necho stub\n");
        }
    }
    log
}

/// The test commands of scripts/test, as the stub records them: the
/// end-to-end binary runs apart from the others, several tests at a time.
const TEST_COMMANDS: [&str; 3] = [
    "test --workspace --exclude tower-quota-tests --all-features -- --test-threads=1",
    "test --workspace --all-features --test fuzz_stack -- --test-threads=1",
    "test --workspace --all-features --test e2e -- --test-threads=4",
];

/// Whether `log` holds every test command, run with `CI` set to `ci`.
fn ran_every_test_command(log: &str, ci: &str) -> bool {
    TEST_COMMANDS
        .iter()
        .all(|command| log.contains(&format!("{command} CI={ci}\n")))
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(dir: &Path, skip: bool) -> (bool, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test");
    let mut command = Command::new(dir.join("bash"));
    command
        .arg(script)
        .env_clear()
        .env("PATH", dir)
        .env("HOME", dir);
    if skip {
        command.env("TOWER_QUOTA_SKIP_REDIS", "1");
    }
    let output = command.output().unwrap();
    let log = std::fs::read_to_string(dir.join("cargo.log")).unwrap_or_default();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        log,
    )
}

/// Regression: without redis-server the Redis tests passed silently
/// (scripts/test exported CI=false, so the test support skipped them).
#[test]
fn scripts_test_fails_without_redis_server_unless_skipped_explicitly() {
    let _turn = crate::support::beside_others_blocking();
    let base = std::env::temp_dir().join(format!("scripts-test-{}", std::process::id()));

    let dir = base.join("missing");
    stub_path(&dir, false);
    let (ok, stderr, log) = run(&dir, false);
    assert!(!ok, "a missing redis-server must fail the run: {stderr}");
    assert!(stderr.contains("TOWER_QUOTA_SKIP_REDIS=1"), "{stderr}");
    assert!(!log.contains("test --workspace"), "no test ran: {log}");

    let (ok, stderr, log) = run(&dir, true);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("SKIPPED"), "{stderr}");
    assert!(ran_every_test_command(&log, "false"), "{log}");

    // One tool missing of several is an error too, naming it.
    let dir = base.join("no-sentinel");
    stub_path(&dir, true);
    std::fs::remove_file(dir.join("redis-sentinel")).unwrap();
    let (ok, stderr, log) = run(&dir, false);
    assert!(!ok, "a missing redis-sentinel must fail the run: {stderr}");
    assert!(stderr.contains("redis-sentinel is missing"), "{stderr}");
    assert!(!log.contains("test --workspace"), "no test ran: {log}");

    let dir = base.join("present");
    stub_path(&dir, true);
    let (ok, stderr, log) = run(&dir, false);
    assert!(ok, "{stderr}");
    assert!(ran_every_test_command(&log, "true"), "{log}");
    let _ = std::fs::remove_dir_all(&base);
}
