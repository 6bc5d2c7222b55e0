//! Progress while the CLI waits (a domain to run or stop, a host to make a volume or take
//! a snapshot, a drain, a live migration's copy, an audit verification): a spinner with
//! what it waits for, drawn on stderr only when stderr is a terminal, so piped or
//! redirected output never carries escape codes.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

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

    /// Show how much of `total` bytes is `done` (a live migration's copy), as a bar
    /// under the message from now on.
    pub fn bar(&self, done: u64, total: u64) {
        let Some(bar) = &self.0 else { return };
        if bar.length() != Some(total) {
            bar.set_length(total);
            let style = ProgressStyle::with_template("{spinner} {msg}\n  [{bar:40}] {bytes}/{total_bytes}")
                .expect("the template is valid")
                .progress_chars("=> ");
            bar.set_style(style);
        }
        bar.set_position(done.min(total));
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
