//! Re-embeds the web console whenever `web/dist` changes (rust-embed only
//! tracks the files it found when it last ran).

fn main() {
    println!("cargo:rerun-if-changed=../../web/dist");
}
