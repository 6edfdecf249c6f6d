//! Store benchmark (accept → fetch → ack); filled in below.
fn main() {}
