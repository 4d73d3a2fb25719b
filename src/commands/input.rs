//! Command input: a file, or stdin when the path is absent or `-`.

use std::path::PathBuf;

/// Reads a file, or stdin when the path is absent or `-`.
pub fn read_input(path: Option<&PathBuf>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    match path {
        Some(p) if p.as_os_str() != "-" => std::fs::read(p),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}
