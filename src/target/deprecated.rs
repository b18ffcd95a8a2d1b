//! The old names of the profiles, kept for at least one minor version so
//! that crates written against them still compile (with a warning that
//! names the new one). CHANGELOG.md has the migration note of each.

use crate::target::profile::Profile;

#[allow(non_upper_case_globals)]
impl Profile {
    /// Supabase's shared pooler in transaction mode.
    #[deprecated(since = "0.2.0", note = "renamed to `Profile::SupabaseShared`")]
    pub const Transaction: Profile = Profile::SupabaseShared;
    /// Transaction pooling with prepared-statement tracking.
    #[deprecated(since = "0.2.0", note = "renamed to `Profile::SupabaseDedicated`")]
    pub const TransactionTracking: Profile = Profile::SupabaseDedicated;
    /// Session pooling.
    #[deprecated(since = "0.2.0", note = "renamed to `Profile::SupabaseSession`")]
    pub const Session: Profile = Profile::SupabaseSession;
    /// No pooler.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `Profile::NoPooler` (\"direct\" names the endpoint that bypasses the pooler, as in `connect_direct()`)"
    )]
    pub const Direct: Profile = Profile::NoPooler;

    /// Whether `connect()` bypasses the pooler.
    #[deprecated(since = "0.2.0", note = "renamed to `Profile::bypasses_pooler()`")]
    pub fn is_direct(self) -> bool {
        self.bypasses_pooler()
    }
}
