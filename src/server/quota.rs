//! Descriptors clients sent that wait for the lines they came with (SPEC
//! §2): at most one `SCM_RIGHTS` message's worth per connection and 1024
//! for all connections of one uid. A client that sends more is
//! disconnected and its descriptors closed, so no client can pin the
//! server's descriptors.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;

/// Received descriptors one connection may have waiting.
pub(super) const PER_CONNECTION: usize = 253;
/// Received descriptors all connections of one uid may have waiting.
pub(super) const PER_UID: usize = 1024;

/// Waiting descriptors per uid, across lanes.
#[derive(Debug, Default)]
pub(super) struct FdQuota {
    per_uid: Mutex<HashMap<u32, usize>>,
}

impl FdQuota {
    /// A connection of `uid` that had `*counted` descriptors waiting now
    /// has `now`. False when that is over either limit: the caller then
    /// disconnects it, and counts it down to 0.
    pub fn update(&self, uid: u32, counted: &mut usize, now: usize) -> bool {
        if *counted == now {
            return now <= PER_CONNECTION;
        }
        let mut per_uid = lock(&self.per_uid);
        let total = per_uid.entry(uid).or_default();
        *total = *total + now - *counted;
        *counted = now;
        let within = now <= PER_CONNECTION && *total <= PER_UID;
        if *total == 0 {
            per_uid.remove(&uid);
        }
        within
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_connection_and_per_uid() {
        let quota = FdQuota::default();
        let (mut a, mut b) = (0, 0);
        assert!(quota.update(7, &mut a, PER_CONNECTION));
        assert!(!quota.update(7, &mut a, PER_CONNECTION + 1));
        assert!(quota.update(7, &mut a, 200));
        let mut others = [0; 4];
        for counted in &mut others[..3] {
            assert!(quota.update(7, counted, 250));
        }
        // 200 + 750 + 80 = 1030 > 1024.
        assert!(!quota.update(7, &mut others[3], 80));
        assert!(quota.update(8, &mut b, 250), "another uid is apart");
        quota.update(7, &mut others[3], 0);
        assert!(quota.update(7, &mut a, 0));
        for counted in &mut others {
            quota.update(7, counted, 0);
        }
        assert!(lock(&quota.per_uid).get(&7).is_none());
    }
}
