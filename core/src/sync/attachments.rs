//! Attachments' bytes over the wire: the queue of attachments written here sent after the
//! records' push, and the attachments of eager fields fetched after the pull, chunk by chunk.
//! Both ask first what the other side holds, so a transfer cut off (a dropped connection, an
//! app killed) resumes with the chunks missing and never sends one twice; every chunk fetched
//! is checked against the SHA-256 the server sends with it, and the whole against the
//! reference, before it is used.

use fieldsync_record::attachment::AttachmentRef;
use fieldsync_record::protocol::{ATTACHMENT_CHUNK_BYTES, AttachmentStatus};
use sha2::{Digest, Sha256};

use super::{
    Deadline, SyncClient, SyncProgress, TransportRequest, blocking, decode_json, error_of,
};
use crate::error::{Error, Result};
use crate::store::Store;

/// How many chunks an attachment of `size` bytes travels in (an empty one in one, empty).
fn chunk_count(size: u64) -> u64 {
    size.div_ceil(ATTACHMENT_CHUNK_BYTES as u64).max(1)
}

/// The length of chunk `chunk` of an attachment of `size` bytes.
fn chunk_len(size: u64, chunk: u64) -> usize {
    let start = chunk * ATTACHMENT_CHUNK_BYTES as u64;
    size.saturating_sub(start)
        .min(ATTACHMENT_CHUNK_BYTES as u64) as usize
}

/// Attachment bytes moved so far in a sync, for its progress.
pub(super) struct Bytes<'a> {
    progress: SyncProgress,
    listener: &'a (dyn Fn(&SyncProgress) + Send + Sync),
}

impl<'a> Bytes<'a> {
    pub(super) fn new(
        records: SyncProgress,
        listener: &'a (dyn Fn(&SyncProgress) + Send + Sync),
    ) -> Bytes<'a> {
        Bytes {
            progress: records,
            listener,
        }
    }

    fn expect(&mut self, bytes: u64) {
        self.progress.attachment_bytes_total += bytes;
        (self.listener)(&self.progress);
    }

    fn moved(&mut self, bytes: u64) {
        self.progress.attachment_bytes_done += bytes;
        (self.listener)(&self.progress);
    }
}

impl SyncClient {
    /// Sends every queued attachment the server lacks; returns how many it now holds whole,
    /// and whether all were sent (past the deadline no further attachment is started).
    pub(super) async fn send_attachments(
        &self,
        store: &Store,
        bytes: &mut Bytes<'_>,
        deadline: Deadline,
    ) -> Result<(usize, bool)> {
        let mut sent = 0;
        for upload in blocking(store, |s| s.attachment_uploads()).await? {
            if deadline.passed() {
                return Ok((sent, false));
            }
            let sha256 = hex(&upload.sha256);
            let status = self.attachment_status(&upload.scope, &sha256).await?;
            let mut complete = status.as_ref().is_some_and(|s| s.complete);
            let received = status.map(|s| s.received).unwrap_or_default();
            let missing: Vec<u64> = (0..chunk_count(upload.size))
                .filter(|chunk| !received.contains(&(*chunk as u32)))
                .collect();
            if !complete {
                bytes.expect(
                    missing
                        .iter()
                        .map(|c| chunk_len(upload.size, *c) as u64)
                        .sum(),
                );
            }
            let mut refused = false;
            for chunk in missing {
                if complete {
                    break;
                }
                // The chunks sent stay on the server: the next sync sends the rest.
                if deadline.passed() {
                    return Ok((sent, false));
                }
                let sha = upload.sha256;
                let chunk_bytes = blocking(store, move |s| {
                    s.attachment_chunk_to_send(&sha, upload.size, chunk)
                })
                .await?;
                let len = chunk_bytes.len() as u64;
                let request = TransportRequest::PutChunk {
                    scope: upload.scope.clone(),
                    sha256: sha256.clone(),
                    size: upload.size,
                    chunk: chunk as u32,
                    bytes: chunk_bytes,
                };
                let response = self.transport.send(&self.credentials(), request).await?;
                if response.status == 403 {
                    // The scope is not the user's to write (the record that references the
                    // attachment was refused too): the bytes stay here, off the queue.
                    tracing::warn!("an attachment was refused: its scope is not writable");
                    refused = true;
                    break;
                }
                let status: AttachmentStatus = decode_json(response)?;
                complete = status.complete;
                bytes.moved(len);
            }
            let (scope, sha) = (upload.scope.clone(), upload.sha256);
            if complete {
                blocking(store, move |s| s.attachment_uploaded(&scope, &sha)).await?;
                sent += 1;
            } else if refused {
                blocking(store, move |s| s.attachment_upload_refused(&scope, &sha)).await?;
            }
        }
        Ok((sent, true))
    }

    /// Fetches the attachments eager fields reference that the store lacks, as far as the
    /// store's attachment budget has room; returns how many it now holds whole, and whether it
    /// went through them all (past the deadline no further one is started). One the server
    /// does not hold whole yet is left for a later sync.
    pub(super) async fn fetch_attachments(
        &self,
        store: &Store,
        bytes: &mut Bytes<'_>,
        deadline: Deadline,
    ) -> Result<(usize, bool)> {
        let mut fetched = 0;
        let mut room = blocking(store, |s| s.attachment_room()).await?;
        for (scope, reference) in blocking(store, |s| s.wanted_downloads()).await? {
            if deadline.passed() {
                return Ok((fetched, false));
            }
            // What does not fit the budget is left to be fetched on demand.
            if reference.size > room {
                continue;
            }
            if self
                .fetch(store, &scope, &reference, bytes, deadline)
                .await?
            {
                room -= reference.size;
                fetched += 1;
            }
        }
        Ok((fetched, true))
    }

    /// Fetches the attachment `collection/id`'s field `field` references, whatever its field's
    /// download mode (for `on_demand` fields); true once the store holds it whole, false while
    /// the server does not hold it whole yet (its device has not sent it all).
    pub async fn fetch_attachment(
        &self,
        store: &Store,
        collection: &str,
        id: &str,
        field: &str,
    ) -> Result<bool> {
        let record = store.get(collection, id)?.ok_or_else(|| Error::NotFound {
            collection: collection.to_owned(),
            id: id.to_owned(),
        })?;
        let value = record
            .fields
            .get(field)
            .ok_or_else(|| Error::InvalidAttachment {
                collection: collection.to_owned(),
                field: field.to_owned(),
                problem: "the field holds no attachment",
            })?;
        let reference =
            AttachmentRef::from_value(value).map_err(|problem| Error::InvalidAttachment {
                collection: collection.to_owned(),
                field: field.to_owned(),
                problem,
            })?;
        if store.has_attachment(&reference)? {
            return Ok(true);
        }
        let mut ignored = |_: &SyncProgress| {};
        let listener: &(dyn Fn(&SyncProgress) + Send + Sync) = &mut ignored;
        let mut bytes = Bytes::new(SyncProgress::default(), listener);
        self.fetch(store, &record.scope, &reference, &mut bytes, Deadline::NONE)
            .await
    }

    /// Fetches the chunks of `reference` the store lacks; whether it now holds it whole
    /// (false too when the deadline passed first: the chunks stored stay).
    async fn fetch(
        &self,
        store: &Store,
        scope: &str,
        reference: &AttachmentRef,
        bytes: &mut Bytes<'_>,
        deadline: Deadline,
    ) -> Result<bool> {
        let sha256 = hex(&reference.sha256);
        let sha = reference.sha256;
        let held = blocking(store, move |s| s.downloaded_chunks(&sha)).await?;
        let missing: Vec<u64> = (0..chunk_count(reference.size))
            .filter(|chunk| !held.contains(chunk))
            .collect();
        bytes.expect(
            missing
                .iter()
                .map(|c| chunk_len(reference.size, *c) as u64)
                .sum(),
        );
        for chunk in missing {
            if deadline.passed() {
                return Ok(false);
            }
            let request = TransportRequest::GetChunk {
                scope: scope.to_owned(),
                sha256: sha256.clone(),
                chunk: chunk as u32,
            };
            let response = self.transport.send(&self.credentials(), request).await?;
            if response.status == 404 {
                return Ok(false);
            }
            if response.status != 200 {
                return Err(error_of(response));
            }
            let digest = hex(&Sha256::digest(&response.body));
            if response.chunk_sha256.as_deref() != Some(digest.as_str())
                || response.body.len() != chunk_len(reference.size, chunk)
            {
                return Err(Error::Protocol(
                    "a fetched attachment chunk does not match its SHA-256 or length".into(),
                ));
            }
            let len = response.body.len() as u64;
            let reference_for_store = reference.clone();
            blocking(store, move |s| {
                s.store_downloaded_chunk(&reference_for_store, chunk, &response.body)
            })
            .await?;
            bytes.moved(len);
        }
        let reference = reference.clone();
        if !blocking(store, move |s| s.check_download(&reference)).await? {
            return Err(Error::Protocol(
                "a fetched attachment does not match its reference's SHA-256; it was dropped"
                    .into(),
            ));
        }
        Ok(true)
    }

    /// What the server holds of an attachment, or `None` if nothing.
    async fn attachment_status(
        &self,
        scope: &str,
        sha256: &str,
    ) -> Result<Option<AttachmentStatus>> {
        let request = TransportRequest::AttachmentStatus {
            scope: scope.to_owned(),
            sha256: sha256.to_owned(),
        };
        let response = self.transport.send(&self.credentials(), request).await?;
        if response.status == 404 {
            return Ok(None);
        }
        decode_json(response).map(Some)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
