fn main() -> std::process::ExitCode {
    netboot::cli::main()
}
