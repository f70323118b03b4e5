//! `herald`: everything is in the library; see [`herald::cli::run`].

fn main() -> std::process::ExitCode {
    herald::cli::run()
}
