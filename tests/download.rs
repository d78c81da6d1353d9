//! `models.allow_download`: a model found neither in the models folder nor in the Hugging Face
//! cache is downloaded with hf-hub, from a fake Hugging Face endpoint started here (no
//! internet), into a temporary HF_HOME, then loaded by the real worker and asked something.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use opta_lmx_tests::Daemon;
use serde_json::{json, Value};

const REPO: &str = "someone/tiny-random-llama";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request the fake Hub saw: method, path and Range header.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    range: Option<String>,
}

struct HubState {
    /// Repository id -> folder whose files it serves.
    repos: HashMap<String, PathBuf>,
    /// Repositories answering 401, as the Hub does for private ones.
    private: Vec<String>,
    /// While set, the body of this file is cut off half-way (the connection drops).
    break_file: Mutex<Option<String>>,
    hits: Mutex<Vec<Hit>>,
}

/// A Hugging Face endpoint that speaks what hf-hub asks: the repository listing
/// (`/api/models/{repo}/revision/{rev}`) and files (`/{repo}/resolve/{rev}/{file}`) with the
/// `x-repo-commit`, `etag` / `x-linked-etag` and `content-range` headers and Range requests.
struct FakeHub {
    port: u16,
    state: Arc<HubState>,
    stop: Arc<AtomicBool>,
}

impl FakeHub {
    fn start(repos: &[(&str, PathBuf)], private: &[&str]) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake hub");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(HubState {
            repos: repos
                .iter()
                .map(|(id, dir)| (id.to_string(), dir.clone()))
                .collect(),
            private: private.iter().map(|s| s.to_string()).collect(),
            break_file: Mutex::new(None),
            hits: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(&st, conn);
                });
            }
        });
        FakeHub { port, state, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// How many times the metadata of `file` was asked for (hf-hub's `Range: bytes=0-0` probe,
    /// once per file download).
    fn probes(&self, file: &str) -> usize {
        self.hits()
            .iter()
            .filter(|h| h.path.ends_with(&format!("/{file}")))
            .filter(|h| h.range.as_deref() == Some("bytes=0-0"))
            .count()
    }

    fn break_file(&self, file: Option<&str>) {
        *self.state.break_file.lock().unwrap() = file.map(str::to_string);
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn etag_of(bytes: &[u8]) -> String {
    // FNV-1a: stable, and enough to tell the test's files apart.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

fn serve(st: &HubState, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    st.hits.lock().unwrap().push(Hit {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
    });
    let not_found = |conn: &mut TcpStream| {
        respond(
            conn,
            "404 Not Found",
            &[
                ("Content-Type", "application/json".into()),
                ("x-error-code", "RepoNotFound".into()),
            ],
            br#"{"error":"Repository not found"}"#,
        )
    };
    // /api/models/{publisher}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let segs: Vec<&str> = rest.split('/').collect();
        let repo = segs[..2.min(segs.len())].join("/");
        if st.private.contains(&repo) {
            respond(&mut conn, "401 Unauthorized", &[], b"{}");
            return Ok(());
        }
        let Some(dir) = st.repos.get(&repo) else {
            not_found(&mut conn);
            return Ok(());
        };
        let mut siblings: Vec<Value> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| json!({"rfilename": e.file_name().to_string_lossy()}))
            .collect();
        // Files a model download must leave alone.
        siblings.push(json!({"rfilename": "README.md"}));
        siblings.push(json!({"rfilename": "original/model.safetensors"}));
        let body = json!({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings});
        respond(
            &mut conn,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
        return Ok(());
    }
    // /{publisher}/{name}/resolve/{rev}/{file}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let (repo, file) = match segs.as_slice() {
        [p, n, "resolve", _rev, file] => (format!("{p}/{n}"), file.to_string()),
        _ => {
            not_found(&mut conn);
            return Ok(());
        }
    };
    let Some(bytes) = st
        .repos
        .get(&repo)
        .filter(|_| !file.contains('/'))
        .and_then(|dir| std::fs::read(dir.join(&file)).ok())
    else {
        not_found(&mut conn);
        return Ok(());
    };
    let len = bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(len - 1);
            (a.min(len - 1), b.min(len - 1))
        }
        None => (0, len - 1),
    };
    let etag = etag_of(&bytes);
    let mut headers = vec![
        ("x-repo-commit", COMMIT.to_string()),
        ("etag", format!("\"{etag}\"")),
        ("content-range", format!("bytes {start}-{end}/{len}")),
        ("accept-ranges", "bytes".into()),
    ];
    if file.ends_with(".safetensors") {
        // LFS files: the Hub names the blob by x-linked-etag.
        headers.push(("x-linked-etag", format!("\"{etag}\"")));
        headers.push(("x-linked-size", len.to_string()));
    }
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body = &bytes[start..=end];
    let broken = st.break_file.lock().unwrap().as_deref() == Some(file.as_str());
    if broken && body.len() > 1 {
        // Promise the whole range, send half, hang up.
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        conn.write_all(&body[..body.len() / 2])?;
        conn.flush()?;
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    if method == "HEAD" {
        respond(&mut conn, status, &headers, b"");
    } else {
        respond(&mut conn, status, &headers, body);
    }
    // Drain anything left so the close is clean.
    let mut sink = [0u8; 64];
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(10)));
    let _ = conn.read(&mut sink);
    Ok(())
}

/// A temporary Hugging Face home and the daemon's environment pointing at `endpoint`.
struct HfHome {
    dir: tempfile::TempDir,
}

impl HfHome {
    fn new() -> HfHome {
        HfHome {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn hub(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    fn start_daemon(&self, endpoint: &str, config: &str) -> Daemon {
        let hub = self.hub();
        Daemon::start_with_env(
            config,
            &[
                ("HF_HOME", self.dir.path().as_os_str()),
                ("HF_HUB_CACHE", hub.as_os_str()),
                ("HF_ENDPOINT", OsStr::new(endpoint)),
                ("HF_TOKEN", OsStr::new("")),
            ],
        )
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hub()
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

fn tiny() -> PathBuf {
    opta_lmx_tests::model("tiny-random-llama")
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 4})
}

const ALLOW: &str = "models:\n  allow_download: true\n";

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn listed(d: &Daemon, id: &str) -> bool {
    let (code, body) = d.get("/v1/models");
    assert_eq!(code, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == id)
}

#[test]
fn a_missing_model_is_downloaded_once_then_served_from_the_cache() {
    let hub = FakeHub::start(&[(REPO, tiny()), ("other/tiny-llama", tiny())], &[]);
    let home = HfHome::new();
    let d = home.start_daemon(&hub.endpoint(), ALLOW);
    assert!(!listed(&d, REPO), "not on this machine before the download");

    // Three requests at once share one download and one load.
    let port = d.port;
    let answers: Vec<(u16, String)> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let body = ask(REPO).to_string();
                opta_lmx_tests::http(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body),
                    "application/json",
                )
                .expect("chat request")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (code, raw) in &answers {
        assert_eq!(*code, 200, "{raw}");
        let chat: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(chat["model"], REPO);
        assert!(
            chat["choices"][0]["message"]["content"].is_string(),
            "{chat}"
        );
    }
    let listings = hub
        .hits()
        .iter()
        .filter(|h| h.path.starts_with("/api/models/"))
        .count();
    assert_eq!(listings, 1, "one download: {:?}", hub.hits());
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        assert_eq!(hub.probes(file), 1, "{file} fetched once: {:?}", hub.hits());
    }
    assert!(
        hub.hits()
            .iter()
            .all(|h| !h.path.ends_with("README.md") && !h.path.contains("/original/")),
        "only what a model needs: {:?}",
        hub.hits()
    );
    assert!(hub.hits().iter().all(|h| h.method == "GET"));

    // The standard cache layout, so discovery (and mlx-lm) find it.
    let repo_dir = home.repo_dir(REPO);
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let got = std::fs::read(snapshot.join(file)).unwrap();
        assert_eq!(got, std::fs::read(tiny().join(file)).unwrap(), "{file}");
    }
    assert!(
        files_under(&repo_dir)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".part")),
        "no partial files left"
    );
    assert!(listed(&d, REPO));

    // Again, after an unload too: no second download.
    let before = hub.hits().len();
    let (code, body) = d.post("/v1/chat/completions", &ask(REPO));
    assert_eq!(code, 200, "{body}");
    let (code, body) = d.post("/admin/models/unload", &json!({"model_id": REPO}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": REPO}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(hub.hits().len(), before, "served from the cache");

    // LM Studio's load endpoint downloads too.
    let (code, body) = d.post("/api/v1/models/load", &json!({"model": "other/tiny-llama"}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["instance_id"], "other/tiny-llama");
    assert_eq!(hub.probes("model.safetensors"), 2);
}

#[test]
fn with_download_off_a_missing_model_is_404_saying_how_to_turn_it_on() {
    let hub = FakeHub::start(&[(REPO, tiny())], &[]);
    let home = HfHome::new();
    let d = home.start_daemon(&hub.endpoint(), "");
    for (path, body) in [
        ("/v1/chat/completions", ask(REPO)),
        ("/admin/models/load", json!({"model_id": REPO})),
        ("/api/v1/models/load", json!({"model": REPO})),
    ] {
        let (code, body) = d.post(path, &body);
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("downloading is off") && message.contains("allow_download: true"),
            "{message}"
        );
    }
    assert!(hub.hits().is_empty(), "nothing asked of the Hub");
    assert!(!home.repo_dir(REPO).exists());
}

#[test]
fn a_repo_the_hub_does_not_have_is_404_and_an_unreachable_hub_is_502() {
    let hub = FakeHub::start(&[(REPO, tiny())], &["private/model"]);
    let home = HfHome::new();
    let d = home.start_daemon(&hub.endpoint(), ALLOW);
    for missing in ["nobody/nothing", "private/model"] {
        let (code, body) = d.post("/v1/chat/completions", &ask(missing));
        assert_eq!(code, 404, "{missing}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert_eq!(body["error"]["param"], "model", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("cannot be downloaded") && message.contains(missing),
            "{message}"
        );
        assert!(!listed(&d, missing));
    }
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": "nobody/nothing"}));
    assert_eq!(code, 404, "{body}");
    drop(d);

    // Nothing listens on this endpoint: a network failure, with its cause.
    let dead = format!("http://127.0.0.1:{}", opta_lmx_tests::free_port());
    let d = home.start_daemon(&dead, ALLOW);
    let (code, body) = d.post("/v1/chat/completions", &ask(REPO));
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["error"]["code"], "download_failed", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&dead) && message.to_lowercase().contains("refused"),
        "{message}"
    );
}

#[test]
fn an_interrupted_download_leaves_nothing_loadable_and_resumes() {
    let hub = FakeHub::start(&[(REPO, tiny())], &[]);
    hub.break_file(Some("model.safetensors"));
    let home = HfHome::new();
    let d = home.start_daemon(&hub.endpoint(), ALLOW);

    let (code, body) = d.post("/v1/chat/completions", &ask(REPO));
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["error"]["code"], "download_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("model.safetensors"), "{message}");

    // Some files arrived, but discovery sees no model: no listing, no load of a broken folder.
    assert!(
        home.repo_dir(REPO).join("blobs").is_dir(),
        "the download did start"
    );
    assert!(!home
        .repo_dir(REPO)
        .join("snapshots")
        .join(COMMIT)
        .join("config.json")
        .exists());
    assert!(!listed(&d, REPO));
    let (code, body) = d.get(&format!("/api/v0/models/{REPO}"));
    assert_eq!(code, 404, "{body}");
    let (code, body) = d.get("/admin/status");
    assert_eq!(code, 200);
    assert_eq!(body["loaded_models"], 0, "{body}");

    // Still broken: the next request downloads again, and fails the same way.
    let (code, body) = d.post("/v1/chat/completions", &ask(REPO));
    assert_eq!(code, 502, "{body}");

    // Once the Hub behaves, the next request completes the download and answers.
    hub.break_file(None);
    let (code, body) = d.post("/v1/chat/completions", &ask(REPO));
    assert_eq!(code, 200, "{body}");
    // Files that were complete are not fetched again.
    assert_eq!(hub.probes("tokenizer.json"), 1, "{:?}", hub.hits());
    assert_eq!(hub.probes("config.json"), 1, "{:?}", hub.hits());
    assert_eq!(
        std::fs::read(
            home.repo_dir(REPO)
                .join("snapshots")
                .join(COMMIT)
                .join("model.safetensors")
        )
        .unwrap(),
        std::fs::read(tiny().join("model.safetensors")).unwrap()
    );
}
