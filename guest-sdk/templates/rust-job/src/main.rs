//! `{{name}}`: a job. `hearth up` runs it once; its stdout and stderr are
//! the terminal's, and its exit status is `hearth up`'s. In Kubernetes it is
//! a Job's container (or a Deployment's, restarted when it exits).

use std::io::Read;

fn main() -> Result<(), String> {
    let who = hearth_sdk::job::env("WHO").unwrap_or_else(|| "world".to_string());
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|error| format!("reading stdin: {error}"))?;
    println!("Hello, {who}, from {{name}}! stdin had {} bytes", input.len());
    Ok(())
}
