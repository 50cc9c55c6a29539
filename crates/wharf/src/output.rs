//! The CLI's standard output. A reader that goes away early (`wharf repo list | head`) closes
//! the pipe; the next write then fails with `BrokenPipe`, and the CLI ends quietly with success,
//! as `ls` or `gh` do, instead of panicking in `println!` (exit 101). Other write errors end it
//! with a message and exit 1. Tables ([`table`]) and progress bars ([`progress_bar`]) are
//! made here too.

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

/// A table for the CLI's lists: no borders, a header line, two spaces between columns (as
/// `kubectl get` or `nomad status` print them), so that `grep` and `awk` read it too.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header.iter().copied());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Right-aligns the columns at `indexes` (numbers).
pub fn right_align(table: &mut comfy_table::Table, indexes: &[usize]) {
    for &index in indexes {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
}

/// Prints a table made by [`table`], without trailing spaces.
pub fn print_table(table: comfy_table::Table) {
    for line in table.lines() {
        out!("{}", line.trim_end());
    }
}

/// A JSON value as a table cell: strings without quotes, `-` for nothing.
pub fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A progress bar on standard error with `template`, drawn only when standard error is a
/// terminal (callers print plain lines when [`indicatif::ProgressBar::is_hidden`]).
pub fn progress_bar(length: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
