//! A PostgreSQL server of the test's own: `initdb` in a temporary directory as the `postgres`
//! user, a Unix socket in that directory only (no TCP), trust authentication (nothing but this
//! machine's root and postgres can reach the directory), stopped and removed on drop.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    /// The database the agents use.
    pub db: String,
    running: bool,
    /// With [`Postgres::start_tls`]: the loopback port it also listens on, TLS only.
    tls_port: Option<u16>,
}

/// The newest PostgreSQL server installed (Debian: /usr/lib/postgresql/<major>/bin).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server installed (package postgresql; `cargo xtask setup`)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort();
    let major = majors.last().context("no PostgreSQL server under /usr/lib/postgresql")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")))
}

/// Runs `cmd` as the `postgres` user (the server refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

impl Postgres {
    /// Creates a cluster in a new directory named after `tag`, starts it, and creates the
    /// database `netboot`.
    pub fn start(tag: &str) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("nbx-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        checked(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        let mut pg = Postgres { dir, bin, db: "netboot".into(), running: false, tls_port: None };
        checked(
            as_postgres(&pg.bin.join("initdb"))
                .args(["-D"])
                .arg(pg.data())
                .args(["-U", "netboot", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
        )?;
        pg.start_again()?;
        checked(as_postgres(&pg.bin.join("createdb")).args(["-h"]).arg(&pg.dir).args(["-U", "netboot", "netboot"]))?;
        Ok(pg)
    }

    /// As [`Postgres::start`], and also listening on a free port of 127.0.0.1 for TLS
    /// connections only (`hostssl`; a plain TCP connection is refused), with the server
    /// certificate and key of `pki` (see [`crate::pki`]).
    pub fn start_tls(tag: &str, pki: &crate::pki::Pki) -> anyhow::Result<Postgres> {
        let mut pg = Postgres::start(tag)?;
        pg.stop_immediate()?;
        for (from, to) in [(&pki.server_cert, "server.crt"), (&pki.server_key, "server.key")] {
            std::fs::copy(from, pg.data().join(to))?;
            checked(Command::new("chown").arg("postgres:postgres").arg(pg.data().join(to)))?;
            checked(Command::new("chmod").arg("600").arg(pg.data().join(to)))?;
        }
        std::fs::write(pg.data().join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")?;
        pg.tls_port = Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
        pg.start_again()?;
        Ok(pg)
    }

    /// The TLS port of [`Postgres::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The libpq URL of the database, as `[cluster] store` takes it.
    pub fn url(&self) -> String {
        format!("postgresql://netboot@/{}?host={}&port={}", self.db, self.dir.display(), self.tls_port.unwrap_or(5432))
    }

    /// The directory of the server's Unix socket (libpq's `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Creates database `name` (for a peer sharing this server, e.g. Kea).
    pub fn create_db(&self, name: &str) -> anyhow::Result<()> {
        checked(as_postgres(&self.bin.join("createdb")).args(["-h"]).arg(&self.dir).args(["-U", "netboot", name]))?;
        Ok(())
    }

    /// Starts the server (again, after [`Postgres::stop_immediate`]); waits until it accepts.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let listen = match self.tls_port {
            Some(port) => format!("-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on"),
            None => "-c listen_addresses=''".to_string(),
        };
        let opts = format!("{listen} -c unix_socket_directories='{}' -c fsync=off -c max_connections=200", self.dir.display());
        checked(
            as_postgres(&self.bin.join("pg_ctl"))
                .args(["-D"])
                .arg(self.data())
                .args(["-l"])
                .arg(self.dir.join("log"))
                .args(["-o", &opts, "-w", "-t", "30", "start"]),
        )?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server is gone at once, as in a crash.
    pub fn stop_immediate(&mut self) -> anyhow::Result<()> {
        checked(as_postgres(&self.bin.join("pg_ctl")).args(["-D"]).arg(self.data()).args(["-m", "immediate", "-w", "stop"]))?;
        self.running = false;
        Ok(())
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = checked(&mut self.psql(sql))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The psql command that runs `sql` (for a session a test holds open: spawn it).
    pub fn psql(&self, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-h"])
            .arg(&self.dir)
            .args(["-p", &self.tls_port.unwrap_or(5432).to_string()])
            .args(["-U", "netboot", "-d", &self.db, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        c
    }

    /// The server's log, for a failing test.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop_immediate();
        }
        if std::thread::panicking() {
            eprintln!("PostgreSQL log kept: {}", self.dir.join("log").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
