//! The shared secret that lets a server join a balancer over the network (`--token-file`).

use std::fs;
use std::path::Path;

/// Reads a token file: its text, trimmed.
///
/// # Errors
/// A message when the file cannot be read or holds no token.
pub fn read(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "token file {} must hold one word, the shared secret (e.g. from `openssl rand -hex 16`)",
            path.display()
        ));
    }
    Ok(token.to_string())
}
