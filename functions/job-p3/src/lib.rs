//! `job-p3`: a WASI 0.3 job (a library: a Rust binary would also export
//! std's `wasi:cli/run@0.2`). It prints a line, then exits with `EXIT_CODE`
//! (default 0) through `wasi:cli/exit@0.3.0`'s `exit-with-code`; with
//! `FAIL=1` it returns `Err` from `run` instead (exit status 1).

use hearth_sdk::p3::{self, Job};

struct Exit;

impl Job for Exit {
    async fn run() -> Result<(), ()> {
        println!("job-p3 ran");
        if std::env::var("FAIL").is_ok_and(|v| v == "1") {
            return Err(());
        }
        let code: u8 = std::env::var("EXIT_CODE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if code != 0 {
            p3::exit_with_code(code);
        }
        Ok(())
    }
}

hearth_sdk::export_p3_job!(Exit);
