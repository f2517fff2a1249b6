//! Between the store's types and the wire's: what the sync engine sends and takes.

use fieldsync_record::protocol::{Payload, PulledRecord, PushRecord};
use serde_bytes::ByteBuf;

use crate::{OutboxEntry, RemotePayload, RemoteRecord};

impl From<RemotePayload> for Payload {
    fn from(payload: RemotePayload) -> Payload {
        match payload {
            RemotePayload::Changes(changes) => {
                Payload::Changes(changes.into_iter().map(ByteBuf::from).collect())
            }
            RemotePayload::Document(doc) => Payload::Document(ByteBuf::from(doc)),
        }
    }
}

impl From<Payload> for RemotePayload {
    fn from(payload: Payload) -> RemotePayload {
        match payload {
            Payload::Changes(changes) => {
                RemotePayload::Changes(changes.into_iter().map(ByteBuf::into_vec).collect())
            }
            Payload::Document(doc) => RemotePayload::Document(doc.into_vec()),
        }
    }
}

impl From<OutboxEntry> for PushRecord {
    fn from(entry: OutboxEntry) -> PushRecord {
        PushRecord {
            collection: entry.collection,
            id: entry.record_id,
            scope: entry.scope,
            payload: entry.payload.into(),
            epoch: entry.epoch,
        }
    }
}

impl From<PulledRecord> for RemoteRecord {
    fn from(record: PulledRecord) -> RemoteRecord {
        RemoteRecord {
            collection: record.collection,
            id: record.id,
            scope: record.scope,
            payload: record.payload.into(),
            epoch: record.epoch,
        }
    }
}
