//! `bulwark watermark ...`: tell whether a text carries the local models' watermark.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bulwark_engine::watermark::WatermarkKey;
use bulwark_server::watermark::Report;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum WatermarkCommand {
    /// Score a text (a file, or `-` for stdin) for the watermark: prints the tokens
    /// scored, the green ones, the z-score, the p-value (how likely text without the
    /// mark scores as high) and a verdict: watermarked, not_watermarked, or too_short
    /// when there is too little text to decide.
    Detect {
        /// The file to read, `-` for stdin.
        file: PathBuf,
        /// The key file (default: `watermark.key` in the config's data directory).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The local model whose tokenizer reads the text (may be left out when the
        /// config serves one).
        #[arg(long)]
        model: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(command: WatermarkCommand) -> Result<()> {
    let WatermarkCommand::Detect {
        file,
        key,
        model,
        config,
    } = command;
    let config = crate::load_config(config.as_deref())?;
    let local = match (&model, config.local_models.as_slice()) {
        (Some(name), all) => all
            .iter()
            .find(|m| &m.name == name)
            .with_context(|| format!("no local model named `{name}` in the config"))?,
        (None, [one]) => one,
        (None, []) => {
            anyhow::bail!("the config serves no local model, whose tokenizer would read the text")
        }
        (None, _) => anyhow::bail!("the config serves several local models: name one with --model"),
    };
    let key_path = key.unwrap_or_else(|| {
        config
            .server
            .data_dir
            .join(bulwark_server::WATERMARK_KEY_FILE)
    });
    let key = WatermarkKey::load(&key_path)?;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    let tokenizer = bulwark_engine::Tokenizer::load(&local.path)?;
    let report = Report::new(&local.name, &key, key.detect(&tokenizer.tokens(&text)));
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
