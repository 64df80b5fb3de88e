//! A service whose build fails: this does not compile.
fn main() {
    let port: u16 = "not a number";
    println!("{port}");
}
