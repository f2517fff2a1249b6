//! Attachments' state as storage keeps it.

/// An attachment the server holds, or is receiving, in a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentState {
    /// Its length in bytes.
    pub size: u64,
    /// The numbers of the chunks held, in order.
    pub received: Vec<u32>,
    /// Whether every chunk is in and the whole matched its hash.
    pub complete: bool,
}

/// An attachment as the collection of unreferenced ones lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAttachment {
    /// Its scope.
    pub scope: String,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
    /// When its first chunk arrived (ms since the epoch).
    pub created_at: i64,
}

/// A stored chunk of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredChunk {
    /// Its bytes, kept in the database.
    Bytes(Vec<u8>),
    /// It arrived, and its bytes are in the attachment bucket.
    InBucket,
}

/// What storing an attachment's chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStored {
    /// The chunk was new.
    New,
    /// The server held it already (a retry after a lost answer): nothing was written.
    AlreadyHeld,
}
