//! The tags' bitmaps as this process serves them: the last committed
//! version, reloaded whole when the store's version counter moves (after a
//! commit of this process or of another on the same store).

use crate::audience::bitmaps::TagBitmaps;
use crate::store::{AudienceStore, StoreError};
use std::sync::{Arc, Mutex, RwLock};

/// The snapshot served, shared by every request.
#[derive(Debug, Default)]
pub struct Live {
    current: RwLock<Option<Arc<TagBitmaps>>>,
    /// Held while a reload reads the store: one reload at a time.
    reloading: Mutex<()>,
}

impl Live {
    /// Nothing loaded yet: the first [`Live::fresh`] loads.
    pub fn new() -> Live {
        Live::default()
    }

    fn held(&self) -> Option<Arc<TagBitmaps>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The snapshot of the store's last committed version: the one held if
    /// the version counter has not moved (one small read), else reloaded.
    /// Blocking: call it off the async threads.
    pub fn fresh(&self, store: &dyn AudienceStore) -> Result<Arc<TagBitmaps>, StoreError> {
        let version = store.audience_version()?;
        if let Some(held) = self.held().filter(|h| h.version() >= version) {
            return Ok(held);
        }
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have reloaded while this one waited.
        if let Some(held) = self.held().filter(|h| h.version() >= version) {
            return Ok(held);
        }
        let (version, bitmaps) = store.tag_bitmaps()?;
        let snapshot = Arc::new(TagBitmaps::new(version, bitmaps));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// The snapshot held now, without asking the store (none before the
    /// first load).
    pub fn held_now(&self) -> Option<Arc<TagBitmaps>> {
        self.held()
    }
}
