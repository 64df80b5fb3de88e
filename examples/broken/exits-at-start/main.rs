//! A service that builds but exits at once, as one with a missing setting would.
fn main() {
    eprintln!("exits-at-start: DATABASE_URL is not set, giving up");
    std::process::exit(3);
}
