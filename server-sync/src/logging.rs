//! The server's log: one JSON object per line on stderr, each request's lines carrying its
//! request id, and panics written the same way (Automerge panics on some crafted input, which
//! the merge catches and refuses; the default hook would print a plain-text message and
//! backtrace in the middle of the JSON lines).

use std::panic::PanicHookInfo;

/// Starts JSON logging with the `FIELDSYNC_LOG` filter (`info` by default) and logs panics as
/// JSON warnings.
pub fn init() {
    // The PostgreSQL client's debug lines quote every statement's parameters (record values,
    // token ids), so no filter, however verbose, may turn them on.
    let quiet_postgres = "tokio_postgres=info"
        .parse()
        .expect("the directive is valid");
    let filter = tracing_subscriber::EnvFilter::try_from_env("FIELDSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(quiet_postgres);
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::panic::set_hook(Box::new(log_panic));
}

/// Logs a panic as one warning, in the span of the request it happened in: where it was and
/// the first 200 characters of its message, no backtrace. Most are Automerge's on hostile
/// input, caught and answered as a refused record; any other fails its request (500) and is
/// logged again as the request's error.
fn log_panic(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let message: String = message.chars().take(200).collect();
    let location = info
        .location()
        .map(|at| format!("{}:{}", at.file(), at.line()))
        .unwrap_or_default();
    tracing::warn!(panic = %message, %location, "a panic (Automerge's on crafted input is caught and the record refused)");
}
