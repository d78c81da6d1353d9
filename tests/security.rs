//! The rules a request passes before its handler, against the real daemon: JSON bodies only
//! (415), the Host check (DNS rebinding), foreign web page origins, API keys and their
//! permissions on every route, CORS only for configured origins, model paths outside the
//! models folder, and request ids.

use std::io::{Read, Write};
use std::process::Command;

use opta_lmx::config::Permission;
use opta_lmx::guard::Access;
use opta_lmx_tests::{binary, model, run, split_response, Daemon};
use serde_json::{json, Value};

const TINY: &str = "opta/tiny-random-llama";

/// One request with exactly these headers (plus Content-Length); the status, the response
/// head lower-cased, and the body as JSON (`Null` when it is not).
fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    let head: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (code, head, rest) = split_response(&text);
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        opta_lmx::client::dechunk(rest)
    } else {
        rest.to_string()
    };
    (
        code,
        head.to_ascii_lowercase(),
        serde_json::from_str(&rest).unwrap_or(Value::Null),
    )
}

const HOST: (&str, &str) = ("Host", "127.0.0.1");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn chat_body() -> String {
    json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        .to_string()
}

#[test]
fn bodies_that_are_not_json_are_refused_with_415_in_each_dialect() {
    let d = Daemon::start("");
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (code, _, err) = raw(
            d.port,
            "POST",
            "/admin/models/unload",
            &[HOST, ("Content-Type", ct)],
            "{}",
        );
        assert_eq!(code, 415, "{ct}: {err}");
        assert_eq!(err["error"]["code"], "unsupported_media_type", "{err}");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("application/json"));
        let (code, _, err) = raw(
            d.port,
            "POST",
            "/v1/chat/completions",
            &[HOST, ("Content-Type", ct)],
            &chat_body(),
        );
        assert_eq!(code, 415, "{ct}: {err}");
    }
    let (code, _, err) = raw(
        d.port,
        "POST",
        "/v1/messages",
        &[HOST, ("Content-Type", "text/plain")],
        "{}",
    );
    assert_eq!(code, 415);
    assert_eq!(err["type"], "error", "Anthropic's shape: {err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    // JSON, and a body that names no type at all (many scripts), are read.
    for headers in [
        &[HOST, JSON][..],
        &[HOST][..],
        &[HOST, ("Content-Type", "application/json; charset=utf-8")][..],
    ] {
        let (code, _, body) = raw(
            d.port,
            "POST",
            "/v1/chat/completions",
            headers,
            &chat_body(),
        );
        assert_eq!(code, 200, "{headers:?}: {body}");
    }
}

#[test]
fn a_rebound_host_name_or_a_foreign_page_is_refused() {
    let d = Daemon::start("");
    for host in ["127.0.0.1:1234", "localhost:1234", "[::1]:1234"] {
        let (code, _, body) = raw(d.port, "GET", "/v1/models", &[("Host", host)], "");
        assert_eq!(code, 200, "{host}: {body}");
    }
    let (code, _, err) = raw(
        d.port,
        "GET",
        "/v1/models",
        &[("Host", "attacker.example:1234")],
        "",
    );
    assert_eq!(code, 403);
    assert_eq!(err["error"]["code"], "host_not_allowed", "{err}");
    // A page's fetch carries its Origin: refused unless configured, with no CORS header.
    let from_page = [HOST, JSON, ("Origin", "https://evil.example")];
    let (code, head, err) = raw(d.port, "POST", "/admin/models/unload", &from_page, "{}");
    assert_eq!(code, 403, "{err}");
    assert_eq!(err["error"]["code"], "origin_not_allowed");
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    let d = Daemon::start("server:\n  allowed_hosts: [my-mac.local]\n");
    let (code, _, _) = raw(
        d.port,
        "GET",
        "/v1/models",
        &[("Host", "my-mac.local:1234")],
        "",
    );
    assert_eq!(code, 200);
    let (code, _, _) = raw(d.port, "GET", "/v1/models", &[("Host", "other.local")], "");
    assert_eq!(code, 403);
}

#[test]
fn cors_headers_only_for_configured_origins() {
    let d = Daemon::start("server:\n  cors_origins: ['http://localhost:3000']\n");
    let preflight = |origin| {
        raw(
            d.port,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                HOST,
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            "",
        )
    };
    let (code, head, _) = preflight("http://localhost:3000");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    assert!(
        head.contains("authorization"),
        "the asked-for headers are allowed: {head}"
    );
    let (_, head, _) = preflight("https://evil.example");
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    let page = [HOST, JSON, ("Origin", "http://localhost:3000")];
    let (code, head, body) = raw(d.port, "POST", "/v1/chat/completions", &page, &chat_body());
    assert_eq!(code, 200, "{body}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:3000"),
        "{head}"
    );
    let evil = [HOST, JSON, ("Origin", "https://evil.example")];
    let (code, _, _) = raw(d.port, "POST", "/v1/chat/completions", &evil, &chat_body());
    assert_eq!(code, 403);
}

/// A path with its catch-all filled in, and a body that would be valid enough to reach the
/// handler.
fn example(path: &str) -> String {
    path.replace("{*id}", TINY)
}

#[test]
fn keys_are_required_and_their_permissions_enforced_on_every_route() {
    let d = Daemon::start_with_env(
        "server:\n  api_keys: [{key: infer-key, permissions: [inference]}, {key: admin-key, permissions: [admin]}]\n",
        &[("OPTA_LMX_API_KEY", std::ffi::OsStr::new("env-key"))],
    );
    let routes = opta_lmx::server::operations();
    assert!(routes.len() > 20);
    for (method, path, access) in routes {
        let path = example(path);
        let method = method.as_str();
        let body = if method == "POST" { "{}" } else { "" };
        let call = |key: Option<(&str, &str)>| {
            let mut headers = vec![HOST, JSON];
            headers.extend(key);
            raw(d.port, method, &path, &headers, body)
        };
        let [wrong_key, infer, admin, env] =
            ["nope", "infer-key", "admin-key", "env-key"].map(|k| format!("Bearer {k}"));
        let bearer = |k: &str| -> &str {
            match k {
                "infer-key" => &infer,
                "admin-key" => &admin,
                "env-key" => &env,
                _ => &wrong_key,
            }
        };
        let what = format!("{method} {path}");
        let (none, _, err) = call(None);
        match access {
            Access::Public => {
                assert_eq!(none, 200, "{what} needs no key");
                continue;
            }
            Access::Needs(permission) => {
                assert_eq!(none, 401, "{what} without a key: {err}");
                let (wrong, _, err) = call(Some(("Authorization", bearer("nope"))));
                assert_eq!(wrong, 401, "{what} with a wrong key");
                if path.starts_with("/v1/messages") {
                    assert_eq!(
                        err["error"]["type"], "authentication_error",
                        "{what}: {err}"
                    );
                } else {
                    assert_eq!(err["error"]["code"], "invalid_api_key", "{what}: {err}");
                }
                let (allowed, lacking) = match permission {
                    Permission::Inference => ("infer-key", "admin-key"),
                    Permission::Admin => ("admin-key", "infer-key"),
                };
                let (code, _, err) = call(Some(("Authorization", bearer(lacking))));
                assert_eq!(code, 403, "{what} with a key lacking {permission:?}: {err}");
                for key in [
                    ("Authorization", bearer(allowed)),
                    ("x-api-key", allowed),
                    ("Authorization", bearer("env-key")),
                ] {
                    let (code, _, err) = call(Some(key));
                    assert!(
                        ![401, 403].contains(&code),
                        "{what} with a good key: {code} {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_cli_sends_its_api_key() {
    let d = Daemon::start("server:\n  api_keys: [sekrit]\n");
    let port = d.port.to_string();
    let (ok, _, err) = run(Command::new(binary("opta-lmx")).args(["status", "--port", &port]));
    assert!(!ok);
    assert!(err.contains("API key"), "{err}");
    let (ok, out, err) = run(Command::new(binary("opta-lmx")).args([
        "status",
        "--port",
        &port,
        "--api-key",
        "sekrit",
    ]));
    assert!(ok, "{out} {err}");
    let (ok, _, err) = run(Command::new(binary("opta-lmx"))
        .args(["ps", "--port", &port])
        .env("OPTA_LMX_API_KEY", "sekrit"));
    assert!(ok, "{err}");
}

#[test]
fn model_paths_outside_the_models_folder_load_only_when_allowed() {
    let outside = tempfile::tempdir().expect("temp dir");
    let dir = outside.path().join("tiny");
    std::fs::create_dir(&dir).expect("dir");
    let tiny = model("tiny-random-llama");
    for entry in std::fs::read_dir(&tiny).expect("tiny model") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    let id = dir.display().to_string();
    let d = Daemon::start("");
    let (code, err) = d.post("/admin/models/load", &json!({"model_id": id}));
    assert_eq!(code, 404, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("allow_paths"),
        "{err}"
    );
    // A path inside the models folder is fine.
    let (code, body) = d.post(
        "/admin/models/load",
        &json!({"model_id": tiny.display().to_string()}),
    );
    assert_eq!(code, 200, "{body}");

    let d = Daemon::start("models:\n  allow_paths: true\n");
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": id}));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn every_answer_names_its_request_id_and_keeps_the_clients() {
    let d = Daemon::start("");
    let (_, head, _) = raw(d.port, "GET", "/v1/models", &[HOST], "");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("an x-request-id header");
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");
    let (_, head, _) = raw(
        d.port,
        "GET",
        "/v1/models",
        &[HOST, ("X-Request-Id", "trace-42")],
        "",
    );
    assert!(head.contains("x-request-id: trace-42"), "{head}");
    // Errors too.
    let (code, head, _) = raw(d.port, "GET", "/nowhere", &[HOST], "");
    assert_eq!(code, 404);
    assert!(head.contains("x-request-id: req_"), "{head}");
}
