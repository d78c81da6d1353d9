//! Helpers for the integration tests: where the built binaries and the test models are.
//!
//! The binaries are the ones `cargo build --workspace` leaves next to the test executable
//! (scripts/test.sh builds them first). The models are the ones scripts/setup.sh converts
//! into `.deps/models/opta` (override with `OPTA_LMX_TEST_MODELS`).

use std::path::{Path, PathBuf};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A binary built by this workspace, e.g. `opta-lmx-worker`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A test model folder by name, e.g. `SmolLM2-135M-Instruct-4bit`.
pub fn model(name: &str) -> PathBuf {
    let root = std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".deps/models/opta"));
    let path = root.join(name);
    assert!(
        path.join("config.json").exists(),
        "test model {} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// Writes `dir/worker.sh`, a script that execs `opta-lmx-fake-worker` with `flags` before the
/// arguments it is given (so its pid is the fake's own), and returns its path: a worker
/// binary to hand the manager or the daemon (`OPTA_LMX_WORKER`).
pub fn fake_worker_script(dir: &Path, flags: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("worker.sh");
    let script = format!(
        "#!/bin/sh\nexec '{}' {flags} \"$@\"\n",
        binary("opta-lmx-fake-worker").display()
    );
    std::fs::write(&path, script).expect("write the fake worker's script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs `cmd` to its end: whether it succeeded, its stdout and its stderr.
pub fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `opta-lmx serve` prints on stderr when it refuses to start with `config` (YAML); it
/// must refuse.
pub fn refused_config(config: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config).expect("config");
    let (ok, _, err) = run(std::process::Command::new(binary("opta-lmx"))
        .args(["serve", "--port", "1", "--config"])
        .arg(&path));
    assert!(!ok, "started with {config:?}");
    err
}

/// A raw HTTP/1.1 response as its status code (0 if there is none), its head and its body.
pub fn split_response(raw: &str) -> (u16, &str, &str) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, body)
}

/// The element of the JSON array `list` whose `key` is `value` (a model in a listing).
pub fn entry_where(list: &serde_json::Value, key: &str, value: &str) -> serde_json::Value {
    list.as_array()
        .and_then(|items| items.iter().find(|m| m[key] == value))
        .unwrap_or_else(|| panic!("no element with {key} = {value} in {list}"))
        .clone()
}

/// A running `opta-lmx serve` on a free loopback port, stopped (SIGTERM, then SIGKILL) and
/// reaped when dropped.
pub struct Daemon {
    pub port: u16,
    pub child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with `config` (YAML) and the test models folder, and waits until
    /// `/admin/health` answers.
    pub fn start(config: &str) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// As [`Daemon::start`], with extra environment variables for the daemon (they override
    /// the defaults, such as `HF_HUB_CACHE`).
    pub fn start_with_env(config: &str, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let models = model("tiny-random-llama")
            .parent()
            .and_then(Path::parent)
            .expect("models root")
            .to_path_buf();
        Daemon::spawn(config, env, &models)
    }

    /// As [`Daemon::start`], serving the models folder `models` instead of the test models.
    pub fn start_with_models(config: &str, models: &Path) -> Daemon {
        Daemon::spawn(config, &[], models)
    }

    /// A daemon with config text `config`, extra environment `env` and the models folder
    /// `models`.
    pub fn spawn(config: &str, env: &[(&str, &std::ffi::OsStr)], models: &Path) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, config).expect("write config");
        let port = free_port();
        let child = std::process::Command::new(binary("opta-lmx"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(["--port", &port.to_string()])
            .arg("--models-dir")
            .arg(models)
            .env("OPTA_LMX_WORKER", binary("opta-lmx-worker"))
            .env("HF_HUB_CACHE", dir.path().join("no-hf-cache"))
            // A fresh prompt cache on disk per daemon: nothing carries over between tests.
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn opta-lmx");
        let daemon = Daemon {
            port,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok((200, _)) = daemon.try_request("GET", "/admin/health", None) {
                return daemon;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("opta-lmx did not come up on port {port}");
    }

    /// One HTTP request; the status and the raw body.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        http(self.port, method, path, body, "application/json")
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request whose answer must be JSON.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let text = body.map(|b| b.to_string());
        let (code, raw) = self.request(method, path, text.as_deref());
        let value = serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("{method} {path} answered non-JSON ({e}): {raw}"));
        (code, value)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.json("GET", path, None)
    }

    /// The model's entry in `/admin/status` (`Null` when it is not listed).
    pub fn worker_status(&self, model: &str) -> serde_json::Value {
        let (_, status) = self.get("/admin/status");
        status["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["model_id"] == model).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The pid of `model`'s worker, if it has one.
    pub fn worker_pid(&self, model: &str) -> Option<u32> {
        self.worker_status(model)["pid"].as_u64().map(|p| p as u32)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.json("POST", path, Some(body))
    }

    /// The `data:` payloads of a streamed response, in order.
    pub fn stream(&self, path: &str, body: &serde_json::Value) -> (u16, Vec<String>) {
        let (code, raw) = self.request("POST", path, Some(&body.to_string()));
        let events = raw
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
            .collect();
        (code, events)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM lets the daemon stop its workers; SIGKILL if it does not exit in time.
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A minimal HTTP/1.1 exchange (Connection: close), de-chunking the body if needed.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> std::io::Result<(u16, String)> {
    http_with_head(port, method, path, body, content_type).map(|(code, _, body)| (code, body))
}

/// As [`http`], also returning the response's head (status line and headers) as text.
pub fn http_with_head(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))?;
    let body = body.unwrap_or("");
    let sent = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    // A server that refuses a huge body (413) may answer and close before the body is all
    // written: the answer still counts when it arrived.
    if raw.is_empty() {
        sent?;
        read?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (code, head, rest) = split_response(&text);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        head.to_string(),
        if chunked {
            opta_lmx::client::dechunk(rest)
        } else {
            rest.to_string()
        },
    ))
}

/// Streams a POST's SSE events as they arrive, calling `on_event` with each `data:` payload
/// until it returns false or the stream ends. Returns the status code and whether the
/// stream ended by itself.
pub fn stream_events(
    port: u16,
    path: &str,
    body: &serde_json::Value,
    mut on_event: impl FnMut(&str) -> bool,
) -> std::io::Result<(u16, bool)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        chunked |= line
            .to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked");
    }
    let mut pending = String::new();
    loop {
        let piece = if chunked {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok((code, true));
            }
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                return Ok((code, true));
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n);
            buf
        } else {
            let mut buf = vec![0; 4096];
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok((code, true));
            }
            buf.truncate(n);
            buf
        };
        pending.push_str(&String::from_utf8_lossy(&piece));
        while let Some(at) = pending.find("\n\n") {
            let event: String = pending.drain(..at + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                if !on_event(data) {
                    return Ok((code, false));
                }
            }
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // Field 3 is the state; after the ")" that ends the command name.
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Sends a signal by name (`KILL`, `STOP`, `CONT`, `TERM`) with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}
