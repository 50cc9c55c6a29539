//! The CLI's standard output. A reader that goes away early (`wharf repo list | head`) closes
//! the pipe; the next write then fails with `BrokenPipe`, and the CLI ends quietly with success,
//! as `ls` or `gh` do, instead of panicking in `println!` (exit 101). Other write errors end it
//! with a message and exit 1.

use std::io::Write;

/// Writes `args` to standard output, then a newline if `newline`.
pub fn write(args: std::fmt::Arguments, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = if newline { writeln!(stdout, "{args}") } else { write!(stdout, "{args}").and_then(|()| stdout.flush()) };
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("wharf: cannot write the output: {error}");
            std::process::exit(1);
        }
    }
}

/// `println!` for the CLI's output: see the module doc.
macro_rules! out {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// `print!` for the CLI's output: see the module doc.
macro_rules! out_raw {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}
