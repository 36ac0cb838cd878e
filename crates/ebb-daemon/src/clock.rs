//! Where the agent reads the time of day.

use ebb_core::Millis;

/// The wall clock in production. In tests, tokio's clock counted from a
/// fixed start, so an agent runs on paused time (`tokio::time::pause`) and
/// an hour of idleness passes in a moment.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Tokio { start: Millis, origin: tokio::time::Instant },
}

impl Clock {
    /// Tokio's clock, reading `start` now.
    pub fn tokio_from(start: Millis) -> Clock {
        Clock::Tokio { start, origin: tokio::time::Instant::now() }
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::System => {
                let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Millis(d.as_millis() as u64)
            }
            Clock::Tokio { start, origin } => Millis(start.0 + origin.elapsed().as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_time_moves_only_as_tokio_advances() {
        let clock = Clock::tokio_from(Millis(1_000));
        assert_eq!(clock.now(), Millis(1_000));
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), Millis(3_601_000));
        assert!(Clock::System.now().0 > 1_700_000_000_000, "the wall clock reads today");
    }
}
