//! Progress while the CLI waits (a domain to run or stop, a host to make a volume or take
//! a snapshot, a drain, a live migration's copy, an audit verification): a spinner with
//! what it waits for, drawn on stderr only when stderr is a terminal, so piped or
//! redirected output never carries escape codes.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::ProgressBar;

/// How often the spinner turns.
const TICK: Duration = Duration::from_millis(100);

/// A spinner for one wait; cleared when dropped.
#[derive(Debug)]
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// A spinner saying `message`, on a terminal; nothing otherwise.
    pub fn new(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(message.into());
        bar.enable_steady_tick(TICK);
        Spinner(Some(bar))
    }

    /// Say something new (the phase reached, the state seen).
    pub fn say(&self, message: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.into());
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
