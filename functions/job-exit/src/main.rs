//! `job-exit`: a job whose outcome is chosen by the `MODE` env var.
//!
//! * unset or `ok`: prints a line, exits 0;
//! * `fail`: `main` returns an error, exit status 1;
//! * `code:N`: exits with exactly N via `exit-with-code`.

fn main() -> Result<(), String> {
    let mode = hearth_sdk::job::env("MODE").unwrap_or_else(|| "ok".to_string());
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
