fn main() {
    std::process::exit(fdopen::cli::client::main());
}
