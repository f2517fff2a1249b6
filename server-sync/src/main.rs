//! `fieldsync-server`: run the sync server, or administer its users, devices and grants.

fn main() -> std::process::ExitCode {
    fieldsync_server::cli::main()
}
