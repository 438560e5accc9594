fn main() {
    std::process::exit(fdopen::cli::server::main());
}
