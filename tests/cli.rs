//! The `lms`-style client subcommands against a running daemon.

use std::process::Command;

use opta_lmx_tests::{binary, run, Daemon};
use serde_json::Value;

const TINY: &str = "opta/tiny-random-llama";

fn cli(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    run(Command::new(binary("opta-lmx"))
        .args(args)
        .args(["--port", &d.port.to_string()]))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn ps_ls_load_unload_and_status_talk_to_the_server() {
    let d = Daemon::start("");

    let (ok, out, _) = cli(&d, &["ps"]);
    assert!(ok);
    assert!(out.contains("No models are loaded."), "{out}");

    let (ok, out, _) = cli(&d, &["ls", "--json"]);
    assert!(ok);
    let models = json(&out);
    assert!(
        models.as_array().unwrap().iter().any(|m| m["id"] == TINY),
        "{out}"
    );

    let (ok, out, err) = cli(&d, &["load", TINY, "--ttl", "600"]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("Loaded {TINY}")), "{out}");

    let (ok, out, _) = cli(&d, &["ps", "--json"]);
    assert!(ok);
    let workers = json(&out);
    assert_eq!(workers[0]["model_id"], TINY);
    assert_eq!(workers[0]["state"], "loaded");
    assert_eq!(workers[0]["ttl_seconds"], 600);

    let (ok, out, _) = cli(&d, &["status", "--json"]);
    assert!(ok);
    assert_eq!(json(&out)["loaded_models"], 1);
    let (ok, out, _) = cli(&d, &["status"]);
    assert!(ok && out.contains("1 model(s) loaded"), "{out}");

    let (ok, out, _) = cli(&d, &["unload", "--all"]);
    assert!(ok);
    assert!(out.contains(&format!("Unloaded {TINY}.")), "{out}");

    let (ok, _, err) = cli(&d, &["load", "nobody/nothing"]);
    assert!(!ok);
    assert!(err.contains("nobody/nothing"), "{err}");
}

#[test]
fn a_client_with_no_server_says_so_in_one_sentence() {
    let out = Command::new(binary("opta-lmx"))
        .args(["status", "--port", &opta_lmx_tests::free_port().to_string()])
        .output()
        .expect("run opta-lmx");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `opta-lmx serve` running?"), "{err}");
}

#[test]
fn a_taken_port_is_one_clear_sentence() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(binary("opta-lmx"))
        .args(["serve", "--port", &port.to_string()])
        .env("OPTA_LMX_WORKER", binary("opta-lmx-worker"))
        .output()
        .expect("run opta-lmx");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
}
