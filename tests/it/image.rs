//! The Dockerfile, read as text (no Docker daemon on the build machines):
//! dependencies build in their own cached layer before the sources are
//! copied, and the builder gets every file the compile reads.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    // Join continuation lines so each instruction is one line.
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The instructions of the stage named `name` (`FROM … AS name`).
fn stage(lines: &[String], name: &str) -> Vec<String> {
    let start = lines
        .iter()
        .position(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}")))
        .unwrap_or_else(|| panic!("no stage {name} in the Dockerfile"));
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("FROM "))
        .cloned()
        .collect()
}

/// What the crate's compile reads besides src/: build.rs, the files
/// `include_str!` embeds and the migrations `sqlx::migrate!` embeds.
fn compile_inputs() -> BTreeSet<String> {
    let mut inputs: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "src"]
        .into_iter()
        .map(String::from)
        .collect();
    if root().join("build.rs").exists() {
        inputs.insert("build.rs".into());
    }
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap_or_default();
            for (macro_, relative_to_file) in [("include_str!(\"", true), ("migrate!(\"", false)] {
                for (at, _) in code.match_indices(macro_) {
                    let arg: String = code[at + macro_.len()..]
                        .chars()
                        .take_while(|c| *c != '"')
                        .collect();
                    let resolved = if relative_to_file {
                        let dir = path.parent().expect("parent");
                        dir.join(&arg)
                    } else {
                        root().join(&arg)
                    };
                    let resolved = resolved.canonicalize().unwrap_or(resolved);
                    let rel = resolved
                        .strip_prefix(root().canonicalize().expect("root"))
                        .unwrap_or_else(|_| panic!("{arg} is outside the crate"));
                    let top = rel.components().next().expect("a component");
                    inputs.insert(top.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
    }
    inputs
}

fn copied_sources(instr: &[String]) -> BTreeSet<String> {
    instr
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().skip(1).collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dependencies_build_in_a_layer_before_the_sources_arrive() {
    let lines = dockerfile();
    let builder = stage(&lines, "builder");
    let cook = builder
        .iter()
        .position(|l| l.contains("cargo chef cook"))
        .expect("the builder cooks the dependencies with cargo-chef");
    let recipe = builder
        .iter()
        .position(|l| l.starts_with("COPY --from=planner") && l.contains("recipe.json"))
        .expect("the builder copies the planner's recipe");
    let first_source = builder
        .iter()
        .position(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .expect("the builder copies the sources");
    let build = builder
        .iter()
        .position(|l| l.contains("cargo build --release --locked"))
        .expect("the builder builds the binary");
    assert!(
        recipe < cook && cook < first_source && first_source < build,
        "order must be recipe, cook, sources, build: {builder:#?}"
    );
    let cook_line = &builder[cook];
    assert!(
        !cook_line.contains("target=/src/target"),
        "a cache mount on target/ would keep the cooked dependencies out of the layer"
    );
    let planner = stage(&lines, "planner");
    assert!(planner.iter().any(|l| l.contains("cargo chef prepare")));
}

#[test]
fn the_builder_gets_every_file_the_compile_reads() {
    let lines = dockerfile();
    let copied = copied_sources(&stage(&lines, "builder"));
    let missing: Vec<_> = compile_inputs().difference(&copied).cloned().collect();
    assert!(
        missing.is_empty(),
        "the builder stage does not copy {missing:?}"
    );

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let hidden: Vec<_> = copied.intersection(&ignored).cloned().collect();
    assert!(
        hidden.is_empty(),
        ".dockerignore hides {hidden:?} from COPY"
    );
}

/// One reqwest: ours is the version the Google crates pull, so the image
/// (and every build) compiles one HTTP client stack, not two.
#[test]
fn one_reqwest_in_the_lock() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("read Cargo.lock");
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|p| p.contains("\nname = \"reqwest\"\n"))
        .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "reqwest versions in Cargo.lock: {versions:?}"
    );
}
