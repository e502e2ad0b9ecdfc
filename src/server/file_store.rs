//! The folder a server serves files from. Only plain names of regular files inside the folder
//! are served: no paths, no `..`, no symlinks that lead outside.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Code, Error};

/// Longest file name served, in bytes (the usual file-system limit).
const MAX_NAME_LEN: usize = 255;

/// The files folder.
#[derive(Debug, Clone)]
pub(crate) struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens the folder; a message when it does not exist or is not a folder.
    pub fn new(root: &Path) -> Result<FileStore, String> {
        let root = root.canonicalize().map_err(|e| {
            format!(
                "files folder {}: {e} (run from the project folder, or pass --files)",
                root.display()
            )
        })?;
        if !root.is_dir() {
            return Err(format!("files folder {} is not a folder", root.display()));
        }
        Ok(FileStore { root })
    }

    /// Opens file `name` for reading and returns it with its length.
    ///
    /// # Errors
    /// [`Code::Forbidden`] for a name that is not a plain file name or that leads outside the
    /// folder, [`Code::NotFound`] when there is no such regular file.
    pub fn open(&self, name: &str) -> Result<(File, u64), Error> {
        check_file_name(name)?;
        let not_found = || Code::NotFound.msg(format!("no such file: {name}"));
        let fail = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => not_found(),
            _ => Code::Internal.msg(format!("cannot open {name}: {e}")),
        };
        let real = self.root.join(name).canonicalize().map_err(fail)?;
        if !real.starts_with(&self.root) {
            return Err(Code::Forbidden.msg(format!("{name} leads outside the files folder")));
        }
        // Looked at before opening too: opening a FIFO or a device can block, or never end.
        if !fs::metadata(&real).map_err(fail)?.is_file() {
            return Err(not_found());
        }
        let file = File::open(&real).map_err(fail)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(not_found());
        }
        Ok((file, meta.len()))
    }
}

/// Checks that `name` is one plain file name: no separators, no `..`, no control characters,
/// at most [`MAX_NAME_LEN`] bytes. The client applies the same rule before saving a download.
///
/// # Errors
/// [`Code::Forbidden`] saying what is wrong with the name.
pub(crate) fn check_file_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Code::Forbidden.msg(format!("{why}: ask for a plain file name")));
    if name.len() > MAX_NAME_LEN {
        return bad("file name is over 255 bytes");
    }
    if name.contains(['/', '\\']) {
        return bad("file name contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("file name contains a control character");
    }
    if name == "." || name == ".." {
        return bad("file name is a folder reference");
    }
    if name.contains(':') {
        return bad("file name contains a drive or stream separator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir::ScratchDir;
    use std::io::Read;

    /// A store over a scratch folder's `files/`, with a secret beside it to escape to.
    fn store(name: &str) -> (FileStore, ScratchDir) {
        let dir = ScratchDir::new(&format!("files-{name}"));
        fs::create_dir_all(dir.join("files/sub")).unwrap();
        fs::write(dir.join("files/hello.txt"), "hi").unwrap();
        fs::write(dir.join("secret.txt"), "secret").unwrap();
        (FileStore::new(&dir.join("files")).unwrap(), dir)
    }

    #[test]
    fn serves_plain_names() {
        let (s, _dir) = store("plain");
        let (mut f, len) = s.open("hello.txt").unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), len), ("hi", 2));
        assert_eq!(s.open("nope.txt").unwrap_err().code(), "not_found");
        assert_eq!(s.open("sub").unwrap_err().code(), "not_found");
    }

    #[test]
    fn refuses_names_that_escape() {
        let (s, dir) = store("escape");
        std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("files/link.txt")).unwrap();
        let long = "a".repeat(256);
        for name in [
            "../secret.txt",
            "..",
            ".",
            "/etc/passwd",
            "sub/../hello.txt",
            "..\\secret.txt",
            "C:secret.txt",
            "hello.txt\0",
            "link.txt",
            long.as_str(),
        ] {
            let e = s.open(name).unwrap_err();
            assert_eq!(e.code(), "forbidden", "{name:?}: {e}");
        }
    }
}
