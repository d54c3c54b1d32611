//! What the commands print. A reader that goes away (`ferry jobs | head -1`) is no reason to
//! panic: what it did not read it did not want. Standard output's write errors come back as
//! `io::Error`, and the binary ends quietly with exit code 0 on a broken pipe, as ripgrep
//! does; lines on standard error, and the start-up lines of the long-running commands, are
//! best effort. Depends on nothing else in the crate.

use std::io::{self, Write};

/// Writes `text` to standard output.
pub fn out(text: &str) -> io::Result<()> {
    io::stdout().lock().write_all(text.as_bytes())
}

/// Writes `text` and a newline to standard output.
pub fn outln(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.write_all(b"\n")
}

/// Writes `text` and a newline to standard output, ignoring a reader that went away (a
/// daemon's start-up lines: it keeps running whoever reads them).
pub fn outln_best_effort(text: &str) {
    let _ = outln(text);
}

/// Writes `text` and a newline to standard error, ignoring a reader that went away.
pub fn errln(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_all(text.as_bytes())
        .and_then(|()| stderr.write_all(b"\n"));
}

/// True when `error`, or one of its causes, is a write to a pipe whose reader closed it.
pub fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = current.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("printing the jobs")]
    struct Wrapped(#[source] io::Error);

    #[test]
    fn a_broken_pipe_is_found_among_the_causes_and_nothing_else_is_one() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        let cases: [(Box<dyn std::error::Error>, bool); 4] = [
            (Box::new(pipe()), true),
            (Box::new(Wrapped(pipe())), true),
            (
                Box::new(io::Error::from(io::ErrorKind::PermissionDenied)),
                false,
            ),
            (Box::new(Wrapped(io::Error::other("disk full"))), false),
        ];
        for (error, expected) in cases {
            assert_eq!(is_broken_pipe(error.as_ref()), expected, "{error}");
        }
    }
}
