//! The wall clock as the wire types carry it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 before 1970, saturating far in the future).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in whole Unix seconds (the resolution of Kubernetes timestamps and
/// of token claims).
pub fn now_unix_secs() -> u64 {
    now_unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020() {
        assert!(now_unix_ms() > 1_577_836_800_000);
    }
}
