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

/// A folder that looks like a model but cannot load is named with its reason, in `ls`, the
/// listing and a request's 400, never reported as missing: an architecture the worker does not
/// run (checked before any worker starts), a config.json that is not JSON, no weights.
#[test]
fn folders_that_cannot_load_say_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = dir.path();
    let tiny = opta_lmx_tests::model("tiny-random-llama");
    let copy = |name: &str| {
        let to = models.join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ] {
            std::fs::copy(tiny.join(f), to.join(f)).expect("copy");
        }
        to
    };
    copy("acme/works");
    let future = copy("acme/future");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(future.join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = "falcon_h1".into();
    std::fs::write(future.join("config.json"), config.to_string()).unwrap();
    let broken = copy("acme/broken");
    std::fs::write(broken.join("config.json"), "{\"model_type\": ").unwrap();
    let empty = copy("acme/no-weights");
    std::fs::remove_file(empty.join("model.safetensors")).unwrap();

    let d = Daemon::start_with_models("", models);
    let (ok, out, err) = cli(&d, &["ls"]);
    assert!(ok, "{err}");
    let (listed, unloadable) = out.split_once("cannot load:").expect("a section for them");
    assert!(listed.contains("acme/works"), "{out}");
    for (id, why) in [
        ("acme/future", "falcon_h1"),
        ("acme/broken", "invalid JSON"),
        ("acme/no-weights", "safetensors"),
    ] {
        let line = unloadable
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing from: {out}"));
        assert!(line.contains(why), "{line}");
        assert!(!listed.contains(id), "{id} is not a model to load: {out}");
        let (code, e) = d.post(
            "/v1/chat/completions",
            &serde_json::json!({"model": id, "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(code, 400, "{id}: {e}");
        assert_eq!(e["error"]["param"], "model");
        let message = e["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("cannot be loaded") && message.contains(why),
            "{message}"
        );
    }
    let (_, e) = d.post(
        "/v1/chat/completions",
        &serde_json::json!({"model": "acme/future", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    let message = e["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("supported are llama"), "{message}");
    assert!(
        d.get("/admin/status").1["workers"]
            .as_array()
            .is_none_or(|w| w.is_empty()),
        "no worker was started for them"
    );
    let (code, e) = d.get("/api/v0/models/acme/broken");
    assert_eq!(code, 404, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("cannot be loaded"));
}
