//! The upstream servers' resources and prompts, under the same rules as their tools.
//!
//! - **Names.** A prompt is listed as `server__prompt`; a resource's URI as
//!   `bulwark://server/URI` (and a template's likewise), so that a read finds its
//!   server again.
//! - **Policy.** A caller sees a prompt when its key (and passport) allow that name,
//!   and a server's resources when they allow `server__resources`; what it may not see
//!   it cannot fetch, and the refusal does not say whether it exists.
//! - **The guard.** A resource or prompt whose description gives hidden orders is not
//!   listed. A resource's text is read as a tool result is (an injection withheld or
//!   flagged per `on_injection`, personal data and credentials redacted) and its class
//!   remembered for the chat requests that carry it. A prompt is instructions by
//!   nature, so it is read as a tool description is (hidden orders refuse it), and its
//!   personal data redacted.
//! - **Audit.** Each read and each prompt fetched is one record (`resource_read`,
//!   `prompt_get`) in the same log as tool calls.

use std::time::Instant;

use bulwark_config::mcp::OnInjection;
use rmcp::model::{
    ContentBlock, GetPromptRequestParams, GetPromptResult, Prompt, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use rmcp::ErrorData;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{poison, sha256_hex, upstream::Upstream, Caller, Gateway, To, Use};

const SCHEME: &str = "bulwark://";

/// A resource URI as clients see it.
pub fn resource_uri(server: &str, uri: &str) -> String {
    format!("{SCHEME}{server}/{uri}")
}

/// The server and its own URI, from a URI as clients see it.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(SCHEME)?.split_once('/')
}

/// The name a caller's tool patterns must allow to see a server's resources.
pub fn resources_name(server: &str) -> String {
    format!("{server}__resources")
}

fn not_found(what: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("Unknown {what}. List them for the ones this key may use."),
        None,
    )
}

impl Gateway {
    /// Whether a description reads as hidden orders (cached by its digest).
    fn description_poisoned(&self, name: &str, text: &str) -> bool {
        let digest = sha256_hex(format!("{name}\n{text}").as_bytes());
        self.poisoned(&digest, || text.to_owned()).is_some_and(|reason| {
            tracing::warn!(%name, %reason, "MCP resource or prompt hidden: its description reads as an injection");
            true
        })
    }

    /// Whether `server`'s resource `r` (as the server lists it) has a description that
    /// gives hidden orders: what both the listing and a read by URI ask, under one
    /// cache key.
    fn resource_poisoned(&self, server: &str, r: &Resource) -> bool {
        self.description_poisoned(
            &resource_uri(server, &r.uri),
            &described(&r.title, &r.description),
        )
    }

    /// Whether `up` lists resource `own` with a description that gives hidden orders;
    /// `Err` when it could not be listed, and so not checked.
    async fn hidden_resource(&self, up: &Upstream, own: &str) -> Result<bool, String> {
        let (listed, _) = up.list_resources().await?;
        Ok(listed
            .iter()
            .filter(|r| r.uri == own)
            .any(|r| self.resource_poisoned(&up.config.name, r)))
    }

    /// The resources and templates `caller` may read.
    pub async fn resources(&self, caller: &Caller) -> (Vec<Resource>, Vec<ResourceTemplate>) {
        let allowed: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| caller.may_use(&resources_name(&u.config.name)))
            .collect();
        let lists =
            futures_util::future::join_all(allowed.iter().map(|u| u.list_resources())).await;
        let (mut resources, mut templates) = (Vec::new(), Vec::new());
        for (u, listed) in allowed.into_iter().zip(lists) {
            let server = &u.config.name;
            let (rs, ts) = match listed {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%server, error = %e, "MCP server's resources not listed");
                    continue;
                }
            };
            for mut r in rs {
                if !self.resource_poisoned(server, &r) {
                    r.uri = resource_uri(server, &r.uri);
                    resources.push(r);
                }
            }
            for mut t in ts {
                let text = described(&t.title, &t.description);
                t.uri_template = resource_uri(server, &t.uri_template);
                if !self.description_poisoned(&t.uri_template, &text) {
                    templates.push(t);
                }
            }
        }
        (resources, templates)
    }

    /// The prompts `caller` may fetch.
    pub async fn prompts(&self, caller: &Caller) -> Vec<Prompt> {
        let lists =
            futures_util::future::join_all(self.upstreams.iter().map(|u| u.list_prompts())).await;
        let mut out = Vec::new();
        for (u, listed) in self.upstreams.iter().zip(lists) {
            let server = &u.config.name;
            let prompts = match listed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%server, error = %e, "MCP server's prompts not listed");
                    continue;
                }
            };
            for mut p in prompts {
                p.name = format!("{server}__{}", p.name);
                if !caller.may_use(&p.name) {
                    continue;
                }
                let mut text = described(&p.title, &p.description);
                for a in p.arguments.iter().flatten() {
                    text.push('\n');
                    text.push_str(a.description.as_deref().unwrap_or(""));
                }
                if !self.description_poisoned(&p.name, &text) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Reads resource `uri` (as clients see it) for `caller`.
    pub async fn read_resource(
        &self,
        caller: &Caller,
        uri: &str,
        cancel: &CancellationToken,
    ) -> Result<ReadResourceResult, ErrorData> {
        let started = Instant::now();
        let args_digest = sha256_hex(uri.as_bytes());
        let found = split_uri(uri)
            .filter(|(server, _)| caller.may_use(&resources_name(server)))
            .and_then(|(server, own)| Some((self.upstream(server)?, own)));
        // A resource not listed for its poisoned description is not read by its URI
        // either; nor one whose listing could not be had, as its description is unread.
        let found = match found {
            Some((up, own)) => match self.hidden_resource(up, own).await {
                Ok(false) => Some((up, own)),
                Ok(true) => None,
                Err(e) => {
                    let server = up.config.name.clone();
                    let used = Use {
                        decision: "failed",
                        error: Some("upstream_unavailable"),
                        class: Some(up.config.class),
                        ..Use::refused(
                            bulwark_audit::Event::ResourceRead,
                            uri,
                            &server,
                            own,
                            args_digest,
                            started,
                        )
                    };
                    let refused = Err(ErrorData::internal_error(
                        format!("The MCP server `{server}` could not list its resources ({e}), so the gateway could not check how {uri} is described; it was not read."),
                        None,
                    ));
                    return self.recorded(caller, used, refused).await;
                }
            },
            None => None,
        };
        let Some((up, own)) = found else {
            let (server, own) = split_uri(uri).unwrap_or(("", uri));
            self.append(
                caller,
                Use::refused(
                    bulwark_audit::Event::ResourceRead,
                    uri,
                    server,
                    own,
                    args_digest,
                    started,
                ),
            )
            .await;
            return Err(not_found("resource"));
        };
        let server = up.config.name.clone();
        let answered = self.bounded(up.read_resource(own), cancel).await;
        let mut findings = Vec::new();
        let (decision, error, result) = match answered {
            Err(e) => (
                "failed",
                Some("upstream_unavailable"),
                Err(ErrorData::internal_error(
                    format!("The MCP server `{server}` could not read {uri}: {e}"),
                    None,
                )),
            ),
            Ok(mut r) => {
                // An upstream on the older revision leaves `resultType` out (see `run`).
                r.result_type = Some(rmcp::model::ResultType::COMPLETE);
                let mut injection = false;
                let mut data = false;
                let to = To {
                    caller: caller.principal(),
                    class: up.config.class,
                };
                let mut texts = Vec::new();
                self.off_executor(|| {
                    for c in &mut r.contents {
                        match c {
                            ResourceContents::TextResourceContents { uri: u, text, .. } => {
                                *u = resource_uri(&server, u);
                                let read = self.screen_text(text, &mut findings, to);
                                injection |= read.injection;
                                data |= read.data;
                                texts.push(text.clone());
                            }
                            ResourceContents::BlobResourceContents { uri: u, .. } => {
                                *u = resource_uri(&server, u);
                            }
                            // A kind of content this gateway cannot read is not passed on.
                            _ => injection = true,
                        }
                    }
                });
                findings.sort_unstable();
                findings.dedup();
                if data {
                    (
                        "blocked",
                        Some("tool_result_sensitive_data"),
                        Err(ErrorData::internal_error(
                            format!("The resource {uri} was withheld by the gateway: it contains personal data or credentials, which this gateway's guard blocks."),
                            None,
                        )),
                    )
                } else if injection && self.config.on_injection == OnInjection::Block {
                    (
                        "blocked",
                        Some("tool_result_injection"),
                        Err(ErrorData::internal_error(
                            format!("The resource {uri} was withheld by the gateway: it contains instructions to the model (prompt injection)."),
                            None,
                        )),
                    )
                } else {
                    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                    self.classes.remember(&texts, up.config.class);
                    (if injection { "flagged" } else { "allowed" }, None, Ok(r))
                }
            }
        };
        let used = Use {
            event: bulwark_audit::Event::ResourceRead,
            name: uri,
            server: server.clone(),
            tool: own.to_owned(),
            class: Some(up.config.class),
            arguments_sha256: args_digest,
            result_sha256: None,
            is_error: false,
            decision,
            findings: &findings,
            error,
            started,
        };
        self.recorded(caller, used, result).await
    }

    /// Fetches prompt `params.name` (`server__prompt`) for `caller`.
    pub async fn get_prompt(
        &self,
        caller: &Caller,
        mut params: GetPromptRequestParams,
        cancel: &CancellationToken,
    ) -> Result<GetPromptResult, ErrorData> {
        let started = Instant::now();
        let name = params.name.clone();
        let args_digest = sha256_hex(
            Value::Object(params.arguments.clone().unwrap_or_default())
                .to_string()
                .as_bytes(),
        );
        let found = name
            .split_once("__")
            .filter(|_| caller.may_use(&name))
            .and_then(|(server, own)| Some((self.upstream(server)?, own.to_owned())));
        let listed = match &found {
            Some(_) => self.prompts(caller).await.iter().any(|p| p.name == name),
            None => false,
        };
        let Some((up, own)) = found.filter(|_| listed) else {
            let (server, own) = name.split_once("__").unwrap_or(("", &name));
            self.append(
                caller,
                Use::refused(
                    bulwark_audit::Event::PromptGet,
                    &name,
                    server,
                    own,
                    args_digest,
                    started,
                ),
            )
            .await;
            return Err(not_found("prompt"));
        };
        params.name = own.clone();
        let answered = self.bounded(up.get_prompt(params), cancel).await;
        let mut findings = Vec::new();
        let (decision, error, result) = match answered {
            Err(e) => (
                "failed",
                Some("upstream_unavailable"),
                Err(ErrorData::internal_error(
                    format!(
                        "The MCP server `{}` could not give {name}: {e}",
                        up.config.name
                    ),
                    None,
                )),
            ),
            Ok(mut r) => {
                r.result_type = Some(rmcp::model::ResultType::COMPLETE);
                let mut all = r.description.clone().unwrap_or_default();
                let to = To {
                    caller: caller.principal(),
                    class: up.config.class,
                };
                let mut data = false;
                let poisoned = self.off_executor(|| {
                    for m in &mut r.messages {
                        if let ContentBlock::Text(t) = &mut m.content {
                            // Instructions are what a prompt is: its personal data
                            // handled here, and the whole judged for hidden orders below.
                            data |= self.screen_text(&mut t.text, &mut findings, to).data;
                            all.push('\n');
                            all.push_str(&t.text);
                        }
                    }
                    self.guard.as_ref().and_then(|g| poison::check(g, &all))
                });
                findings.sort_unstable();
                findings.dedup();
                match poisoned {
                    _ if data => (
                        "blocked",
                        Some("tool_result_sensitive_data"),
                        Err(ErrorData::internal_error(
                            format!("The prompt {name} was withheld by the gateway: it contains personal data or credentials, which this gateway's guard blocks."),
                            None,
                        )),
                    ),
                    Some(reason) => (
                        "blocked",
                        Some("prompt_poisoned"),
                        Err(ErrorData::internal_error(
                            format!("The prompt {name} was withheld by the gateway: {reason}."),
                            None,
                        )),
                    ),
                    None => ("allowed", None, Ok(r)),
                }
            }
        };
        let used = Use {
            event: bulwark_audit::Event::PromptGet,
            name: &name,
            server: up.config.name.clone(),
            tool: own,
            class: Some(up.config.class),
            arguments_sha256: args_digest,
            result_sha256: None,
            is_error: false,
            decision,
            findings: &findings,
            error,
            started,
        };
        self.recorded(caller, used, result).await
    }
}

/// A listed item's title and description, as the model reads them.
fn described(title: &Option<String>, description: &Option<String>) -> String {
    [title.as_deref(), description.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n")
}

impl Gateway {
    /// An upstream's answer within the call timeout, unless the client cancels first
    /// (dropping the request, which tells the upstream).
    async fn bounded<T>(
        &self,
        asked: impl std::future::Future<Output = Result<T, String>>,
        cancel: &CancellationToken,
    ) -> Result<T, String> {
        tokio::select! {
            r = tokio::time::timeout(self.config.call_timeout, asked) => r.unwrap_or_else(|_| {
                Err(format!("no answer within {} ms", self.config.call_timeout.as_millis()))
            }),
            () = cancel.cancelled() => Err("cancelled by the client".into()),
        }
    }

    /// Records `used` with `result`'s digest, and gives `result` back (withheld when the
    /// log could not take the record).
    async fn recorded<R: serde::Serialize>(
        &self,
        caller: &Caller,
        used: Use<'_>,
        result: Result<R, ErrorData>,
    ) -> Result<R, ErrorData> {
        let used = Use {
            result_sha256: result
                .as_ref()
                .ok()
                .map(|r| sha256_hex(&serde_json::to_vec(r).unwrap_or_default())),
            is_error: result.is_err(),
            ..used
        };
        if !self.append(caller, used).await {
            return Err(ErrorData::internal_error(
                "The audit log could not record this request, so its result is withheld; see the gateway's log.",
                None,
            ));
        }
        result
    }
}
