//! Child processes of the bed: each one tracked by PID, logged to a file, stopped
//! on drop (also on panic), and killed by the kernel if the bed's thread dies
//! (`setpriv --pdeathsig KILL`), so no process is ever left behind.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program args` with its output in `logs/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(&str, String)], logs: &Path) -> Result<Proc> {
        Proc::spawn_with_deathsig(name, program, args, env, logs, "KILL")
    }

    /// Like [`Proc::spawn`], with `signal` sent by the kernel when the bed dies
    /// (TERM for a process that must clean up after it).
    pub fn spawn_with_deathsig(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        logs: &Path,
        signal: &str,
    ) -> Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new("setpriv");
        cmd.arg("--pdeathsig").arg(signal).arg("--").arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let child = spawn_on_keeper(cmd).with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Proc { name: name.to_owned(), log, child: Some(child) })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails when the process has already exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited early ({status}); end of {}:\n{}", self.name, self.log.display(), tail(&self.log, 30));
        }
        Ok(())
    }

    /// Waits for the process to exit by itself (after a signal the test sent).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(child.id() as i32);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// The kernel sends `--pdeathsig` when the *thread* that forked the child ends, so
/// every child is forked by one thread that lives as long as the process: a test
/// thread ending does not kill what it started, the process dying does.
fn spawn_on_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("keyhole-bed-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread (and so the children) alive until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the keeper thread");
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    keeper.lock().expect("keeper lock").send((cmd, reply_tx)).map_err(std::io::Error::other)?;
    reply_rx.recv().map_err(std::io::Error::other)?
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free port on 127.0.0.1; with `pair`, `port + 1` is free too (OpenBao binds both).
pub fn free_port(pair: bool) -> Result<u16> {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !pair || (port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no free port pair on 127.0.0.1")
}

/// Polls `probe` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(25);
    loop {
        if probe().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
