//! The PostgreSQL reference beside the commands figure: the `pgbench` binary
//! inserting one row with a 500-byte text value per transaction into a scratch
//! table (created for the run, dropped after it), with the clients and the
//! duration of the commands scenario, on the server herald's instances use.
//! What it measures is PostgreSQL's durable commits per second on this
//! machine; the server's `fsync` and `synchronous_commit` are reported with it.
//!
//! The URL may hold a password: it is shown as `host:port/db` only, and handed
//! to `pgbench` in its environment (`PGPASSWORD`), never on its command line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use herald_postgres::{describe_config, with_causes};
use serde::Serialize;
use tokio_postgres::NoTls;
use tokio_postgres::config::{Host, SslMode};

/// Bytes of the text value each inserted row carries.
pub const ROW_BYTES: usize = 500;

/// The `pgbench` binary: the first on `PATH`, else the newest under
/// /usr/lib/postgresql/*/bin (Debian's postgresql-contrib / postgresql-client).
pub fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| newest_versioned(Path::new("/usr/lib/postgresql")))
}

/// `<root>/<N>/bin/pgbench` for the highest numeric `N` that has one.
fn newest_versioned(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let exe = e.path().join("bin/pgbench");
            exe.is_file().then_some((version, exe))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, exe)| exe)
}

/// What one `pgbench` run printed that the bench reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
    pub latency_avg_ms: Option<f64>,
}

/// Parses `pgbench`'s summary (PostgreSQL 15's format, and the older one with
/// `tps = … (excluding connections establishing)`).
pub fn parse_output(out: &str) -> Result<Output> {
    let mut tps_any = None;
    let mut tps_without_connect = None;
    let mut transactions = None;
    let mut failed = 0;
    let mut latency_avg_ms = None;
    let number = |text: &str, what: &str| -> Result<f64> {
        let word = text.split_whitespace().next().unwrap_or_default();
        word.parse::<f64>()
            .with_context(|| format!("pgbench printed {what} {text:?}, not a number"))
    };
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let tps = number(rest, "tps =")?;
            tps_any.get_or_insert(tps);
            if rest.contains("without initial connection time") || rest.contains("excluding connections") {
                tps_without_connect = Some(tps);
            }
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // `N`, or `N/M` with -t.
            let n = rest.trim().split('/').next().unwrap_or_default();
            transactions = Some(
                n.parse::<u64>()
                    .with_context(|| format!("pgbench printed transactions {rest:?}, not a number"))?,
            );
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = number(rest, "failed transactions")? as u64;
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_avg_ms = Some(number(rest, "latency average =")?);
        }
    }
    let Some(tps) = tps_without_connect.or(tps_any) else {
        bail!("pgbench printed no `tps = …` line:\n{}", out.trim());
    };
    Ok(Output {
        tps,
        transactions: transactions.context("pgbench printed no `number of transactions actually processed`")?,
        failed,
        latency_avg_ms,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct PgbenchResult {
    /// `host:port/db` (never the password).
    pub server: String,
    pub server_version: String,
    /// The server's `SHOW fsync` and `SHOW synchronous_commit`.
    pub fsync: String,
    pub synchronous_commit: String,
    pub pgbench_version: String,
    pub table: String,
    pub row_bytes: usize,
    pub clients: usize,
    pub threads: usize,
    /// pgbench's `-T`.
    pub seconds: u64,
    /// Rows the table gained during the run (a check that the inserts happened).
    pub rows_inserted: i64,
    #[serde(flatten)]
    pub output: Output,
}

/// A scratch table on the server of `--pgbench-url`, and `pgbench` to fill it.
pub struct Reference {
    config: tokio_postgres::Config,
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
    exe: PathBuf,
    pub pgbench_version: String,
    pub table: String,
    script: tempfile::NamedTempFile,
    pub server: String,
    pub server_version: String,
    pub fsync: String,
    pub synchronous_commit: String,
    /// Connections the server admits to a role without superuser rights
    /// (`max_connections` − `superuser_reserved_connections`) and to a superuser.
    max_connections: i64,
    reserved_connections: i64,
}

async fn show(client: &tokio_postgres::Client, setting: &str) -> Result<String> {
    let row = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .map_err(|e| anyhow::anyhow!("SHOW {setting}: {}", with_causes(&e)))?;
    row.try_get::<_, String>(0)
        .map_err(|e| anyhow::anyhow!("SHOW {setting}: {}", with_causes(&e)))
}

impl Reference {
    /// Connects, reads the durability settings and creates the table
    /// `herald_bench_<run>` (`run`: this bench run's id, [a-z0-9]).
    pub async fn open(url: &str, exe: &Path, run: &str) -> Result<Reference> {
        if run.is_empty() || !run.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            bail!("bench run id {run:?} is not a plain [a-z0-9] name");
        }
        // The parse error of tokio-postgres does not quote the URL.
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--pgbench-url is not a PostgreSQL URL: {}", with_causes(&e)))?;
        let server = describe_config(&config);
        let (client, connection) = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("--pgbench-url {server}: no answer within 10 s"))?
            .map_err(|e| anyhow::anyhow!("--pgbench-url {server}: {}", with_causes(&e)))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let version = tokio::process::Command::new(exe)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("cannot run {}", exe.display()))?;
        let pgbench_version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let server_version = show(&client, "server_version").await?;
        let fsync = show(&client, "fsync").await?;
        let synchronous_commit = show(&client, "synchronous_commit").await?;
        let setting = |name: &'static str, text: String| -> Result<i64> {
            text.parse()
                .with_context(|| format!("{server}: SHOW {name} is {text:?}, not a number"))
        };
        let max_connections = setting("max_connections", show(&client, "max_connections").await?)?;
        let reserved_connections = setting(
            "superuser_reserved_connections",
            show(&client, "superuser_reserved_connections").await?,
        )?;
        let table = format!("herald_bench_{run}");
        let mut script = tempfile::Builder::new()
            .prefix("herald-bench-pgbench-")
            .suffix(".sql")
            .tempfile()?;
        std::io::Write::write_all(&mut script, insert_statement(&table).as_bytes())?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text NOT NULL)"
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{server}: CREATE TABLE {table}: {}", with_causes(&e)))?;
        Ok(Reference {
            config,
            client,
            driver,
            exe: exe.to_owned(),
            pgbench_version,
            table,
            script,
            server,
            server_version,
            fsync,
            synchronous_commit,
            max_connections,
            reserved_connections,
        })
    }

    /// Refuses a run whose clients cannot all connect (pgbench would fail
    /// part-way with "too many clients"): the connections open now (herald's
    /// instances hold some), this one, and `clients` more must fit.
    async fn check_connections(&self, clients: usize) -> Result<()> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: counting connections: {}", self.server, with_causes(&e)))?;
        let in_use: i64 = row
            .try_get(0)
            .map_err(|e| anyhow::anyhow!("{}: counting connections: {}", self.server, with_causes(&e)))?;
        let superuser: Option<bool> = row
            .try_get(1)
            .map_err(|e| anyhow::anyhow!("{}: counting connections: {}", self.server, with_causes(&e)))?;
        let allowed = if superuser.unwrap_or(false) {
            self.max_connections
        } else {
            self.max_connections - self.reserved_connections
        };
        if in_use + clients as i64 > allowed {
            bail!(
                "pgbench with {clients} clients needs {clients} connections to {}: it admits {allowed} \
                 (max_connections {}) and {in_use} are open (herald's instances and this bench among them); \
                 fewer --clients, fewer instances during the run, or a higher max_connections",
                self.server,
                self.max_connections
            );
        }
        Ok(())
    }

    async fn rows(&self) -> Result<i64> {
        let row = self
            .client
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .map_err(|e| anyhow::anyhow!("{}: counting rows: {}", self.server, with_causes(&e)))?;
        row.try_get::<_, i64>(0)
            .map_err(|e| anyhow::anyhow!("{}: counting rows: {}", self.server, with_causes(&e)))
    }

    /// `pgbench -n -c <clients> -j <≤ 2> -T <seconds> -f <script>`.
    pub async fn run(&self, clients: usize, duration: Duration) -> Result<PgbenchResult> {
        let clients = clients.max(1);
        let threads = clients.min(2);
        let seconds = duration.as_secs_f64().ceil().max(1.0) as u64;
        self.check_connections(clients).await?;
        let before = self.rows().await?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(["-n", "-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &seconds.to_string(), "-f"])
            .arg(self.script.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        connection_env(&mut cmd, &self.config);
        let out = tokio::time::timeout(duration + Duration::from_secs(60), cmd.output())
            .await
            .map_err(|_| anyhow::anyhow!("pgbench did not finish within {seconds} s + 60 s"))?
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench ({}) failed ({}): {}{}",
                self.server,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        let output = parse_output(&stdout)?;
        let after = self.rows().await?;
        Ok(PgbenchResult {
            server: self.server.clone(),
            server_version: self.server_version.clone(),
            fsync: self.fsync.clone(),
            synchronous_commit: self.synchronous_commit.clone(),
            pgbench_version: self.pgbench_version.clone(),
            table: self.table.clone(),
            row_bytes: ROW_BYTES,
            clients,
            threads,
            seconds,
            rows_inserted: after - before,
            output,
        })
    }

    /// Drops the table.
    pub async fn close(self) -> Result<()> {
        let dropped = self
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await
            .map_err(|e| anyhow::anyhow!("{}: DROP TABLE {}: {}", self.server, self.table, with_causes(&e)));
        drop(self.client);
        let _ = self.driver.await;
        dropped
    }
}

/// The script: one INSERT of a [`ROW_BYTES`]-byte literal.
fn insert_statement(table: &str) -> String {
    format!("INSERT INTO {table} (payload) VALUES ('{}');\n", "x".repeat(ROW_BYTES))
}

/// libpq's environment for `config`'s first host (the password too: not on
/// the command line, where `ps` would show it).
fn connection_env(cmd: &mut tokio::process::Command, config: &tokio_postgres::Config) {
    // Nothing inherited may point it elsewhere.
    for var in ["PGSERVICE", "PGSERVICEFILE", "PGHOSTADDR", "PGPASSFILE"] {
        cmd.env_remove(var);
    }
    match config.get_hosts().first() {
        Some(Host::Tcp(name)) => {
            cmd.env("PGHOST", name);
        }
        Some(Host::Unix(path)) => {
            cmd.env("PGHOST", path);
        }
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        cmd.env("PGPORT", port.to_string());
    }
    if let Some(user) = config.get_user() {
        cmd.env("PGUSER", user);
    }
    match config.get_password() {
        Some(password) => cmd.env("PGPASSWORD", OsStr::from_bytes(password)),
        None => cmd.env_remove("PGPASSWORD"),
    };
    if let Some(db) = config.get_dbname() {
        cmd.env("PGDATABASE", db);
    }
    let sslmode = match config.get_ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    cmd.env("PGSSLMODE", sslmode);
    cmd.env("PGAPPNAME", "herald-bench-pgbench");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pgbench -n -c 2 -j 2 -T 1 -f insert.sql` of PostgreSQL 15.20 (Debian).
    const PG15: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/hb_sample.sql
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 2
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 258
number of failed transactions: 0 (0.000%)
latency average = 7.678 ms
initial connection time = 23.786 ms
tps = 260.498967 (without initial connection time)
";

    /// The summary of PostgreSQL 13 and before.
    const PG13: &str = "transaction type: insert.sql
scaling factor: 1
query mode: simple
number of clients: 64
number of threads: 2
duration: 8 s
number of transactions actually processed: 12000
latency average = 42.667 ms
tps = 1480.5 (including connections establishing)
tps = 1500.25 (excluding connections establishing)
";

    #[test]
    fn parses_pgbench_15() {
        assert_eq!(
            parse_output(PG15).expect("parses"),
            Output {
                tps: 260.498967,
                transactions: 258,
                failed: 0,
                latency_avg_ms: Some(7.678),
            }
        );
    }

    #[test]
    fn parses_older_pgbench_without_connections() {
        let out = parse_output(PG13).expect("parses");
        assert_eq!(out.tps, 1500.25);
        assert_eq!(out.transactions, 12000);
        assert_eq!(out.failed, 0);
    }

    #[test]
    fn counts_failed_transactions() {
        let out = parse_output(&PG15.replace(
            "number of failed transactions: 0 (0.000%)",
            "number of failed transactions: 7 (2.641%)",
        ))
        .expect("parses");
        assert_eq!(out.failed, 7);
    }

    #[test]
    fn refuses_output_without_tps() {
        let err = parse_output("pgbench: error: connection to server failed\n").expect_err("no tps");
        assert!(err.to_string().contains("no `tps = …` line"), "{err}");
        let err = parse_output("tps = fast (without initial connection time)\n").expect_err("not a number");
        assert!(err.to_string().contains("not a number"), "{err}");
        let err = parse_output("tps = 5.0 (without initial connection time)\n").expect_err("no transactions");
        assert!(err.to_string().contains("transactions actually processed"), "{err}");
    }

    #[test]
    fn the_script_inserts_a_500_byte_value() {
        let sql = insert_statement("herald_bench_x");
        let value = sql.split('\'').nth(1).expect("a quoted literal");
        assert_eq!(value.len(), ROW_BYTES);
        assert!(sql.starts_with("INSERT INTO herald_bench_x (payload) VALUES ('"));
    }

    #[test]
    fn finds_the_newest_versioned_binary() {
        let root = tempfile::tempdir().expect("tempdir");
        for v in ["13", "15", "9", "notaversion"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).expect("mkdir");
            std::fs::write(root.path().join(v).join("bin/pgbench"), "").expect("write");
        }
        // 16 has no pgbench.
        std::fs::create_dir_all(root.path().join("16/bin")).expect("mkdir");
        assert_eq!(newest_versioned(root.path()), Some(root.path().join("15/bin/pgbench")));
        assert_eq!(newest_versioned(&root.path().join("absent")), None);
    }

    #[test]
    fn the_password_goes_to_the_environment_only() {
        let config: tokio_postgres::Config = "postgres://bench:s3cret@127.0.0.1:5433/herald".parse().expect("url");
        let mut cmd = tokio::process::Command::new("pgbench");
        connection_env(&mut cmd, &config);
        let envs: Vec<(String, Option<String>)> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let get = |k: &str| envs.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
        assert_eq!(get("PGHOST").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("PGPORT").as_deref(), Some("5433"));
        assert_eq!(get("PGUSER").as_deref(), Some("bench"));
        assert_eq!(get("PGPASSWORD").as_deref(), Some("s3cret"));
        assert_eq!(get("PGDATABASE").as_deref(), Some("herald"));
        assert!(cmd.as_std().get_args().all(|a| !a.to_string_lossy().contains("s3cret")));
        assert_eq!(describe_config(&config), "127.0.0.1:5433/herald");
    }
}
