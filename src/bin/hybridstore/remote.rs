//! The CLI as a client of a running daemon (`--url`): `migrate status|set` and `read` through
//! API v1, for a store whose data directory a daemon holds.

use std::process::ExitCode;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::print_line;

/// A daemon's base URL (`http://127.0.0.1:8740`) and the bearer token, if any.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// `HYBRIDSTORE_TOKEN`.
    pub token: Option<String>,
}

impl Remote {
    /// One request; the JSON body of a 2xx answer, or the exit code after printing the problem
    /// (1 for a refused transition or a conflict, 2 for everything else).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ExitCode> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = hyper::Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| {
                eprintln!("error: {uri}: {e}");
                ExitCode::from(2)
            })?;
        let response = client.request(request).await.map_err(|e| {
            eprintln!("error: cannot reach the daemon at {}: {e}", self.url);
            ExitCode::from(2)
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                eprintln!("error: reading the daemon's answer: {e}");
                ExitCode::from(2)
            })?
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let detail = json["detail"].as_str().unwrap_or("no detail");
        let kind = json["type"].as_str().unwrap_or("");
        if kind == "/problems/transition-refused" {
            eprintln!("refused: {detail}");
            return Err(ExitCode::from(1));
        }
        eprintln!("error: the daemon answered {status}: {detail}");
        Err(ExitCode::from(2))
    }
}

/// `migrate set --url`: each component in turn; exit 0, 1 at the first refusal, 2 otherwise.
pub async fn set(
    remote: &Remote,
    bot: &hybridstore::BotId,
    components: &[hybridstore::Component],
    to: hybridstore::MigrationState,
    options: &hybridstore::hybrid::SetOptions,
) -> ExitCode {
    for component in components {
        let body = serde_json::json!({
            "to": to.as_str(),
            "force": options.force,
            "reason": options.reason,
            "wait_s": options.wait.as_secs(),
        });
        match remote
            .call(
                "POST",
                &format!("/v1/migrations/{bot}/{component}"),
                Some(body),
            )
            .await
        {
            Ok(made) => print_line(format_args!(
                "{} {}: {} -> {} at position {}{}",
                made["bot"].as_str().unwrap_or_default(),
                made["component"].as_str().unwrap_or_default(),
                made["from"].as_str().unwrap_or_default(),
                made["to"].as_str().unwrap_or_default(),
                made["position"],
                if made["forced"].as_bool().unwrap_or(false) {
                    " (forced)"
                } else {
                    ""
                }
            )),
            Err(code) => return code,
        }
    }
    ExitCode::SUCCESS
}

/// `migrate status --url`: JSON Lines as the local command prints with `--format json`.
pub async fn status(remote: &Remote, bot: Option<&hybridstore::BotId>) -> ExitCode {
    let path = match bot {
        Some(bot) => format!("/v1/migrations?bot={bot}"),
        None => "/v1/migrations".to_owned(),
    };
    match remote.call("GET", &path, None).await {
        Ok(answer) => {
            for report in answer["components"].as_array().into_iter().flatten() {
                print_line(format_args!(
                    "{}",
                    serde_json::json!({"type": "component", "data": report})
                ));
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `read --url`: the typed route's answer as one JSON line `{type: "read", data}`; exit 0 found,
/// 1 nothing there, 2 could not run.
pub async fn read(remote: &Remote, path: &str) -> ExitCode {
    match remote.call("GET", path, None).await {
        Ok(answer) => {
            let value = &answer["value"];
            let found = !(value.is_null() || value.as_array().is_some_and(Vec::is_empty));
            print_line(format_args!(
                "{}",
                serde_json::json!({"type": "read", "data": answer})
            ));
            if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(code) => code,
    }
}
