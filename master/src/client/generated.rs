//! `taskmaster completions SHELL` and `taskmaster man`: output generated
//! from the clap definitions themselves (clap_complete, clap_mangen), so a
//! new flag or subcommand shows up in both without anyone writing it twice.
//! The caller passes the top-level [`clap::Command`]: this file does not
//! reach back into `cli`.

use clap::Args;
use std::io::Write;
use std::process::ExitCode;

/// Flags of `taskmaster completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (bash, zsh, fish, also
    /// elvish or powershell).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> ExitCode {
    // Rendered in memory first: clap_complete panics on a write error,
    // and `taskmaster completions bash | head` closes the pipe early.
    let mut out = Vec::new();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(args.shell, &mut cmd, name, &mut out);
    write_stdout(&out)
}

/// Writes the man page (roff, section 1) to stdout.
pub fn man(cmd: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
        eprintln!("taskmaster: man: {e}");
        return ExitCode::FAILURE;
    }
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) got what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskmaster: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
