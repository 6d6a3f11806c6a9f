fn main() -> std::process::ExitCode {
    ehrprep::cli::main()
}
