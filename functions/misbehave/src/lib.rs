//! `misbehave`: every way a function can go wrong, one path each, so tests
//! can show the host survives them.
//!
//! * `/ok`: 200 "ok".
//! * `/trap`: panics (a wasm trap).
//! * `/loop`: spins forever (the epoch deadline must stop it).
//! * `/sleep?ms=N`: blocks in a host call for N ms (the host timer must stop it).
//! * `/grow?mib=N`: allocates and touches N MiB (the memory limit must stop it).
//! * `/body-len`: reads the whole body and answers its length.
//! * `/print`: writes a line to stdout and one to stderr.
//! * `/chatter?lines=N`: writes N lines to stdout (a guest printing in a
//!   loop; the host must bound what waits for a slow log reader).
//! * `/remember?mib=N`: answers `mark=M nonzero=Z`: M is a value in the
//!   component's initial memory (`0x5eed` in a fresh instance), Z the
//!   nonzero bytes in N MiB the allocator hands out as zeroed (fresh linear
//!   memory, not cleared again: 0 in a fresh instance). It then changes the
//!   value and fills the N MiB, so an instance that saw an earlier one's
//!   memory would answer otherwise.

use hearth_sdk::http::{Request, Response, Service};
use std::sync::atomic::{AtomicU64, Ordering};

/// In the initial memory image; `/remember` changes it.
static MARK: AtomicU64 = AtomicU64::new(0x5eed);

struct Misbehave;

fn query_number(request: &Request, key: &str, default: u64) -> u64 {
    request
        .path_with_query
        .split_once('?')
        .and_then(|(_, query)| {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.parse().ok()).flatten()
            })
        })
        .unwrap_or(default)
}

impl Service for Misbehave {
    fn handle(request: Request) -> Response {
        match request.path() {
            "/ok" => Response::text(200, "ok\n"),
            "/trap" => panic!("misbehave: deliberate panic"),
            "/loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "/sleep" => {
                let ms = query_number(&request, "ms", 60_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Response::text(200, "slept\n")
            }
            "/grow" => {
                let mib = query_number(&request, "mib", 1024) as usize;
                let mut block = vec![0u8; mib << 20];
                for page in block.chunks_mut(64 << 10) {
                    page[0] = 1;
                }
                Response::text(
                    200,
                    format!("grew {} bytes\n", std::hint::black_box(block).len()),
                )
            }
            "/body-len" => Response::text(200, format!("{}\n", request.body.len())),
            "/print" => {
                println!("misbehave: to stdout");
                eprintln!("misbehave: to stderr");
                Response::text(200, "printed\n")
            }
            "/chatter" => {
                let lines = query_number(&request, "lines", 1000);
                for n in 0..lines {
                    println!("misbehave: chatter line {n} of {lines}");
                }
                Response::text(200, format!("printed {lines} lines\n"))
            }
            "/remember" => {
                let mib = query_number(&request, "mib", 8) as usize;
                let seen = MARK.swap(0xdead_beef, Ordering::SeqCst);
                let mut block = vec![0u8; mib << 20];
                let nonzero = block.iter().filter(|byte| **byte != 0).count();
                block.fill(0xab);
                std::hint::black_box(&block);
                Response::text(200, format!("mark={seen:#x} nonzero={nonzero}\n"))
            }
            other => Response::text(404, format!("no such path: {other}\n")),
        }
    }
}

hearth_sdk::export_service!(Misbehave);
