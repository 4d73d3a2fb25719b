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

/// The workspace's packages: this one and every one under crates/.
fn packages() -> Vec<std::path::PathBuf> {
    let mut out = vec![root().to_path_buf()];
    for entry in std::fs::read_dir(root().join("crates")).expect("read crates") {
        let path = entry.expect("entry").path();
        if path.join("Cargo.toml").is_file() {
            out.push(path);
        }
    }
    out
}

/// What the workspace's compile reads, as top-level entries: each package's
/// manifest, src/ and build.rs, the files `include_str!` embeds and the
/// migrations `sqlx::migrate!` embeds (relative to its package).
fn compile_inputs() -> BTreeSet<String> {
    let mut inputs: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"]
        .into_iter()
        .map(String::from)
        .collect();
    let root_abs = root().canonicalize().expect("root");
    let top_of = |p: &Path| -> String {
        let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let rel = p
            .strip_prefix(&root_abs)
            .unwrap_or_else(|_| panic!("{} is outside the workspace", p.display()));
        let top = rel.components().next().expect("a component");
        top.as_os_str().to_string_lossy().into_owned()
    };
    for package in packages() {
        for file in ["Cargo.toml", "build.rs", "src"] {
            if package.join(file).exists() {
                inputs.insert(top_of(&package.join(file)));
            }
        }
        let mut stack = vec![package.join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let code = std::fs::read_to_string(&path).unwrap_or_default();
                for (macro_, relative_to_file) in
                    [("include_str!(\"", true), ("migrate!(\"", false)]
                {
                    for (at, _) in code.match_indices(macro_) {
                        let arg: String = code[at + macro_.len()..]
                            .chars()
                            .take_while(|c| *c != '"')
                            .collect();
                        let resolved = if relative_to_file {
                            path.parent().expect("parent").join(&arg)
                        } else {
                            package.join(&arg)
                        };
                        inputs.insert(top_of(&resolved));
                    }
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

/// The image carries what production runs and the benchmarks beside it, so
/// an operator can stress a deployment from inside the cluster.
#[test]
fn the_image_ships_the_daemon_and_the_bench_side_by_side() {
    let lines = dockerfile();
    let builder = stage(&lines, "builder");
    let build = builder
        .iter()
        .find(|l| l.contains("cargo build --release --locked"))
        .expect("the builder builds");
    for bin in ["event-backbone", "backbone-bench"] {
        assert!(build.contains(&format!("--bin {bin}")), "{build}");
    }
    let runtime = stage(&lines, "runtime");
    for bin in ["event-backbone", "backbone-bench"] {
        assert!(
            runtime.iter().any(|l| l.starts_with("COPY --from=builder")
                && l.ends_with(&format!("/usr/local/bin/{bin}"))),
            "the runtime image lacks /usr/local/bin/{bin}: {runtime:#?}"
        );
    }
    assert!(
        runtime
            .iter()
            .any(|l| l == r#"ENTRYPOINT ["/usr/local/bin/event-backbone"]"#),
        "the entry point stays the daemon"
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
