//! `bulwark audit export`: records as JSON lines, or as CSV for a spreadsheet (one
//! column per field; a tool call's and a passport's fields flattened into their own
//! columns; the passport's chain of agents joined by ` > `).

use std::io::Write;

use crate::Record;

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 28] = [
    "time_ms",
    "event",
    "request_id",
    "key_id",
    "tenant",
    "model",
    "target",
    "jurisdiction",
    "class",
    "status",
    "error",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cache",
    "guard",
    "decision",
    "response_sha256",
    "completed",
    "client_request_id",
    "watermark",
    "tool_server",
    "tool",
    "tool_arguments_sha256",
    "tool_result_sha256",
    "tool_is_error",
    "passport_id",
    "passport_chain",
];

/// Writes `records` as JSON lines.
pub fn jsonl<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    out: impl Write,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes `records` as CSV with a header row ([`CSV_COLUMNS`]).
pub fn csv<'a>(records: impl IntoIterator<Item = &'a Record>, out: impl Write) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    for r in records {
        let tool = r.tool.as_ref();
        let passport = r.passport.as_ref();
        w.write_record([
            r.time_ms.to_string(),
            r.event.as_str().to_owned(),
            r.request_id.clone(),
            opt(r.key_id.as_deref()),
            opt(r.tenant.as_deref()),
            r.model.clone(),
            r.target.clone(),
            opt(r.jurisdiction.as_deref()),
            opt(r.class.as_deref()),
            r.status.to_string(),
            opt(r.error.as_deref()),
            r.latency_ms.to_string(),
            opt(r.prompt_tokens),
            opt(r.completion_tokens),
            opt(r.cache.as_deref()),
            opt(r.guard.as_deref()),
            r.decision.clone(),
            opt(r.response_sha256.as_deref()),
            opt(r.completed),
            opt(r.client_request_id.as_deref()),
            opt(r.watermark.as_deref()),
            opt(tool.map(|t| t.server.as_str())),
            opt(tool.map(|t| t.tool.as_str())),
            opt(tool.map(|t| t.arguments_sha256.as_str())),
            opt(tool.and_then(|t| t.result_sha256.as_deref())),
            opt(tool.map(|t| t.is_error)),
            opt(passport.map(|p| p.id.as_str())),
            opt(passport.map(|p| p.chain.join(" > "))),
        ])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, PassportUse, ToolCall};

    #[test]
    fn csv_has_a_column_for_every_field_and_quotes_what_needs_it() {
        let records = [
            Record {
                time_ms: 7,
                request_id: "r1".into(),
                model: "smollm2".into(),
                target: "local".into(),
                decision: "local, \"quoted\"".into(),
                status: 200,
                ..Default::default()
            },
            Record {
                time_ms: 8,
                request_id: "r2".into(),
                model: "notes__add".into(),
                target: "notes".into(),
                event: Event::ToolCall,
                tool: Some(ToolCall {
                    server: "notes".into(),
                    tool: "add".into(),
                    arguments_sha256: "ab".into(),
                    result_sha256: Some("cd".into()),
                    is_error: false,
                }),
                passport: Some(PassportUse {
                    id: "p1".into(),
                    chain: vec!["planner".into(), "reader".into()],
                }),
                ..Default::default()
            },
        ];
        let mut out = Vec::new();
        csv(&records, &mut out).unwrap();
        let mut reader = ::csv::Reader::from_reader(out.as_slice());
        assert_eq!(reader.headers().unwrap().len(), CSV_COLUMNS.len());
        let rows: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let col = |row: &::csv::StringRecord, name: &str| {
            row[CSV_COLUMNS.iter().position(|c| *c == name).unwrap()].to_owned()
        };
        assert_eq!(col(&rows[0], "decision"), "local, \"quoted\"");
        assert_eq!(col(&rows[0], "tool"), "");
        assert_eq!(col(&rows[1], "event"), "tool_call");
        assert_eq!(col(&rows[1], "tool_result_sha256"), "cd");
        assert_eq!(col(&rows[1], "tool_is_error"), "false");
        assert_eq!(col(&rows[1], "passport_chain"), "planner > reader");
        let mut lines = Vec::new();
        jsonl(&records, &mut lines).unwrap();
        let back: Vec<Record> = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, records);
    }
}
