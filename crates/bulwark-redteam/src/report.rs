//! The report as one self-contained HTML page: no script, no external resource.

use std::fmt::Write as _;

use crate::{Outcome, Report};

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const COLUMNS: [Outcome; 9] = [
    Outcome::Through,
    Outcome::Blocked,
    Outcome::Flagged,
    Outcome::Defused,
    Outcome::Protected,
    Outcome::NotReproduced,
    Outcome::Answered,
    Outcome::FalseAlarm,
    Outcome::Error,
];

fn class(o: Outcome) -> &'static str {
    match o {
        Outcome::Through | Outcome::FalseAlarm | Outcome::Error => "bad",
        Outcome::Blocked | Outcome::Defused | Outcome::Protected | Outcome::Answered => "good",
        Outcome::Flagged | Outcome::NotReproduced => "meh",
    }
}

pub fn html(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Bulwark red team: {target}</title>\
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
.bad{{background:#fbd5d5}}.good{{background:#d7f2d9}}.meh{{background:#fff3c4}}td.n{{text-align:right}}\
code{{font-size:12px}}</style></head><body>\
<h1>Bulwark red team</h1><p>Target <code>{target}</code>, model <code>{model}</code>, probe set {set} ({date}), \
{n} probes in {secs:.1} s. <strong>{through} got through</strong>; {fa} false alarms on benign controls.</p>",
        target = escape(&r.target),
        model = escape(&r.model),
        set = escape(&r.probe_set),
        date = escape(&r.probe_set_date),
        n = r.results.len(),
        secs = r.seconds,
        through = r.through,
        fa = r.false_alarms,
    );
    h.push_str("<h2>By category</h2><table><tr><th>category</th>");
    for o in COLUMNS {
        let _ = write!(h, "<th>{}</th>", o.as_str());
    }
    h.push_str("</tr>");
    for (cat, counts) in &r.summary {
        let _ = write!(h, "<tr><td>{}</td>", escape(cat));
        for o in COLUMNS {
            let n = counts.get(&o).copied().unwrap_or(0);
            let cls = if n > 0 { class(o) } else { "" };
            let _ = write!(h, "<td class=\"n {cls}\">{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h2>Every probe</h2><table><tr><th>probe</th><th>category</th><th>outcome</th><th>status</th><th>guard</th><th>why</th><th>ms</th></tr>");
    for p in &r.results {
        let tags: Vec<String> = p
            .tags
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}: {}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td><code>{id}</code><br><small>{tags}</small></td><td>{cat}</td><td class=\"{cls}\">{out}</td><td>{status} {code}</td><td><code>{guard}</code></td><td>{note}</td><td class=\"n\">{ms}</td></tr>",
            id = escape(&p.id),
            tags = escape(&tags.join(", ")),
            cat = escape(&p.category),
            cls = class(p.outcome),
            out = p.outcome.as_str(),
            status = p.status,
            code = escape(p.code.as_deref().unwrap_or("")),
            guard = escape(p.guard.as_deref().unwrap_or("")),
            note = escape(&p.note),
            ms = p.latency_ms,
        );
    }
    h.push_str("</table></body></html>\n");
    h
}
