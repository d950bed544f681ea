//! What the fan-out drives: herald (spawned or running), Nchan (nginx run as a
//! child with a config written here) and the ceiling (an in-process tokio
//! broadcaster serving SSE with axum, the same HTTP stack as herald).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::sync::broadcast;

use crate::http;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts a TCP connection.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("nothing listens on {addr} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Children of `pid` (from /proc/*/stat).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces: split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Parses `http://host:port` (loopback only: the bench sends load nowhere else).
pub fn parse_target(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--target {url:?}: only http:// is supported"))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("--target {url:?}: expected http://127.0.0.1:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("--target {url:?}: the bench only sends load to loopback addresses");
    }
    Ok(addr)
}

/// Parses `--target`'s list (already split at commas): each entry as
/// [`parse_target`], none empty, no address twice (one instance listed twice
/// would be counted as two).
pub fn parse_targets(urls: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(urls.len());
    for url in urls {
        let url = url.trim();
        if url.is_empty() {
            bail!("--target: an empty entry in the list (expected http://127.0.0.1:PORT,http://127.0.0.1:PORT2,…)");
        }
        let addr = parse_target(url)?;
        if out.contains(&addr) {
            bail!("--target {url:?}: {addr} is listed twice");
        }
        out.push(addr);
    }
    if out.is_empty() {
        bail!("--target: no URL given");
    }
    Ok(out)
}

/// The target (of `targets`, at least one) the `i`-th client of a scenario
/// uses: round-robin, so that counts differ by at most one.
pub fn assigned(i: usize, targets: usize) -> usize {
    i % targets.max(1)
}

/// How many of `clients` each of `targets` gets under [`assigned`].
pub fn spread(clients: usize, targets: usize) -> Vec<usize> {
    let mut counts = vec![0; targets.max(1)];
    for i in 0..clients {
        counts[assigned(i, targets)] += 1;
    }
    counts
}

// ---------------------------------------------------------------- herald

pub struct Herald {
    /// Every instance, at least one; instances of one PostgreSQL database
    /// when there are several. The catch-up scenario uses the first.
    pub targets: Vec<SocketAddr>,
    pub token: String,
    /// The servers' processes, to read their memory (any number).
    pub pids: Vec<u32>,
    child: Option<tokio::process::Child>,
    pub data_dir: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Herald {
    pub fn running(targets: Vec<SocketAddr>, token: String, pids: Vec<u32>) -> Result<Herald> {
        if targets.is_empty() {
            bail!("no herald target");
        }
        Ok(Herald {
            targets,
            token,
            pids,
            child: None,
            data_dir: None,
            _dir: None,
        })
    }

    /// The first target (the one the catch-up scenario and the probe use).
    pub fn first(&self) -> SocketAddr {
        self.targets[0]
    }

    /// Starts `herald serve` (this executable) on a temporary data directory and a
    /// free port, with an operator token, no command rate limit and stream and
    /// connection limits above any subscriber count.
    pub async fn spawn(exe: &Path) -> Result<Herald> {
        Herald::spawn_with(exe, |_| Vec::new()).await
    }

    /// [`Self::spawn`] with more `serve` arguments, made from the token.
    pub async fn spawn_with(exe: &Path, extra: impl FnOnce(&str) -> Vec<String>) -> Result<Herald> {
        let dir = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
        let data = dir.path().to_path_buf();
        let out = tokio::process::Command::new(exe)
            .arg("--data")
            .arg(&data)
            .args(["token", "create", "--name", "bench", "--role", "operator"])
            .env("RUST_LOG", "warn")
            .output()
            .await
            .context("cannot run `herald token create`")?;
        if !out.status.success() {
            bail!("herald token create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let (child, addr) = start_serve(exe, &data, &extra(&token)).await?;
        let pid = child.id();
        Ok(Herald {
            targets: vec![addr],
            token,
            pids: pid.into_iter().collect(),
            child: Some(child),
            data_dir: Some(data),
            _dir: Some(dir),
        })
    }

    /// Stops a spawned herald and starts it again on its data directory with
    /// `extra` arguments (another port).
    pub async fn restart_with(&mut self, exe: &Path, extra: &[String]) -> Result<()> {
        let data = self.data_dir.clone().context("only a spawned herald restarts")?;
        self.stop().await;
        let (child, addr) = start_serve(exe, &data, extra).await?;
        self.targets = vec![addr];
        self.pids = child.id().into_iter().collect();
        self.child = Some(child);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Some(pid) = child.id()
        {
            // SIGTERM for a clean shutdown, then wait a little.
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// `herald serve` on `data` and a free port, as the bench runs it, with
/// `extra` arguments; returns once it listens.
async fn start_serve(exe: &Path, data: &Path, extra: &[String]) -> Result<(tokio::process::Child, SocketAddr)> {
    let port = free_port()?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("serve.log"))?;
    let child = tokio::process::Command::new(exe)
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--stream-limit", "1000000", "--command-rate", "0"])
        // Every subscriber comes from 127.0.0.1: no per-address cap, and a
        // global one above any subscriber count.
        .args(["--max-connections", "1000000", "--max-connections-per-address", "0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `herald serve`")?;
    wait_listening(addr, Duration::from_secs(30))
        .await
        .with_context(|| format!("herald serve did not start; see {}", data.join("serve.log").display()))?;
    Ok((child, addr))
}

// ---------------------------------------------------------------- nchan

pub const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

pub struct Nchan {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    pub master_pid: u32,
    dir: tempfile::TempDir,
}

impl Nchan {
    /// Why Nchan cannot run here, if it cannot.
    pub fn missing() -> Option<String> {
        if !Path::new("/usr/sbin/nginx").exists() {
            return Some("/usr/sbin/nginx is absent (apt-get install nginx-light libnginx-mod-nchan)".into());
        }
        if !Path::new(NCHAN_MODULE).exists() {
            return Some(format!("{NCHAN_MODULE} is absent (apt-get install libnginx-mod-nchan)"));
        }
        None
    }

    pub async fn start(workers: usize) -> Result<Nchan> {
        if let Some(why) = Nchan::missing() {
            bail!("Nchan is not available: {why}");
        }
        let dir = tempfile::Builder::new().prefix("herald-bench-nchan-").tempdir()?;
        let p = dir.path().display().to_string();
        let port = free_port()?;
        let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let conf = format!(
            "load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {nofile}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  client_body_buffer_size 64k;
  nchan_shared_memory_size 256M;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /pub {{
      nchan_publisher;
      nchan_channel_id $arg_chan;
      nchan_message_buffer_length 1024;
      nchan_message_timeout 10m;
    }}
    location = /sub {{
      nchan_subscriber eventsource;
      nchan_channel_id $arg_chan;
      nchan_subscriber_first_message newest;
    }}
  }}
}}
"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf)?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let child = tokio::process::Command::new("/usr/sbin/nginx")
            .args(["-p", &p, "-c", "nginx.conf", "-e", &format!("{p}/error.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start nginx")?;
        let master_pid = child.id().context("nginx exited at once")?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        wait_listening(addr, Duration::from_secs(15)).await.with_context(|| {
            format!(
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            )
        })?;
        Ok(Nchan {
            addr,
            child,
            master_pid,
            dir,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.master_pid];
        pids.extend(children(self.master_pid));
        pids
    }

    pub async fn stop(mut self) {
        // SIGQUIT: graceful; then make sure.
        let _ = std::process::Command::new("kill")
            .args(["-QUIT", &self.master_pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        drop(self.dir);
    }
}

// ---------------------------------------------------------------- ceiling

/// The ceiling: SSE from a `tokio::sync::broadcast` of pre-encoded frames,
/// through axum/hyper like herald, in its own process (`herald bench
/// --serve-ceiling ADDR`) with the same runtime herald has.
pub struct Ceiling {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: tokio::process::Child,
}

impl Ceiling {
    pub async fn start(exe: &Path) -> Result<Ceiling> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
        let child = tokio::process::Command::new(exe)
            .args(["bench", "--serve-ceiling", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the ceiling server")?;
        let pid = child.id();
        wait_listening(addr, Duration::from_secs(15)).await?;
        Ok(Ceiling { addr, pid, child })
    }

    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Serves the ceiling on `addr` until stdin closes.
pub async fn serve_ceiling(addr: SocketAddr) -> Result<()> {
    let app = ceiling_app(CeilingState::new());
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf)
            .await
            .is_ok_and(|n| n > 0)
        {}
    };
    // Not a graceful shutdown: open SSE streams would keep it waiting.
    tokio::select! {
        r = axum::serve(listener, app) => r?,
        _ = stdin_closed => {}
    }
    Ok(())
}

/// The ceiling's routes (`GET /sub`, `POST /pub`). Routers made from clones of
/// one state serve one broadcast: a message published on one is sent to the
/// subscribers of all (the tests use that for several targets).
pub fn ceiling_app(state: CeilingState) -> axum::Router {
    axum::Router::new()
        .route("/sub", axum::routing::get(ceiling_sub))
        .route("/pub", axum::routing::post(ceiling_pub))
        .with_state(state)
}

#[derive(Clone)]
pub struct CeilingState {
    tx: broadcast::Sender<Bytes>,
    /// The last id; held while sending so that ids go out in order.
    seq: Arc<std::sync::Mutex<u64>>,
}

impl CeilingState {
    pub fn new() -> CeilingState {
        let (tx, _) = broadcast::channel(1024);
        CeilingState {
            tx,
            seq: Arc::new(std::sync::Mutex::new(0)),
        }
    }
}

impl Default for CeilingState {
    fn default() -> Self {
        CeilingState::new()
    }
}

async fn ceiling_sub(axum::extract::State(s): axum::extract::State<CeilingState>) -> Response {
    let rx = s.tx.subscribe();
    let first = futures_util::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"retry: 3000\n\n")) });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(b) => Some((Ok::<_, Infallible>(b), rx)),
            // Too far behind (or closed): end the stream, like herald.
            Err(_) => None,
        }
    });
    let mut r = Response::new(Body::from_stream(futures_util::StreamExt::chain(first, rest)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn ceiling_pub(axum::extract::State(s): axum::extract::State<CeilingState>, body: Bytes) -> StatusCode {
    let mut seq = s.seq.lock().unwrap_or_else(|p| p.into_inner());
    *seq += 1;
    let mut frame = Vec::with_capacity(body.len() + 32);
    frame.extend_from_slice(format!("id: {}\nevent: m\ndata: ", *seq).as_bytes());
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"\n\n");
    let _ = s.tx.send(Bytes::from(frame));
    drop(seq);
    StatusCode::ACCEPTED
}

/// A request a subscriber sends.
pub fn subscribe_request(kind: crate::Kind, addr: SocketAddr, token: Option<&str>, channel: &str) -> Vec<u8> {
    let host = addr.to_string();
    match kind {
        crate::Kind::Herald => http::get(&host, "/api/events/live", token, "Accept: text/event-stream\r\n"),
        crate::Kind::Nchan => http::get(
            &host,
            &format!("/sub?chan={channel}"),
            None,
            "Accept: text/event-stream\r\n",
        ),
        crate::Kind::Ceiling => http::get(&host, "/sub", None, "Accept: text/event-stream\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn parses_a_list_of_targets() {
        let addrs = parse_targets(&list(
            "http://127.0.0.1:18081, http://localhost:18082/,http://127.0.0.1:18083",
        ))
        .expect("three targets");
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:18081".parse::<SocketAddr>().expect("addr"),
                "127.0.0.1:18082".parse().expect("addr"),
                "127.0.0.1:18083".parse().expect("addr"),
            ]
        );
        // One is a list of one.
        assert_eq!(parse_targets(&list("http://127.0.0.1:8080")).expect("one").len(), 1);
    }

    #[test]
    fn refuses_bad_target_lists() {
        let err = |s: &str| format!("{:#}", parse_targets(&list(s)).expect_err(s));
        assert!(err("http://127.0.0.1:1,,http://127.0.0.1:2").contains("an empty entry"));
        assert!(err("").contains("an empty entry"));
        assert!(err("http://127.0.0.1:1,http://localhost:1").contains("listed twice"));
        assert!(err("http://127.0.0.1:1,https://127.0.0.1:2").contains("only http://"));
        assert!(err("http://127.0.0.1:1,http://10.0.0.1:2").contains("loopback"));
        assert!(err("http://127.0.0.1").contains("expected http://127.0.0.1:PORT"));
        assert!(
            format!("{:#}", parse_targets(&[]).expect_err("none")).contains("no URL"),
            "an empty list"
        );
    }

    #[test]
    fn round_robin_spreads_clients_evenly() {
        assert_eq!(
            (0..7).map(|i| assigned(i, 3)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(spread(7, 3), vec![3, 2, 2]);
        assert_eq!(spread(45_000, 3), vec![15_000; 3]);
        assert_eq!(spread(2, 3), vec![1, 1, 0]);
        assert_eq!(spread(64, 1), vec![64]);
        for (clients, targets) in [(0, 2), (1, 1), (63, 2), (64, 3), (1000, 7)] {
            let counts = spread(clients, targets);
            assert_eq!(counts.len(), targets);
            assert_eq!(counts.iter().sum::<usize>(), clients);
            let (lo, hi) = (counts.iter().min(), counts.iter().max());
            assert!(
                hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                "{clients} over {targets}: {counts:?}"
            );
        }
        // No target is never a division by zero: everything on one.
        assert_eq!(assigned(5, 0), 0);
    }
}
