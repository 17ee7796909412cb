//! `berth completions` and `berth man`: shell completion scripts and manual
//! pages, generated from the same clap definitions as `--help`, so they
//! can never disagree with the binary that prints them. Neither opens a
//! session.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// The examples of `berth completions --help`: where each shell looks.
pub const COMPLETIONS_HELP: &str = "\
Examples (install, then open a new shell):
  bash:        berth completions bash > ~/.local/share/bash-completion/completions/berth
  zsh:         berth completions zsh > ~/.zfunc/_berth   # with fpath+=(~/.zfunc) before compinit
  fish:        berth completions fish > ~/.config/fish/completions/berth.fish
  elvish:      berth completions elvish >> ~/.config/elvish/rc.elv
  powershell:  berth completions powershell >> $PROFILE";

/// The examples of `berth man --help`.
pub const MAN_HELP: &str = "\
Examples:
  berth man | man -l -                      Read berth(1) now
  berth man --dir ~/.local/share/man/man1   Install every page (then: man berth-volume-create)";

/// `berth completions SHELL`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `berth man [--dir DIR]`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write berth.1 and one page per command (berth-volume.1,
    /// berth-volume-create.1, ...) into DIR, created if missing; without it,
    /// print berth.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "berth", &mut script);
    write_stdout(&script)
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is not
/// an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints berth.1, or writes every page into `args.dir`.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    match &args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command).render(&mut out)?;
            write_stdout(&out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the manual pages to {}", dir.display()))?;
            println!(
                "wrote the manual pages berth.1 and berth-*.1 to {}",
                dir.display()
            );
        }
    }
    Ok(())
}
