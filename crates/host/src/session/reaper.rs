//! The reaper: every second, sessions past their lifetime end, those idle
//! past their timeout are paused (or end, where pausing is off or fails),
//! and ended ones are forgotten after `ended_kept_s`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::registry::{EndReason, Session, SessionError, Sessions, finish};

impl Sessions {
    /// Ends sessions old past their limits, pauses (or ends) those idle
    /// past theirs, and forgets ended ones after `ended_kept_s`. Called
    /// every second by [`Sessions::start_reaper`].
    pub async fn reap(self: &Arc<Self>) {
        let now = Instant::now();
        let kept = Duration::from_secs(self.config.ended_kept_s);
        self.lost
            .lock()
            .unwrap()
            .retain(|_, lost| now - lost.found < kept);
        let sessions: Vec<Arc<Session>> = self.map.lock().unwrap().values().cloned().collect();
        for session in sessions {
            let (idle_for, ended_at) = {
                let life = session.life.lock().unwrap();
                (now - life.last_used, life.ended.as_ref().map(|(_, at)| *at))
            };
            if let Some(at) = ended_at {
                if now - at >= kept {
                    self.map.lock().unwrap().remove(&session.id);
                }
                continue;
            }
            let plan = &session.plan;
            let reason = if now - session.born >= plan.max_lifetime {
                EndReason::Lifetime {
                    seconds: plan.max_lifetime.as_secs(),
                }
            } else if idle_for >= plan.idle_timeout
                && !session.is_paused()
                && session.vm.try_lock().is_ok()
            {
                EndReason::Idle {
                    seconds: plan.idle_timeout.as_secs(),
                }
            } else {
                continue;
            };
            if let (EndReason::Idle { .. }, true) = (&reason, self.config.pause_when_idle) {
                let sessions = self.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    match sessions.pause_session(&session).await {
                        Ok(_) => {}
                        Err(SessionError::Busy(_)) => {}
                        Err(error) => {
                            tracing::info!(target: "runner::session", session = %session.id, error = %error, "an idle session could not be paused; it ends");
                            finish(&session, reason).await;
                        }
                    }
                });
                continue;
            }
            tracing::info!(target: "runner::session", session = %session.id, reason = %reason, "session ended");
            let session = session.clone();
            tokio::spawn(async move { finish(&session, reason).await });
        }
    }

    /// Reaps every second until the returned task is aborted.
    pub fn start_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(sessions) = sessions.upgrade() else {
                    return;
                };
                sessions.reap().await;
            }
        })
    }
}
