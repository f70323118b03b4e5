//! `herald-custom`: the Herald server, unchanged, with the `webhook.json` channel linked in.
//!
//! `extern crate … as _` makes sure the channel crate is linked, so its
//! `inventory::submit!` registration is seen by the server; everything else is
//! `herald::cli::run()` (the same `serve | token | send | migrate` command line).

extern crate herald_custom_channel as _;

fn main() -> std::process::ExitCode {
    herald::cli::run()
}
