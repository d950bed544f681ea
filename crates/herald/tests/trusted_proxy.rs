//! `herald serve --trusted-proxy` (and `HERALD_TRUSTED_PROXY`): a value that is
//! not an IP address or network stops herald before it serves, naming it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `herald serve` with `args` and `env`; its exit status and stderr. A
/// herald that starts serving instead of refusing is killed at the bound.
fn serve(args: &[&str], env: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_remove("HERALD_TRUSTED_PROXY")
        .env_remove("HERALD_LISTEN")
        .arg("--data")
        .arg(dir.path())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(value) = env {
        cmd.env("HERALD_TRUSTED_PROXY", value);
    }
    let mut child = cmd.spawn().expect("spawn herald");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
}

#[test]
fn a_bad_trusted_proxy_is_refused_from_the_flag_and_the_environment() {
    let (status, stderr) = serve(&["--trusted-proxy", "10.0.0.1", "--trusted-proxy", "10.0.0.0/33"], None);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("not an IP address or network"), "{stderr}");
    assert!(stderr.contains("10.0.0.0/33"), "{stderr}");

    let (status, stderr) = serve(&[], Some("10.0.0.1, fd00::/8,proxy.local"));
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("proxy.local"), "{stderr}");
}
