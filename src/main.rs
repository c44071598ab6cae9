fn main() {
    std::process::exit(adjq::cli::main());
}
