//! Command-line entry point.

fn main() -> std::process::ExitCode {
    eprintln!("error: this command is not built yet; see the open issues");
    std::process::ExitCode::FAILURE
}
