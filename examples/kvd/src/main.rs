//! `kvd`: the reference deterministic daemon (see the `cttm_kvd` crate documentation for the
//! protocol and [`cttm_kvd::cli`] for the command line).

fn main() -> std::process::ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    cttm_kvd::cli::main(&arguments)
}
