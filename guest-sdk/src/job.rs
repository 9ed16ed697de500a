//! Jobs: a job is a plain Rust binary (`fn main`) built for `wasm32-wasip2`.
//! Its exit status is the task's. Use [`exit`] for a code other than 0 or 1.

/// Ends the job with `code` as its exit status (`wasi:cli/exit.exit-with-code`).
pub fn exit(code: u8) -> ! {
    crate::job_bindings::wasi::cli::exit::exit_with_code(code);
    unreachable!("exit-with-code returned")
}

/// The value of environment variable `name`, if set.
pub fn env(name: &str) -> Option<String> {
    crate::job_bindings::wasi::cli::environment::get_environment()
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
}
