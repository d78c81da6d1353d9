//! What a request passes before its handler runs: the `Host` it names, the web page `Origin`
//! it comes from, its API key and its body's media type. A local server is reachable by every
//! page the user opens, so the defaults refuse what only a browser attack would send, and
//! leave scripts and SDKs (which send no `Origin` and post JSON) untouched.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, Method};

use crate::api::ApiError;
use crate::config::{ApiKey, Permission, ServerConfig};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the server: health checks and the OpenAPI document.
    Public,
    /// With API keys configured, a key that has this permission.
    Needs(Permission),
}

/// The rules from `server.*` in the configuration.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    keys: Vec<ApiKey>,
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
}

impl Guard {
    pub fn new(server: &ServerConfig) -> Self {
        Guard {
            keys: server.api_keys.clone(),
            allowed_hosts: server.allowed_hosts.clone(),
            cors_origins: server
                .cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn needs_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The first rule `headers` break for a `method` request to a route with `access`.
    pub fn check(
        &self,
        access: Access,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let host = text(headers, header::HOST);
        // HTTP/1.0 clients may send no Host; a browser always does.
        if let Some(host) = host {
            if !self.host_allowed(host) {
                return Err(ApiError::forbidden(
                    "host_not_allowed",
                    format!(
                        "Requests addressed to the host `{host}` are refused; add it to \
                         `server.allowed_hosts` in the configuration to allow it."
                    ),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("?");
            if !self.origin_allowed(origin, host) {
                return Err(ApiError::forbidden(
                    "origin_not_allowed",
                    format!(
                        "Requests from web pages at `{origin}` are refused; add it to \
                         `server.cors_origins` in the configuration to allow it."
                    ),
                ));
            }
        }
        if let Access::Needs(permission) = access {
            self.check_key(permission, headers)?;
        }
        if [Method::POST, Method::PUT, Method::PATCH].contains(method) {
            check_media_type(headers)?;
        }
        Ok(())
    }

    /// IP addresses cannot be rebound, `localhost` is this machine, and `host.docker.internal`
    /// is how containers (Open WebUI's, say) name it, a name no web page's domain can be; any
    /// other name must be configured, because a page can point its own domain at 127.0.0.1.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.');
        let lower = name.to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || lower == "localhost"
            || lower.ends_with(".localhost")
            || lower == "host.docker.internal"
            || self
                .allowed_hosts
                .iter()
                .any(|h| h == "*" || h.eq_ignore_ascii_case(name))
    }

    /// A configured origin, or the server's own (a page it served, say behind a proxy). The
    /// host was checked first, so a rebound domain cannot pass as the server's own.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
            || host.is_some_and(|h| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h))
            })
    }

    fn check_key(&self, permission: Permission, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(presented) = presented_key(headers) else {
            return Err(ApiError::unauthorized(
                "This server needs an API key: send it as `Authorization: Bearer <key>` or \
                 `x-api-key: <key>`.",
            ));
        };
        // Every key is compared, in constant time, so timing says nothing about which matched.
        let found = self.keys.iter().fold(None, |found, k| {
            if same(k.key(), presented) {
                Some(k)
            } else {
                found
            }
        });
        match found {
            None => Err(ApiError::unauthorized("Incorrect API key provided.")),
            Some(key) if !key.allows(permission) => Err(ApiError::forbidden(
                "permission_denied",
                format!(
                    "This API key does not have the `{}` permission.",
                    permission_name(permission)
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Inference => "inference",
        Permission::Admin => "admin",
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>` (Anthropic's).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = text(headers, header::AUTHORIZATION).and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
    });
    bearer
        .or_else(|| text(headers, header::HeaderName::from_static("x-api-key")))
        .filter(|k| !k.is_empty())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The host without its port: `[::1]:1234` is `::1`, `localhost:1234` is `localhost`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A body must be JSON (`application/json` or `application/*+json`) or say nothing of its
/// type. Forms and `text/plain` are what a page can post cross-site without a preflight.
fn check_media_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(ApiError::unsupported_media_type(format!(
        "The request body must be JSON, sent with `Content-Type: application/json` (got \
         `{}`; with curl, add -H 'Content-Type: application/json').",
        value.to_str().unwrap_or("?")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn guard(yaml: &str) -> Guard {
        let cfg: ServerConfig = serde_yaml::from_str(yaml).unwrap();
        Guard::new(&cfg)
    }

    fn code(r: Result<(), ApiError>) -> Option<&'static str> {
        r.err().map(|e| e.code().unwrap_or("?"))
    }

    const INFERENCE: Access = Access::Needs(Permission::Inference);
    const ADMIN: Access = Access::Needs(Permission::Admin);

    #[test]
    fn hosts_by_address_and_localhost_pass_other_names_need_configuring() {
        let g = guard("{}");
        for host in [
            "127.0.0.1:1234",
            "localhost:1234",
            "LOCALHOST",
            "[::1]:1234",
            "192.168.1.20:1234",
            "app.localhost",
            "host.docker.internal:1234",
        ] {
            let h = headers(&[("host", host)]);
            assert_eq!(code(g.check(INFERENCE, &Method::GET, &h)), None, "{host}");
        }
        let rebound = headers(&[("host", "attacker.example:1234")]);
        assert_eq!(
            code(g.check(INFERENCE, &Method::GET, &rebound)),
            Some("host_not_allowed")
        );
        let g = guard("allowed_hosts: [attacker.example]");
        assert_eq!(code(g.check(INFERENCE, &Method::GET, &rebound)), None);
        let g = guard("allowed_hosts: ['*']");
        assert_eq!(code(g.check(INFERENCE, &Method::GET, &rebound)), None);
    }

    #[test]
    fn origins_must_be_configured_or_the_servers_own() {
        let g = guard("cors_origins: ['http://localhost:3000/']");
        let from = |origin| headers(&[("host", "127.0.0.1:1234"), ("origin", origin)]);
        let ok = |origin| code(g.check(Access::Public, &Method::GET, &from(origin)));
        assert_eq!(ok("http://localhost:3000"), None);
        assert_eq!(ok("http://127.0.0.1:1234"), None, "same origin");
        assert_eq!(ok("https://evil.example"), Some("origin_not_allowed"));
        assert_eq!(ok("null"), Some("origin_not_allowed"));
        let any = guard("cors_origins: ['*']");
        assert_eq!(
            code(any.check(Access::Public, &Method::GET, &from("https://x.example"))),
            None
        );
    }

    #[test]
    fn keys_by_either_header_with_permissions() {
        let g = guard("api_keys: [all-key, {key: infer-key, permissions: [inference]}]");
        let check = |access, pairs: &[(&'static str, &str)]| {
            code(g.check(access, &Method::GET, &headers(pairs)))
        };
        assert_eq!(check(INFERENCE, &[]), Some("invalid_api_key"));
        assert_eq!(check(Access::Public, &[]), None);
        assert_eq!(
            check(INFERENCE, &[("authorization", "Bearer nope")]),
            Some("invalid_api_key")
        );
        assert_eq!(
            check(INFERENCE, &[("authorization", "bearer all-key")]),
            None
        );
        assert_eq!(check(ADMIN, &[("x-api-key", "all-key")]), None);
        assert_eq!(check(INFERENCE, &[("x-api-key", "infer-key")]), None);
        assert_eq!(
            check(ADMIN, &[("authorization", "Bearer infer-key")]),
            Some("permission_denied")
        );
        // Without keys configured, any or no key passes.
        let open = guard("{}");
        assert_eq!(
            code(open.check(ADMIN, &Method::GET, &headers(&[("x-api-key", "x")]))),
            None
        );
    }

    #[test]
    fn bodies_must_be_json_or_untyped() {
        let g = guard("{}");
        let post = |ct: Option<&str>| {
            let h = ct.map_or_else(HeaderMap::new, |ct| headers(&[("content-type", ct)]));
            code(g.check(INFERENCE, &Method::POST, &h))
        };
        assert_eq!(post(None), None);
        assert_eq!(post(Some("application/json")), None);
        assert_eq!(post(Some("Application/JSON; charset=utf-8")), None);
        assert_eq!(post(Some("application/vnd.api+json")), None);
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(post(Some(ct)), Some("unsupported_media_type"), "{ct}");
        }
        // A GET's Content-Type does not matter.
        let h = headers(&[("content-type", "text/plain")]);
        assert_eq!(code(g.check(INFERENCE, &Method::GET, &h)), None);
    }
}
