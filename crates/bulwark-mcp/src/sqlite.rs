//! The built-in `sqlite__query` tool: read-only SQL on configured database files.
//!
//! Read-only three times over: the file is opened read-only; `query_only` is set; and an
//! authorizer, consulted by SQLite for every action of every statement as it is
//! prepared, allows reading tables, `SELECT`, functions and recursive CTEs and denies
//! everything else (writes, `ATTACH`, `PRAGMA`, transactions, schema changes, virtual
//! tables), whatever the spelling, comments or nesting (a `WITH ... INSERT`, a trigger,
//! a view); and the statement must be one SQLite calls read-only that starts (past
//! comments) with `SELECT`, `WITH` or `VALUES`. One statement per call. Bounded: a query that runs longer than the
//! database's `timeout_ms` is interrupted, and at most `max_rows` rows come back.

use std::time::Instant;

use bulwark_config::mcp::SqliteDb;
use rmcp::model::{JsonObject, Tool};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

/// Longest SQL text accepted.
pub const MAX_SQL: usize = 10_000;

pub fn tools(dbs: &[SqliteDb]) -> Vec<Tool> {
    let names: Vec<&str> = dbs.iter().map(|d| d.name.as_str()).collect();
    let schema = json!({
        "type": "object",
        "properties": {
            "database": {"type": "string", "enum": names, "description": "Which database."},
            "sql": {"type": "string", "minLength": 1, "maxLength": MAX_SQL, "description": "One read-only statement (SELECT or WITH ... SELECT)."}
        },
        "required": ["database", "sql"],
        "additionalProperties": false
    });
    vec![Tool::new(
        "query",
        "Run one read-only SQL query (SQLite dialect) on a database and return its columns and rows. `SELECT name, sql FROM sqlite_schema` lists the tables.",
        schema.as_object().cloned().unwrap_or_default(),
    )]
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Read { .. }
        | AuthAction::Select
        | AuthAction::Function { .. }
        | AuthAction::Recursive => Authorization::Allow,
        _ => Authorization::Deny,
    }
}

/// The statement's first word, past whitespace and comments, upper-cased.
fn first_word(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn cell(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(format!("<blob, {} bytes>", b.len())),
    }
}

/// Runs the query: the result's JSON text, or why not.
pub fn query(dbs: &[SqliteDb], args: &JsonObject) -> Result<String, String> {
    let name = args.get("database").and_then(Value::as_str).unwrap_or("");
    let db = dbs
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("no database named `{name}`"))?;
    let sql = args.get("sql").and_then(Value::as_str).unwrap_or("");
    if sql.len() > MAX_SQL {
        return Err(format!("the query is longer than {MAX_SQL} bytes"));
    }
    let conn = Connection::open_with_flags(
        &db.path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("the database could not be opened: {e}"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| format!("the database could not be opened read-only: {e}"))?;
    conn.authorizer(Some(authorize));
    let started = Instant::now();
    let timeout = db.timeout;
    conn.progress_handler(1000, Some(move || started.elapsed() > timeout));
    let mut stmt = conn.prepare(sql).map_err(|e| {
        let e = e.to_string();
        if e.contains("not authorized") {
            "only read-only queries are allowed (SELECT, or WITH ... SELECT)".to_owned()
        } else {
            format!("the query is not valid: {e}")
        }
    })?;
    if !stmt.readonly() || !matches!(first_word(sql).as_str(), "SELECT" | "WITH" | "VALUES") {
        return Err("only read-only queries are allowed (SELECT, or WITH ... SELECT)".into());
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let n = columns.len();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    let mut truncated = false;
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                if out.len() == db.max_rows {
                    truncated = true;
                    break;
                }
                let values: Vec<Value> = (0..n)
                    .map(|i| row.get_ref(i).map(cell).unwrap_or(Value::Null))
                    .collect();
                out.push(values);
            }
            Ok(None) => break,
            Err(e) if started.elapsed() > timeout => {
                let _ = e;
                return Err(format!(
                    "the query ran longer than {} ms and was stopped",
                    timeout.as_millis()
                ));
            }
            Err(e) => return Err(format!("the query failed: {e}")),
        }
    }
    Ok(json!({"columns": columns, "rows": out, "truncated": truncated}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_policy::DataClass;
    use std::time::Duration;

    fn setup() -> (tempfile::TempDir, Vec<SqliteDb>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, photo BLOB);
             INSERT INTO customers (name, email, photo) VALUES ('Ada', 'ada@example.com', x'0102'), ('Bo', NULL, NULL);
             CREATE VIEW names AS SELECT name FROM customers;",
        )
        .unwrap();
        drop(conn);
        let dbs = vec![SqliteDb {
            name: "crm".into(),
            path,
            class: DataClass::Confidential,
            max_rows: 1,
            timeout: Duration::from_millis(300),
        }];
        (dir, dbs)
    }

    fn run(dbs: &[SqliteDb], sql: &str) -> Result<Value, String> {
        let args = json!({"database": "crm", "sql": sql});
        query(dbs, args.as_object().unwrap()).map(|s| serde_json::from_str(&s).unwrap())
    }

    #[test]
    fn reads_are_answered_and_bounded_in_rows() {
        let (_dir, dbs) = setup();
        let r = run(&dbs, "SELECT name, email, photo FROM customers ORDER BY id").unwrap();
        assert_eq!(r["columns"], json!(["name", "email", "photo"]));
        assert_eq!(
            r["rows"],
            json!([["Ada", "ada@example.com", "<blob, 2 bytes>"]])
        );
        assert_eq!(r["truncated"], json!(true));
        let r = run(&dbs, "WITH RECURSIVE n(x) AS (SELECT 1) SELECT x FROM n").unwrap();
        assert_eq!(r["rows"], json!([[1]]));
        assert!(run(&dbs, "SELECT name FROM sqlite_schema").is_ok());
        assert!(run(&dbs, "SELECT * FROM names").is_ok());
    }

    #[test]
    fn nothing_can_write_attach_or_change_settings() {
        let (dir, dbs) = setup();
        let other = dir.path().join("other.db");
        for sql in [
            "INSERT INTO customers (name) VALUES ('x')",
            "UPDATE customers SET name = 'x'",
            "DELETE FROM customers",
            "DROP TABLE customers",
            "CREATE TABLE t (x)",
            "CREATE TEMP TABLE t (x)",
            "ALTER TABLE customers ADD COLUMN y",
            &format!("ATTACH DATABASE '{}' AS o", other.display()),
            "DETACH DATABASE main",
            "PRAGMA query_only = OFF",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA writable_schema = ON",
            "BEGIN",
            "SAVEPOINT s",
            "VACUUM",
            "REINDEX",
            "ANALYZE",
            "WITH x AS (SELECT 1) INSERT INTO customers (name) SELECT * FROM x",
            "/* SELECT */ INSERT INTO customers (name) VALUES ('x')",
            "SELECT 1; INSERT INTO customers (name) VALUES ('x')",
            "CREATE TRIGGER t AFTER INSERT ON customers BEGIN DELETE FROM customers; END",
            "SELECT load_extension('x')",
        ] {
            assert!(run(&dbs, sql).is_err(), "{sql}");
        }
        assert!(!other.exists(), "ATTACH created a file");
        let r = run(&dbs, "SELECT count(*) FROM customers").unwrap();
        assert_eq!(r["rows"], json!([[2]]));
    }

    #[test]
    fn the_first_word_is_found_past_comments() {
        assert_eq!(first_word("  -- x\n /* y */ select 1"), "SELECT");
        assert_eq!(first_word("/* unterminated"), "");
        assert_eq!(first_word("REINDEX"), "REINDEX");
    }

    #[test]
    fn a_long_query_is_stopped() {
        let (_dir, dbs) = setup();
        let e = run(
            &dbs,
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
        )
        .unwrap_err();
        assert!(e.contains("ran longer than 300 ms"), "{e}");
    }
}
