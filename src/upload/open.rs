//! Opening a local file so that only what the user put in a watched folder is ever read
//! (DESIGN.md invariant 9).
//!
//! Beneath a watch, a path is opened one component at a time from the watch's root with
//! `O_NOFOLLOW`: a symbolic link anywhere on the way (a queued file swapped for a link to a
//! secret, a parent folder swapped for a link to `/etc`) is refused, not followed. Whatever the
//! reach, only a regular file is opened: its type is checked before the open (so a FIFO or a
//! device is never opened at all) and again on the handle, which is opened with `O_NONBLOCK` so
//! that a file swapped for a FIFO between the two checks cannot block the worker. The portable
//! walk is used rather than Linux's `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` so that the
//! same code keeps the promise on macOS.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// How the engine may reach a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The path as given, links followed: the user named the file (`ferry push`), or the watch
    /// says `symlinks = "follow"`.
    AsGiven,
    /// Only beneath this folder, through no symbolic link: a watch's default.
    Beneath(PathBuf),
}

/// Why a file was not opened although it is there: it is not something Ferry may send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "it is a symbolic link (links are not followed unless the watch says symlinks = \"follow\")"
    )]
    Symlink,
    #[error(
        "a folder on its path is a symbolic link (links are not followed unless the watch says symlinks = \"follow\")"
    )]
    LinkedFolder,
    #[error("it is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is not inside its watched folder {0}")]
    Outside(PathBuf),
    #[error("it is another file than the one queued (device {device}, inode {inode})")]
    Replaced { device: u64, inode: u64 },
}

/// Why `open` failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not uploaded: {0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Opens `path` read-only as `reach` allows, only if it is a regular file. Blocking.
pub fn open(path: &Path, reach: &Reach) -> Result<File, OpenError> {
    match reach {
        Reach::AsGiven => open_as_given(path),
        Reach::Beneath(root) => open_beneath(root, path),
    }
}

fn open_as_given(path: &Path) -> Result<File, OpenError> {
    check_regular(std::fs::metadata(path)?.file_type())?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    check_regular(file.metadata()?.file_type())?;
    Ok(file)
}

fn open_beneath(root: &Path, path: &Path) -> Result<File, OpenError> {
    let relative = path
        .strip_prefix(root)
        .map_err(|_| Refusal::Outside(root.to_path_buf()))?;
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            _ => return Err(Refusal::Outside(root.to_path_buf()).into()),
        }
    }
    let Some((last, folders)) = names.split_last() else {
        return Err(Refusal::NotRegular("folder").into());
    };
    let mut folder = open_at(libc::AT_FDCWD, root.as_os_str(), libc::O_DIRECTORY)?;
    for name in folders {
        let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW;
        folder = open_at(folder.as_raw_fd(), name, flags).map_err(|error| {
            match kind_at(folder.as_raw_fd(), name) {
                Ok(kind) if kind == libc::S_IFLNK => OpenError::Refused(Refusal::LinkedFolder),
                _ => OpenError::Io(error),
            }
        })?;
    }
    match kind_at(folder.as_raw_fd(), last)? {
        libc::S_IFLNK => return Err(Refusal::Symlink.into()),
        libc::S_IFREG => {}
        other => return Err(Refusal::NotRegular(kind_name(other)).into()),
    }
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = File::from(open_at(folder.as_raw_fd(), last, flags).map_err(|error| {
        // Swapped for a link between the check and the open.
        if error.raw_os_error() == Some(libc::ELOOP) {
            OpenError::Refused(Refusal::Symlink)
        } else {
            OpenError::Io(error)
        }
    })?);
    check_regular(file.metadata()?.file_type())?;
    Ok(file)
}

fn check_regular(file_type: std::fs::FileType) -> Result<(), Refusal> {
    use std::os::unix::fs::FileTypeExt;
    let name = if file_type.is_file() {
        return Ok(());
    } else if file_type.is_dir() {
        "folder"
    } else if file_type.is_symlink() {
        return Err(Refusal::Symlink);
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Err(Refusal::NotRegular(name))
}

fn kind_name(kind: libc::mode_t) -> &'static str {
    match kind {
        libc::S_IFDIR => "folder",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFBLK | libc::S_IFCHR => "device",
        _ => "special file",
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(folder, name, O_RDONLY | O_CLOEXEC | flags)`.
fn open_at(folder: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; `folder` is an
    // open descriptor or AT_FDCWD.
    let fd = unsafe {
        libc::openat(
            folder,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file type bits (`S_IFMT`) of `name` in `folder`, without following a link.
fn kind_at(folder: RawFd, name: &OsStr) -> io::Result<libc::mode_t> {
    let name = c_name(name)?;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor, NUL-terminated name, and a buffer of the right type to fill.
    let result = unsafe {
        libc::fstatat(
            folder,
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat returned 0, so it filled the buffer.
    Ok(unsafe { stat.assume_init() }.st_mode & libc::S_IFMT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path, reach: &Reach) -> Option<Refusal> {
        match open(path, reach) {
            Err(OpenError::Refused(refusal)) => Some(refusal),
            Err(OpenError::Io(error)) => panic!("{}: unexpected error {error}", path.display()),
            Ok(_) => None,
        }
    }

    #[test]
    fn only_regular_files_beneath_the_root_through_no_link_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/plain"), b"ok").unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let beneath = Reach::Beneath(root.clone());
        let cases: &[(&str, &Reach, Option<Refusal>)] = &[
            ("sub/plain", &beneath, None),
            ("link", &beneath, Some(Refusal::Symlink)),
            ("linked/secret", &beneath, Some(Refusal::LinkedFolder)),
            ("fifo", &beneath, Some(Refusal::NotRegular("FIFO"))),
            ("sub", &beneath, Some(Refusal::NotRegular("folder"))),
            ("link", &Reach::AsGiven, None),
            ("linked/secret", &Reach::AsGiven, None),
            ("fifo", &Reach::AsGiven, Some(Refusal::NotRegular("FIFO"))),
        ];
        for (name, reach, expected) in cases {
            assert_eq!(
                &refusal(&root.join(name), reach),
                expected,
                "{name} {reach:?}"
            );
        }
        assert_eq!(
            refusal(&outside.join("secret"), &beneath),
            Some(Refusal::Outside(root.clone()))
        );
        assert_eq!(
            refusal(&root.join("sub/../link"), &beneath),
            Some(Refusal::Outside(root))
        );
    }
}
