//! Embeds the shipped `rules/` (minus `rules/tests/`) into the binary so
//! `rolegate demo` runs with zero files on disk. Generated, not hand-kept,
//! so a new rules file can never be forgotten.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, top: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !(dir == top && p.file_name().is_some_and(|n| n == "tests")) {
                collect(&p, top, out);
            }
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=rules");
    println!("cargo:rerun-if-changed=rolegate.yaml");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let rules = root.join("rules");
    let mut files = Vec::new();
    collect(&rules, &rules, &mut files);
    files.sort();
    let mut src = String::from(
        "/// The shipped rules files: (path relative to the repo, contents).\npub const EMBEDDED_RULES: &[(&str, &str)] = &[\n",
    );
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .expect("under root")
            .display()
            .to_string();
        src.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    src.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("embedded_rules.rs");
    std::fs::write(out, src).expect("write embedded_rules.rs");
}
