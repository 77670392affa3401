//! Lines the hypervisor logs about a guest because of what the guest asked for (a
//! refused clone, snapshot or reset; a balloon call): bounded per guest, like the
//! guest's own serial lines, so that a guest repeating a request cannot flood the host
//! console. Past the bound they are counted, and the guest's report says how many.

use alloc::format;
use alloc::string::String;

/// Notices logged per guest; the rest are counted.
pub const MAX_NOTICES: u32 = 32;

/// One guest's notices so far.
#[derive(Clone, Debug, Default)]
pub struct Notices {
    logged: u32,
    suppressed: u64,
}

impl Notices {
    /// Whether the next notice about `guest` may be logged: yes for the first
    /// [`MAX_NOTICES`]; after that it is counted instead (the first one counted logs a
    /// line saying so).
    pub fn admit(&mut self, guest: &str) -> bool {
        if self.logged < MAX_NOTICES {
            self.logged += 1;
            return true;
        }
        if self.suppressed == 0 {
            log::warn!(
                "guest {guest}: more than {MAX_NOTICES} notices; the rest are counted in its report"
            );
        }
        self.suppressed = self.suppressed.saturating_add(1);
        false
    }

    /// The report's line when notices were counted rather than logged.
    pub fn report(&self) -> Option<String> {
        (self.suppressed > 0).then(|| {
            format!(
                "{} notices not logged (more than {MAX_NOTICES})",
                self.suppressed
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_notices_are_logged_the_rest_counted() {
        let mut n = Notices::default();
        assert_eq!(n.report(), None);
        let logged = (0..MAX_NOTICES + 10).filter(|_| n.admit("g")).count();
        assert_eq!(logged, MAX_NOTICES as usize);
        assert_eq!(
            n.report().as_deref(),
            Some("10 notices not logged (more than 32)")
        );
    }
}
