//! Tool calls read out of what a model wrote, for every template family: any text gives
//! calls or plain content, never a panic; a call's name is one of the known tools and its
//! arguments are a JSON object.
#![no_main]
use bulwark_api::tool_calls::{parse, Family};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let known = |name: &str| matches!(name, "get_weather" | "search" | "a");
    for family in [Family::Hermes, Family::Mistral, Family::Llama3, Family::Generic] {
        let parsed = parse(family, &text, &known);
        for (name, arguments) in &parsed.calls {
            assert!(known(name), "{family:?}: unknown tool {name:?}");
            let args: serde_json::Value =
                serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{family:?}: {e}"));
            assert!(args.is_object(), "{family:?}: {args}");
        }
    }
});
