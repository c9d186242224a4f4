//! `schema_gbnf < SCHEMA.json`: the GBNF grammar the engine samples a JSON Schema under
//! (llama.cpp's converter, compact; see `bulwark_engine::json_schema_gbnf`), so that a
//! benchmark can give another runtime exactly the same grammar.

use std::io::Read;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut schema = String::new();
    std::io::stdin().read_to_string(&mut schema)?;
    let schema: serde_json::Value = serde_json::from_str(&schema)?;
    println!("{}", bulwark_engine::json_schema_gbnf(&schema)?);
    Ok(())
}
