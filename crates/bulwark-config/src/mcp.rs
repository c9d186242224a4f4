//! `[mcp]`: the MCP gateway on `/mcp`. Off unless a server or a files root is
//! configured.
//!
//! ```toml
//! [[mcp.servers]]
//! name = "notes"                          # its tools are listed as notes__TOOL
//! command = ["python3", "notes_server.py"]
//! env = { NOTES_DIR = "/srv/notes" }      # the child gets only these (and PATH)
//! class = "internal"                      # the data class of what its tools return
//! auto_approve = false                    # true: trust its tool definitions unseen
//!
//! [[mcp.servers]]                         # a remote server, over Streamable HTTP
//! name = "crm"
//! url = "https://crm.example.internal/mcp"
//! bearer_token_env = "CRM_MCP_TOKEN"      # sent as `Authorization: Bearer ...`
//! class = "confidential"
//!
//! [[mcp.arguments]]                       # constraints on a tool's arguments
//! tool = "crm__search"                    # a tool name, or a pattern (`crm__*`)
//! argument = "limit"
//! maximum = 100                           # also: regex, enum, max_length, under
//!
//! [mcp]
//! page_size = 100                         # lists in pages of 100 (default: whole)
//!
//! [[mcp.files]]                           # the built-in files__list/read/search tools
//! name = "handbook"
//! path = "/srv/handbook"
//! class = "confidential"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulwark_policy::DataClass;
use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// MCP servers run as child processes, spoken to over stdio.
    #[serde(default)]
    pub servers: Vec<RawMcpServer>,
    /// Directories the built-in `files` tools may read.
    #[serde(default)]
    pub files: Vec<RawFilesRoot>,
    /// SQLite database files the built-in `sqlite__query` tool may read.
    #[serde(default)]
    pub sqlite: Vec<RawSqliteDb>,
    /// Tool patterns (`files__*`, `notes__read`, `*`) callers may use when the
    /// gateway has no keys. Default: none (with keys, each key names its own).
    #[serde(default)]
    pub anonymous_tools: Vec<String>,
    /// What a tool result the guard reads as an injection gets: `block` (default: the
    /// caller gets an error result instead) or `flag` (passed on, recorded).
    pub on_injection: Option<OnInjection>,
    /// Longest a tool call may take, in milliseconds. Default 60000.
    pub call_timeout_ms: Option<u64>,
    /// Most entries per page of the gateway's own lists (tools, resources, resource
    /// templates, prompts), with a cursor to the next. Default: each list whole, in
    /// one answer (some clients never ask for a second page).
    pub page_size: Option<usize>,
    /// Constraints on tool arguments, beyond the tool's own input schema.
    #[serde(default)]
    pub arguments: Vec<RawArgumentRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgumentRule {
    /// The tools it applies to: a name (`crm__search`) or a pattern (`crm__*`).
    pub tool: String,
    /// The argument (a top-level property of the call's arguments).
    pub argument: String,
    /// The argument must be present.
    #[serde(default)]
    pub required: bool,
    /// A string argument must match this regular expression (anchor it yourself).
    pub regex: Option<String>,
    /// The argument must be one of these values.
    #[serde(rename = "enum")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Most characters in a string argument.
    pub max_length: Option<usize>,
    /// Largest value of a number argument (a row count, a limit).
    pub maximum: Option<f64>,
    /// A path argument must lie under this directory, after `..` and symlinks are
    /// followed (relative paths are taken from the directory).
    pub under: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    pub name: String,
    /// The program and its arguments (a server run as a child over stdio).
    pub command: Option<Vec<String>>,
    /// The child's environment (besides `PATH`); nothing else of the gateway's is passed.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The endpoint of a remote server spoken to over Streamable HTTP (instead of
    /// `command`).
    pub url: Option<String>,
    /// The environment variable holding the bearer token sent to `url` (the caller's
    /// own credentials are never passed on).
    pub bearer_token_env: Option<String>,
    /// The protocol revision spoken to it: `auto` (default: the current revision,
    /// 2026-07-28, when the server offers it, else the session-based 2025-11-25),
    /// `2026-07-28` or `2025-11-25`.
    pub protocol: Option<Protocol>,
    /// The data class of what its tools return. Default `internal`.
    pub class: Option<DataClass>,
    /// Approve its tool definitions without `bulwark mcp approve`. Default false.
    #[serde(default)]
    pub auto_approve: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesRoot {
    pub name: String,
    pub path: PathBuf,
    /// The data class of its files. Default `internal`.
    pub class: Option<DataClass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqliteDb {
    pub name: String,
    pub path: PathBuf,
    /// The data class of what it holds. Default `internal`.
    pub class: Option<DataClass>,
    /// Most rows a query returns (the rest are cut, and the result says so). Default 1000.
    pub max_rows: Option<usize>,
    /// Longest a query may run, in milliseconds. Default 2000.
    pub timeout_ms: Option<u64>,
}

/// The MCP protocol revision spoken to an upstream server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// The current revision if the server offers it, else the session-based one.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// The current, stateless revision.
    #[serde(rename = "2026-07-28")]
    Stateless,
    /// The session-based revision most deployed servers speak.
    #[serde(rename = "2025-11-25")]
    Sessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInjection {
    Block,
    Flag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    pub servers: Vec<McpServerConfig>,
    pub files: Vec<FilesRoot>,
    pub sqlite: Vec<SqliteDb>,
    pub anonymous_tools: Vec<String>,
    pub on_injection: OnInjection,
    pub call_timeout: std::time::Duration,
    pub page_size: Option<std::num::NonZeroUsize>,
    pub arguments: Vec<ArgumentRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub name: String,
    pub transport: Transport,
    pub protocol: Protocol,
    pub class: DataClass,
    pub auto_approve: bool,
}

/// How an upstream MCP server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process over stdio.
    Stdio {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A remote server over Streamable HTTP.
    Http {
        url: String,
        /// The variable the bearer token is read from (at each connection).
        bearer_token_env: Option<String>,
    },
}

/// A constraint on one argument of the tools a pattern names.
#[derive(Debug, Clone)]
pub struct ArgumentRule {
    pub tool: String,
    pub argument: String,
    pub required: bool,
    pub regex: Option<regex::Regex>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub max_length: Option<usize>,
    pub maximum: Option<f64>,
    /// Canonical.
    pub under: Option<PathBuf>,
}

/// What makes two rules the same (a compiled regex is compared by its pattern).
type RuleIdentity<'a> = (
    &'a str,
    &'a str,
    bool,
    Option<&'a str>,
    &'a Option<Vec<serde_json::Value>>,
    Option<usize>,
    Option<u64>,
    &'a Option<PathBuf>,
);

impl ArgumentRule {
    fn identity(&self) -> RuleIdentity<'_> {
        (
            &self.tool,
            &self.argument,
            self.required,
            self.regex.as_ref().map(regex::Regex::as_str),
            &self.one_of,
            self.max_length,
            self.maximum.map(f64::to_bits),
            &self.under,
        )
    }
}

impl PartialEq for ArgumentRule {
    fn eq(&self, o: &Self) -> bool {
        self.identity() == o.identity()
    }
}

impl Eq for ArgumentRule {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesRoot {
    pub name: String,
    /// Canonical (symlinks resolved), so that containment is a prefix test.
    pub path: PathBuf,
    pub class: DataClass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteDb {
    pub name: String,
    pub path: PathBuf,
    pub class: DataClass,
    pub max_rows: usize,
    pub timeout: std::time::Duration,
}

/// The name of the built-in SQLite server (its tool is `sqlite__query`).
pub const SQLITE_SERVER: &str = "sqlite";

/// The name of the built-in files server (its tools are `files__list` ...).
pub const FILES_SERVER: &str = "files";

/// A server or root name: lower-case ASCII letters, digits, `-` and `_`, without `__`
/// (which separates a server from its tool in the names clients see).
fn check_name(what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.contains("__");
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: `{name}` must be 1 to 64 of a-z, 0-9, `-` and `_`, without `__`"
        )))
    }
}

impl RawMcp {
    /// `None` when nothing is configured (the endpoint is off).
    pub fn validate(self, base: &Path) -> Result<Option<McpConfig>, ConfigError> {
        if self.servers.is_empty() && self.files.is_empty() && self.sqlite.is_empty() {
            return Ok(None);
        }
        let mut names = std::collections::BTreeSet::new();
        let mut servers = Vec::new();
        for s in self.servers {
            check_name("mcp.servers.name", &s.name)?;
            if s.name == FILES_SERVER || s.name == SQLITE_SERVER {
                return Err(invalid(format!(
                    "mcp.servers: `{}` is a built-in server's name; pick another",
                    s.name
                )));
            }
            if !names.insert(s.name.clone()) {
                return Err(invalid(format!(
                    "mcp.servers: `{}` is defined twice",
                    s.name
                )));
            }
            let transport = match (s.command, s.url) {
                (Some(command), None) => {
                    if command.first().is_none_or(|c| c.trim().is_empty()) {
                        return Err(invalid(format!(
                            "mcp.servers `{}`: command must name a program",
                            s.name
                        )));
                    }
                    if s.bearer_token_env.is_some() {
                        return Err(invalid(format!(
                            "mcp.servers `{}`: bearer_token_env is for a `url` server; give a child its secrets in `env`",
                            s.name
                        )));
                    }
                    Transport::Stdio {
                        command,
                        env: s.env,
                    }
                }
                (None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(format!(
                            "mcp.servers `{}`: url must start with http:// or https://",
                            s.name
                        )));
                    }
                    if !s.env.is_empty() {
                        return Err(invalid(format!(
                            "mcp.servers `{}`: env is for a `command` server",
                            s.name
                        )));
                    }
                    if s
                        .bearer_token_env
                        .as_ref()
                        .is_some_and(|v| v.is_empty() || v.contains('='))
                    {
                        return Err(invalid(format!(
                            "mcp.servers `{}`: bearer_token_env must name an environment variable",
                            s.name
                        )));
                    }
                    Transport::Http {
                        url,
                        bearer_token_env: s.bearer_token_env,
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "mcp.servers `{}`: give either command (a child over stdio) or url (Streamable HTTP), not both",
                        s.name
                    )))
                }
            };
            servers.push(McpServerConfig {
                name: s.name,
                transport,
                protocol: s.protocol.unwrap_or_default(),
                class: s.class.unwrap_or(DataClass::Internal),
                auto_approve: s.auto_approve,
            });
        }
        let mut roots = std::collections::BTreeSet::new();
        let mut files = Vec::new();
        for r in self.files {
            check_name("mcp.files.name", &r.name)?;
            if !roots.insert(r.name.clone()) {
                return Err(invalid(format!("mcp.files: `{}` is defined twice", r.name)));
            }
            let path = base.join(&r.path);
            let path = std::fs::canonicalize(&path)
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| {
                    invalid(format!(
                        "mcp.files `{}`: `{}` is not a directory",
                        r.name,
                        path.display()
                    ))
                })?;
            files.push(FilesRoot {
                name: r.name,
                path,
                class: r.class.unwrap_or(DataClass::Internal),
            });
        }
        let mut dbs = std::collections::BTreeSet::new();
        let mut sqlite = Vec::new();
        for d in self.sqlite {
            check_name("mcp.sqlite.name", &d.name)?;
            if !dbs.insert(d.name.clone()) {
                return Err(invalid(format!(
                    "mcp.sqlite: `{}` is defined twice",
                    d.name
                )));
            }
            let path = base.join(&d.path);
            if !path.is_file() {
                return Err(invalid(format!(
                    "mcp.sqlite `{}`: `{}` is not a file",
                    d.name,
                    path.display()
                )));
            }
            if d.max_rows == Some(0) || d.timeout_ms == Some(0) {
                return Err(invalid(format!(
                    "mcp.sqlite `{}`: max_rows and timeout_ms must be at least 1",
                    d.name
                )));
            }
            sqlite.push(SqliteDb {
                name: d.name,
                path,
                class: d.class.unwrap_or(DataClass::Internal),
                max_rows: d.max_rows.unwrap_or(1000),
                timeout: std::time::Duration::from_millis(d.timeout_ms.unwrap_or(2000)),
            });
        }
        for p in &self.anonymous_tools {
            if p.trim().is_empty() {
                return Err(invalid("mcp.anonymous_tools: patterns must not be empty"));
            }
        }
        let call_timeout = match self.call_timeout_ms {
            Some(0) => return Err(invalid("mcp.call_timeout_ms must be at least 1")),
            Some(n) => std::time::Duration::from_millis(n),
            None => std::time::Duration::from_secs(60),
        };
        let page_size = match self.page_size {
            Some(0) => return Err(invalid("mcp.page_size must be at least 1")),
            n => n.and_then(std::num::NonZeroUsize::new),
        };
        let arguments = self
            .arguments
            .into_iter()
            .map(|r| r.validate(base))
            .collect::<Result<_, _>>()?;
        Ok(Some(McpConfig {
            arguments,
            servers,
            files,
            sqlite,
            anonymous_tools: self.anonymous_tools,
            on_injection: self.on_injection.unwrap_or(OnInjection::Block),
            call_timeout,
            page_size,
        }))
    }
}

impl RawArgumentRule {
    fn validate(self, base: &Path) -> Result<ArgumentRule, ConfigError> {
        let what = format!("mcp.arguments `{}` `{}`", self.tool, self.argument);
        if self.tool.trim().is_empty() || self.argument.is_empty() {
            return Err(invalid(format!("{what}: tool and argument must be named")));
        }
        let regex = match self.regex {
            Some(r) => Some(
                regex::Regex::new(&r)
                    .map_err(|e| invalid(format!("{what}: regex does not compile: {e}")))?,
            ),
            None => None,
        };
        let under = match self.under {
            Some(dir) => {
                let dir = base.join(dir);
                Some(
                    std::fs::canonicalize(&dir)
                        .ok()
                        .filter(|p| p.is_dir())
                        .ok_or_else(|| {
                            invalid(format!("{what}: `{}` is not a directory", dir.display()))
                        })?,
                )
            }
            None => None,
        };
        if self.maximum.is_some_and(|m| !m.is_finite()) {
            return Err(invalid(format!("{what}: maximum must be a number")));
        }
        if regex.is_none()
            && self.one_of.is_none()
            && self.max_length.is_none()
            && self.maximum.is_none()
            && under.is_none()
            && !self.required
        {
            return Err(invalid(format!(
                "{what}: give at least one of required, regex, enum, max_length, maximum, under"
            )));
        }
        Ok(ArgumentRule {
            tool: self.tool,
            argument: self.argument,
            required: self.required,
            regex,
            one_of: self.one_of,
            max_length: self.max_length,
            maximum: self.maximum,
            under,
        })
    }
}

/// Whether tool `name` (`server__tool`) matches one of `patterns`: a pattern is a
/// name, or ends in `*` (a prefix: `files__*`), or is `*` alone.
pub fn tool_allowed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<McpConfig>, ConfigError> {
        let raw: RawMcp = toml::from_str(text).unwrap();
        raw.validate(Path::new("/"))
    }

    #[test]
    fn nothing_configured_is_off() {
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn servers_and_roots_are_checked() {
        let ok = parse(
            r#"
            [[servers]]
            name = "notes"
            command = ["python3", "server.py"]
            [[files]]
            name = "tmp"
            path = "tmp"
            class = "confidential"
            "#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.servers[0].class, DataClass::Internal);
        assert_eq!(ok.servers[0].protocol, Protocol::Auto);
        assert_eq!(ok.files[0].class, DataClass::Confidential);
        assert_eq!(ok.on_injection, OnInjection::Block);
        for (bad, why) in [
            ("[[servers]]\nname = \"a__b\"\ncommand = [\"x\"]", "without `__`"),
            ("[[servers]]\nname = \"Notes\"\ncommand = [\"x\"]", "a-z"),
            ("[[servers]]\nname = \"files\"\ncommand = [\"x\"]", "built-in"),
            ("[[servers]]\nname = \"sqlite\"\ncommand = [\"x\"]", "built-in"),
            ("[[sqlite]]\nname = \"db\"\npath = \"/no/such.db\"", "not a file"),
            ("[[servers]]\nname = \"n\"\ncommand = []", "must name a program"),
            (
                "[[servers]]\nname = \"n\"\ncommand = [\"x\"]\n[[servers]]\nname = \"n\"\ncommand = [\"x\"]",
                "twice",
            ),
            ("[[files]]\nname = \"r\"\npath = \"/no/such/dir\"", "not a directory"),
            (
                "[[servers]]\nname = \"n\"\ncommand = [\"x\"]\nurl = \"http://h/mcp\"",
                "not both",
            ),
            ("[[servers]]\nname = \"n\"", "not both"),
            ("[[servers]]\nname = \"n\"\nurl = \"ftp://h/mcp\"", "http://"),
            (
                "[[servers]]\nname = \"n\"\ncommand = [\"x\"]\nbearer_token_env = \"T\"",
                "for a `url` server",
            ),
            (
                "[[servers]]\nname = \"n\"\nurl = \"http://h/mcp\"\nprotocol = \"2024-01-01\"",
                "unknown variant",
            ),
            (
                "[[files]]\nname = \"r\"\npath = \"tmp\"\n[[arguments]]\ntool = \"x\"\nargument = \"a\"",
                "at least one of",
            ),
            (
                "[[files]]\nname = \"r\"\npath = \"tmp\"\n[[arguments]]\ntool = \"x\"\nargument = \"a\"\nregex = \"(\"",
                "does not compile",
            ),
            (
                "[[files]]\nname = \"r\"\npath = \"tmp\"\n[[arguments]]\ntool = \"x\"\nargument = \"a\"\nunder = \"/no/such\"",
                "not a directory",
            ),
            ("call_timeout_ms = 0\n[[files]]\nname = \"r\"\npath = \"tmp\"", "at least 1"),
            ("page_size = 0\n[[files]]\nname = \"r\"\npath = \"tmp\"", "page_size must be at least 1"),
        ] {
            let e = match toml::from_str::<RawMcp>(bad) {
                Ok(raw) => raw.validate(Path::new("/")).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn patterns_are_names_or_prefixes() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tool_allowed(&p(&["*"]), "files__read"));
        assert!(tool_allowed(&p(&["files__*"]), "files__read"));
        assert!(!tool_allowed(&p(&["files__*"]), "notes__read"));
        assert!(tool_allowed(&p(&["notes__read"]), "notes__read"));
        assert!(!tool_allowed(&p(&["notes__read"]), "notes__readall"));
        assert!(!tool_allowed(&[], "files__read"));
    }
}
