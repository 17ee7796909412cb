//! What the client says to a person at a trust decision: the first-contact
//! question and the changed-fingerprint banner. Nothing here decides trust;
//! [`crate::session`] does, and asks only through [`ask_to_trust`].

use std::io::{BufRead, IsTerminal, Write};

use crate::pinning::{Fingerprint, PinSource};
use crate::session::SessionError;

/// First contact. On a terminal (and only when `may_prompt`), asks; anywhere
/// else, refuses with how to trust it. Never trusts silently.
pub fn ask_to_trust(host: &str, fp: Fingerprint, may_prompt: bool) -> Result<bool, SessionError> {
    let interactive =
        may_prompt && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        return Err(SessionError::NotTrusted {
            host: host.to_owned(),
            fingerprint: fp,
        });
    }
    let prompt = || -> std::io::Result<String> {
        let mut err = std::io::stderr().lock();
        writeln!(err, "The controller at {host} is not known to this client.")?;
        writeln!(
            err,
            "Its certificate authority has the SHA-256 fingerprint:"
        )?;
        writeln!(err, "  {fp}")?;
        writeln!(
            err,
            "Check it on the controller's machine: `berthd fingerprint` prints the same value."
        )?;
        write!(err, "Trust this controller? [y/N] ")?;
        err.flush()?;
        drop(err);
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer)
    };
    let answer = prompt().map_err(SessionError::Prompt)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The banner printed when a pinned controller presents another fingerprint.
pub fn changed_banner(
    host: &str,
    pinned: Fingerprint,
    presented: Fingerprint,
    source: &PinSource,
) -> String {
    let fix = match source {
        PinSource::Flag => "drop or correct the --fingerprint option".to_owned(),
        PinSource::Config(p) => format!(
            "correct the `fingerprint` of [controllers.\"{host}\"] in {}",
            p.display()
        ),
        PinSource::Store(_) => {
            format!("remove the old pin with `berth trust remove {host}`, then connect again")
        }
    };
    format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @   WARNING: CONTROLLER IDENTIFICATION HAS CHANGED!          @\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         Someone could be intercepting your connection to {host} (a man-in-the-middle attack),\n\
         or the controller's certificate authority was replaced.\n\
         \x20 controller:  {host}\n\
         \x20 pinned:      {pinned}\n\
         \x20              (from {source})\n\
         \x20 presented:   {presented}\n\
         If the change is legitimate (compare with `berthd fingerprint` on the controller),\n\
         {fix}.\n\
         Nothing was sent to the controller."
    )
}
