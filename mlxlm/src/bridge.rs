//! The Python process and its JSON-lines channel.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{python_command, Error, Result};

const SCRIPT: &str = include_str!("bridge.py");
const STDERR_LINES: usize = 40;

/// A running bridge process. Dropping it closes the channel, waits briefly
/// for a clean exit, then kills and reaps the process.
pub(crate) struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines of stdout, read by a thread so that waiting can be bounded;
    /// the channel closes when the pipe does.
    stdout: Receiver<std::io::Result<String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// How a process ended, in words: its exit status or the signal that
/// killed it.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code} and no message"),
        None => "ended with no status".into(),
    }
}

impl Bridge {
    /// Starts the bridge and waits for its ready line.
    pub(crate) fn start() -> Result<Bridge> {
        let python = python_command();
        let mut command = Command::new(&python);
        #[cfg(unix)]
        {
            // Its own process group: a terminal's Ctrl-C goes to the Rust
            // program, which cancels through the protocol.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .args(["-u", "-c", SCRIPT])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                python: python.clone(),
                source,
            })?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                let mut lines = sink.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == STDERR_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    break;
                }
            }
        });
        let mut bridge = Bridge {
            stdin: child.stdin.take(),
            stdout: rx,
            child,
            stderr,
        };
        let ready = bridge.recv()?;
        if ready.get("ready").and_then(Value::as_bool) != Some(true) {
            return Err(bridge.protocol(&ready.to_string(), "expected the ready line"));
        }
        Ok(bridge)
    }

    /// The process id (for diagnostics and tests).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one request.
    pub(crate) fn send(&mut self, request: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Died {
            status: String::new(),
            stderr: "(channel already closed)".into(),
        })?;
        let line = serde_json::to_string(request).expect("JSON values serialise");
        let sent = writeln!(stdin, "{line}").and_then(|_| stdin.flush());
        if sent.is_err() {
            return Err(self.died());
        }
        Ok(())
    }

    /// Reads one reply; a closed pipe or a line that is not a JSON object is
    /// an error carrying the end of stderr.
    pub(crate) fn recv(&mut self) -> Result<Value> {
        match self.stdout.recv() {
            Ok(Ok(line)) => self.parse(line),
            Ok(Err(_)) | Err(_) => Err(self.died()),
        }
    }

    /// [`recv`](Self::recv), waiting at most `timeout`: `None` when no
    /// reply came in time.
    pub(crate) fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Value>> {
        match self.stdout.recv_timeout(timeout) {
            Ok(Ok(line)) => self.parse(line).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    fn parse(&mut self, line: String) -> Result<Value> {
        match serde_json::from_str::<Value>(line.trim_end()) {
            Ok(v) if v.is_object() => {
                if let Some(msg) = v.get("error").and_then(Value::as_str) {
                    return Err(Error::Python {
                        message: msg.to_string(),
                    });
                }
                Ok(v)
            }
            Ok(_) => Err(self.protocol(&line, "not a JSON object")),
            Err(e) => Err(self.protocol(&line, &e.to_string())),
        }
    }

    fn stderr_tail(&self) -> String {
        // Give the stderr reader a moment to collect the final lines.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            "(no output)".into()
        } else {
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }

    fn died(&mut self) -> Error {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut status = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = format!(" ({})", describe_exit(s));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stdin = None;
        Error::Died {
            status,
            stderr: self.stderr_tail(),
        }
    }

    fn protocol(&self, line: &str, problem: &str) -> Error {
        Error::Protocol {
            line: line.trim_end().chars().take(200).collect(),
            problem: problem.to_string(),
            stderr: self.stderr_tail(),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{{\"op\":\"close\"}}");
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
