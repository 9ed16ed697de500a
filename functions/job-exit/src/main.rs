//! `job-exit`: a job whose outcome is chosen by the `MODE` env var.
//!
//! * unset or `ok`: prints a line, exits 0;
//! * `fail`: `main` returns an error, exit status 1;
//! * `code:N`: exits with exactly N via `exit-with-code`;
//! * `cat`: copies stdin to stdout byte for byte (nothing added), then
//!   writes `job-exit: copied N bytes` to stderr with no newline.

use std::io::{Read, Write};

fn main() -> Result<(), String> {
    let mode = hearth_sdk::job::env("MODE").unwrap_or_else(|| "ok".to_string());
    if mode == "cat" {
        let mut input = Vec::new();
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| format!("job-exit: reading stdin: {e}"))?;
        let mut stdout = std::io::stdout();
        stdout.write_all(&input).map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
        let mut stderr = std::io::stderr();
        write!(stderr, "job-exit: copied {} bytes", input.len()).map_err(|e| e.to_string())?;
        return Ok(());
    }
    println!("job-exit: running with MODE={mode}");
    match mode.as_str() {
        "ok" => Ok(()),
        "fail" => Err("job-exit: failing as asked".to_string()),
        other => match other
            .strip_prefix("code:")
            .and_then(|n| n.parse::<u8>().ok())
        {
            Some(code) => hearth_sdk::job::exit(code),
            None => Err(format!("job-exit: unknown MODE `{other}`")),
        },
    }
}
