//! One temporary directory per server, removed when its [`TempDir`] drops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

use super::user::RunAs;

/// Longest parent path used as is; a longer `TMPDIR` is passed over for `/tmp`, because Unix
/// socket paths (which servers put in their directory) are limited to about 100 bytes.
const MAX_PARENT_LEN: usize = 40;

/// Where server directories are made: `/tmp` when servers run as another account (it must be
/// able to reach the directory, and `TMPDIR` may point inside root's home), else the usual
/// temporary directory unless its path is too long for Unix sockets.
fn parent_for(owner: &RunAs) -> PathBuf {
    let tmp = PathBuf::from("/tmp");
    if owner.is_other_user() {
        return tmp;
    }
    let usual = std::env::temp_dir();
    if usual.as_os_str().len() <= MAX_PARENT_LEN { usual } else { tmp }
}

/// Makes a fresh directory named `<prefix>XXXXXX` with mode 0755 and gives it to `owner`.
/// Dropping the returned [`TempDir`] removes it and everything in it.
pub fn server_dir(prefix: &str, owner: &RunAs) -> Result<TempDir> {
    let parent = parent_for(owner);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    set_mode(dir.path(), 0o755)?;
    owner.chown(dir.path())?;
    Ok(dir)
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Writes `contents` to `path` with mode `mode` and gives it to `owner`.
pub fn write_file(path: &Path, contents: &str, mode: u32, owner: &RunAs) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)?;
    owner.chown(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_traversable_and_removed_on_drop() -> Result<()> {
        let owner = RunAs::for_servers()?;
        let dir = server_dir("gatehouse-testkit-selftest-", &owner)?;
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        drop(dir);
        assert!(!path.exists());
        Ok(())
    }
}
