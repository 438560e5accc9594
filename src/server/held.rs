//! The registry of held and parked descriptors (SPEC §3.4): one namespace
//! of names per storer, the limits, and expiry. Pure bookkeeping; the
//! holder thread ([`super::holder`]) watches the parked ones.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::decision::Refusal;
use crate::peer::PeerIdentity;
use crate::protocol::{ErrorCode, ListedName};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Held,
    Parked,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Held => "held",
            Kind::Parked => "parked",
        }
    }
}

/// One held descriptor.
pub(super) struct Entry {
    pub fd: OwnedFd,
    pub kind: Kind,
    /// When it expires, as a deadline and as the time `list` shows.
    pub expires: Option<(Instant, SystemTime)>,
    /// Its key in the holder's epoll and in the expiry heap.
    pub token: u64,
    /// Who stored it, for the records of its expiry or hang-up.
    pub storer: Arc<PeerIdentity>,
}

/// Where an entry lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub storer: u32,
    pub name: String,
}

/// `--max-held` and `--max-held-per-uid`.
#[derive(Clone, Copy, Debug)]
pub struct HeldLimits {
    pub total: usize,
    pub per_uid: usize,
}

impl Default for HeldLimits {
    fn default() -> Self {
        HeldLimits {
            total: 65536,
            per_uid: 4096,
        }
    }
}

#[derive(Default)]
pub(super) struct Registry {
    by_storer: HashMap<u32, BTreeMap<String, Entry>>,
    by_token: HashMap<u64, Key>,
    total: usize,
    next_token: u64,
    expiries: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Registry {
    /// Holds `fd` under `name` for `storer` until `expires` (see
    /// [`deadline`]); returns its token.
    pub fn insert_until(
        &mut self,
        limits: HeldLimits,
        storer: Arc<PeerIdentity>,
        name: &str,
        fd: OwnedFd,
        kind: Kind,
        expires: Option<(Instant, SystemTime)>,
    ) -> Result<u64, (Refusal, OwnedFd)> {
        let uid = storer.uid;
        let mine = self.by_storer.entry(uid).or_default();
        if mine.contains_key(name) {
            let why = format!("{name:?} is already held by uid {uid}");
            return Err((Refusal::new(ErrorCode::Exists, why), fd));
        }
        if self.total >= limits.total || mine.len() >= limits.per_uid {
            let why = format!(
                "too many descriptors held (at most {} in all, {} per uid)",
                limits.total, limits.per_uid
            );
            return Err((Refusal::busy(why), fd));
        }
        self.next_token += 1;
        let token = self.next_token;
        if let Some((deadline, _)) = expires {
            self.expiries.push(Reverse((deadline, token)));
        }
        mine.insert(
            name.to_owned(),
            Entry {
                fd,
                kind,
                expires,
                token,
                storer,
            },
        );
        self.by_token.insert(
            token,
            Key {
                storer: uid,
                name: name.to_owned(),
            },
        );
        self.total += 1;
        Ok(token)
    }

    pub fn get(&self, storer: u32, name: &str) -> Option<&Entry> {
        self.by_storer.get(&storer)?.get(name)
    }

    pub fn get_mut(&mut self, storer: u32, name: &str) -> Option<&mut Entry> {
        self.by_storer.get_mut(&storer)?.get_mut(name)
    }

    pub fn key_of(&self, token: u64) -> Option<&Key> {
        self.by_token.get(&token)
    }

    /// Holds again an entry [`Self::remove`] gave out, under its old token
    /// and deadline, past the limits (it was counted before); gives it
    /// back if its name was taken meanwhile.
    pub fn reinsert(&mut self, key: Key, entry: Entry) -> Result<(), Entry> {
        let mine = self.by_storer.entry(key.storer).or_default();
        if mine.contains_key(&key.name) {
            return Err(entry);
        }
        let token = entry.token;
        // Its deadline may have been popped while it was out; a second
        // heap entry for the token is skipped once the first removed it.
        if let Some((deadline, _)) = entry.expires {
            self.expiries.push(Reverse((deadline, token)));
        }
        mine.insert(key.name.clone(), entry);
        self.by_token.insert(token, key);
        self.total += 1;
        Ok(())
    }

    pub fn remove(&mut self, storer: u32, name: &str) -> Option<Entry> {
        let mine = self.by_storer.get_mut(&storer)?;
        let entry = mine.remove(name)?;
        if mine.is_empty() {
            self.by_storer.remove(&storer);
        }
        self.by_token.remove(&entry.token);
        self.total -= 1;
        Some(entry)
    }

    /// The entries of `storer` whose names start with `prefix`, in order.
    pub fn listed(&self, storer: u32, prefix: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_storer
            .get(&storer)
            .into_iter()
            .flat_map(move |mine| mine.range(prefix.to_owned()..))
            .take_while(move |(name, _)| name.starts_with(prefix))
    }

    /// Removes and returns every entry whose time is up.
    pub fn expire(&mut self, now: Instant) -> Vec<(Key, Entry)> {
        let mut gone = Vec::new();
        while let Some(Reverse((deadline, token))) = self.expiries.peek().copied() {
            if deadline > now {
                break;
            }
            self.expiries.pop();
            let Some(key) = self.by_token.get(&token).cloned() else {
                continue; // removed earlier
            };
            if let Some(entry) = self.remove(key.storer, &key.name) {
                gone.push((key, entry));
            }
        }
        gone
    }

    /// Every entry, for a hand-over.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_storer.values().flat_map(|mine| mine.iter())
    }

    /// How many are held and how many parked.
    pub fn counts(&self) -> (usize, usize) {
        let parked = self
            .by_storer
            .values()
            .flat_map(|mine| mine.values())
            .filter(|e| e.kind == Kind::Parked)
            .count();
        (self.total - parked, parked)
    }

    /// How long until the next expiry.
    pub fn next_expiry(&self, now: Instant) -> Option<Duration> {
        self.expiries
            .peek()
            .map(|Reverse((deadline, _))| deadline.saturating_duration_since(now))
    }
}

/// An expiry `after` from now, as a deadline and as the time `list` shows.
pub(super) fn deadline(after: Duration) -> (Instant, SystemTime) {
    // The protocol bounds `expires` to 10 years; clamped here too, so
    // that no duration can panic the clock arithmetic (SPEC §2).
    let after = after.min(MAX_LEFT);
    (Instant::now() + after, SystemTime::now() + after)
}

/// An expiry at wall-clock `at` (handed over from a previous server):
/// already past means now; `list` shows `at` itself.
pub(super) fn deadline_at(at: SystemTime) -> (Instant, SystemTime) {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(MAX_LEFT);
    (Instant::now() + left, at)
}

/// Longer than any `expires` a request may give (10 years).
const MAX_LEFT: Duration = Duration::from_secs(11 * 366 * 24 * 3600);

/// A `list` entry for `name`.
pub(super) fn listed_name(name: &str, entry: &Entry) -> ListedName {
    ListedName {
        name: name.to_owned(),
        kind: entry.kind.as_str().to_owned(),
        expires: entry
            .expires
            .map(|(_, at)| humantime::format_rfc3339_seconds(at).to_string()),
        storer: Some(entry.storer.uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            pid: 1,
            uid,
            gid: uid,
            groups: vec![],
            cgroup: None,
            foreign_net: false,
            connection: 0,
        })
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn names_live_in_one_namespace_per_storer() {
        let limits = HeldLimits::default();
        let mut r = Registry::default();
        r.insert_until(limits, peer(1), "web/a", fd(), Kind::Held, None)
            .unwrap();
        r.insert_until(limits, peer(2), "web/a", fd(), Kind::Held, None)
            .unwrap();
        let (refusal, _) = r
            .insert_until(limits, peer(1), "web/a", fd(), Kind::Held, None)
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Exists);
        assert_eq!(r.total, 2);
        assert!(r.remove(1, "web/a").is_some());
        assert!(r.get(2, "web/a").is_some());
    }

    #[test]
    fn limits_answer_busy() {
        let limits = HeldLimits {
            total: 3,
            per_uid: 2,
        };
        let mut r = Registry::default();
        for name in ["a", "b"] {
            r.insert_until(limits, peer(1), name, fd(), Kind::Held, None)
                .unwrap();
        }
        let busy = |r: &mut Registry, uid, name| {
            r.insert_until(limits, peer(uid), name, fd(), Kind::Held, None)
                .unwrap_err()
                .0
                .code
        };
        assert_eq!(busy(&mut r, 1, "c"), ErrorCode::Busy);
        r.insert_until(limits, peer(2), "a", fd(), Kind::Held, None)
            .unwrap();
        assert_eq!(busy(&mut r, 3, "a"), ErrorCode::Busy);
    }

    #[test]
    fn expiry_removes_only_what_is_due_and_still_held() {
        let limits = HeldLimits::default();
        let mut r = Registry::default();
        let soon = Some(deadline(Duration::from_millis(1)));
        r.insert_until(limits, peer(1), "x", fd(), Kind::Held, soon)
            .unwrap();
        r.insert_until(limits, peer(1), "y", fd(), Kind::Held, soon)
            .unwrap();
        r.insert_until(
            limits,
            peer(1),
            "z",
            fd(),
            Kind::Held,
            Some(deadline(Duration::from_secs(60))),
        )
        .unwrap();
        r.remove(1, "y");
        let gone = r.expire(Instant::now() + Duration::from_secs(1));
        let names: Vec<_> = gone.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["x"]);
        let listed: Vec<_> = r.listed(1, "").map(|(n, _)| n.clone()).collect();
        assert_eq!(listed, ["z"]);
    }

    #[test]
    fn listing_takes_a_prefix() {
        let limits = HeldLimits::default();
        let mut r = Registry::default();
        for name in ["web/a", "web/b", "weba", "db/x"] {
            r.insert_until(limits, peer(1), name, fd(), Kind::Held, None)
                .unwrap();
        }
        let listed: Vec<_> = r.listed(1, "web/").map(|(n, _)| n.clone()).collect();
        assert_eq!(listed, ["web/a", "web/b"]);
    }
}
