//! Running commands with a timeout (nothing in the harness may hang forever).
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a command did.
#[derive(Debug, Clone, Default)]
pub struct Out {
    /// The command line, for messages.
    pub cmd: String,
    /// Exit code; None when it could not start, was killed by a signal, or timed out.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Out {
    /// Exit code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-paragraph account for panic messages.
    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            "timed out".to_string()
        } else {
            match self.code {
                Some(c) => format!("exit {c}"),
                None => "no exit code".to_string(),
            }
        };
        format!(
            "`{}`: {how}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn describe_cmd(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs `cmd` (stdin closed, output captured), killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let mut out = Out {
        cmd: describe_cmd(cmd),
        ..Out::default()
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            out.stderr = format!("cannot start: {e}");
            return out;
        }
    };
    let so = reader(child.stdout.take().unwrap());
    let se = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                out.code = status.code();
                break;
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                out.timed_out = true;
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                out.stderr = format!("wait failed: {e}");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    // A grandchild may still hold the pipes open: do not wait for it for long.
    out.stdout = so.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    out.stderr
        .push_str(&se.recv_timeout(Duration::from_secs(2)).unwrap_or_default());
    out
}

/// `sh -c script` with a timeout.
pub fn sh(script: &str, timeout: Duration) -> Out {
    run(Command::new("sh").args(["-c", script]), timeout)
}

/// Runs an `ip`-style command that must succeed; panics with its output otherwise.
pub fn must(args: &[&str]) -> String {
    let o = run(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(30),
    );
    assert!(o.ok(), "{}", o.describe());
    o.stdout
}

/// Runs a command whose failure is fine (cleanup); returns whether it succeeded.
pub fn quiet(args: &[&str]) -> bool {
    run(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(30),
    )
    .ok()
}
