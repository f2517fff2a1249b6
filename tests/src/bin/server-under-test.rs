//! The sync server binary, built inside this crate so that its tests can start real server
//! processes (`CARGO_BIN_EXE_server-under-test`).

fn main() -> std::process::ExitCode {
    fieldsync_server::cli::main()
}
