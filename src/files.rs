//! Reading the files a config names (the config itself, zone files, `token_file`,
//! `ca_file`, the MaxMind database, the state file): regular files only, opened without
//! blocking (a FIFO cannot stall a reload), and never more than a size limit, so that
//! `/dev/zero`, a device or a runaway file is an error with its path, not an abort on
//! allocation failure.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest file read by default (`[server] max_file_size`): zone files, the MaxMind
/// database, certificates and tokens. A GeoLite2 City database is about 70 MB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;
/// Largest config file read (it is read before any setting is known).
pub const MAX_CONFIG_SIZE: u64 = 16 * 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than allowed.
    #[error("{}: larger than the limit of {limit} bytes (server.max_file_size)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Not UTF-8 text.
    #[error("{}: not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

impl FileError {
    /// True when the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file system entry is, in words, when it is not a regular file.
pub fn irregular_kind(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("directory")
    } else if file_type.is_fifo() {
        Some("FIFO")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_block_device() {
        Some("block device")
    } else if file_type.is_socket() {
        Some("socket")
    } else {
        Some("special file")
    }
}

/// Checks that `path` may be replaced by a file gto writes (the state file): absent, or a regular file. A
/// symbolic link is followed only when `follow_symlinks` is set or it points to a file in
/// its own directory; the file written is then the link's target, and the link stays.
pub fn replaceable(path: &Path, follow_symlinks: bool) -> Result<PathBuf, String> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !metadata.file_type().is_symlink() {
        return match crate::files::irregular_kind(metadata.file_type()) {
            None => Ok(path.to_path_buf()),
            Some(kind) => Err(format!(
                "{} is a {kind}; the state file must be a regular file or absent",
                path.display()
            )),
        };
    }
    let link = std::fs::read_link(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let resolved = parent.join(&link);
    let inside = link.components().count() == 1 && !link.is_absolute();
    if !inside && !follow_symlinks {
        return Err(format!(
            "{} is a symbolic link out of its directory (to {}); set server.state_file_follow_symlinks = true to write through it",
            path.display(),
            link.display()
        ));
    }
    match std::fs::metadata(&resolved) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(resolved),
        Err(e) => Err(format!("{}: {e}", resolved.display())),
        Ok(metadata) => match crate::files::irregular_kind(metadata.file_type()) {
            None => Ok(resolved),
            Some(kind) => Err(format!(
                "{} points to a {kind} ({}); the state file must be a regular file or absent",
                path.display(),
                resolved.display()
            )),
        },
    }
}

/// Reads a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if let Some(kind) = irregular_kind(metadata.file_type()) {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    if metadata.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The file may grow while it is read: never take more than the limit.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Reads a regular UTF-8 text file of at most `limit` bytes.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read(path, limit)?).map_err(|_| FileError::NotText {
        path: path.to_path_buf(),
    })
}

/// A fingerprint of a directory and the files in it (names, sizes, modification and
/// status-change times, modes): it changes when a file is added, removed, renamed over,
/// rewritten or `chmod`ed (fixing a key's mode changes no directory time). `None` when the
/// directory cannot be read.
pub fn changed_at(dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let stamp = |m: &std::fs::Metadata, hasher: &mut std::collections::hash_map::DefaultHasher| {
        (
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.mode(),
        )
            .hash(hasher);
    };
    stamp(&std::fs::metadata(dir).ok()?, &mut hasher);
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| (entry.file_name(), entry.metadata().ok()))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, metadata) in &entries {
        name.hash(&mut hasher);
        if let Some(metadata) = metadata {
            stamp(metadata, &mut hasher);
        }
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_huge_files_are_errors_not_aborts() {
        let zero = read(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(zero.to_string().contains("character device"), "{zero}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Returns at once, although no writer ever opens the FIFO.
        let error = read(&fifo, 1024).unwrap_err();
        assert!(error.to_string().contains("FIFO"), "{error}");
        assert!(
            read(dir.path(), 1024)
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(matches!(read(&big, 1024), Err(FileError::TooLarge { .. })));
        assert_eq!(read(&big, 2048).unwrap().len(), 2048);
        assert!(
            read(&dir.path().join("absent"), 1)
                .unwrap_err()
                .is_not_found()
        );
    }
}
