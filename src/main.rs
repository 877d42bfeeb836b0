//! The coreloop binary: flags -> Config -> run. See `coreloop --help`.

fn main() -> std::process::ExitCode {
    coreloop::cli::main()
}
