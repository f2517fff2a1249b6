//! `fieldsync-server erase`: a record's content erased, history included.

use std::sync::Arc;

use fieldsync_record::Schema;
use fieldsync_record::erasure::Erasure;

use super::{block_on, bucket};
use crate::attachments::chunks::ChunkStore;
use crate::error::ServerError;
use crate::storage::Storage;

#[derive(clap::Args)]
pub(super) struct EraseArgs {
    /// The record's collection.
    #[arg(long)]
    collection: String,
    /// The record's id.
    #[arg(long)]
    id: String,
    /// A field to erase (repeat for several).
    #[arg(long = "field", required_unless_present_any = ["history", "record"], conflicts_with_all = ["history", "record"])]
    fields: Vec<String>,
    /// Erase every past value, keeping the current ones.
    #[arg(long, conflicts_with = "record")]
    history: bool,
    /// Erase the whole record: it keeps only its scope, deleted.
    #[arg(long)]
    record: bool,
    /// Why, for the audit log (name no content).
    #[arg(long)]
    reason: String,
    /// Where attachments' bytes are kept, if not in the database: attachments only the
    /// erased values referenced are dropped from it.
    #[command(flatten)]
    bucket: bucket::BucketArgs,
}

pub(super) fn run(
    storage: &Arc<dyn Storage>,
    schema: &Schema,
    args: EraseArgs,
) -> Result<(), ServerError> {
    let EraseArgs {
        collection,
        id,
        fields,
        history,
        record,
        reason,
        bucket,
    } = args;
    let erasure = match (history, record) {
        (true, _) => Erasure::History,
        (_, true) => Erasure::Record,
        _ => Erasure::Fields(fields.into_iter().collect()),
    };
    let request = crate::erasure::EraseRequest {
        collection: &collection,
        id: &id,
        erasure,
        by: 0,
        reason: &reason,
        scrub: true,
    };
    let chunks = match bucket.bucket()? {
        Some(bucket) => ChunkStore::Bucket(bucket),
        None => ChunkStore::Database,
    };
    let erased = crate::erasure::erase(&**storage, schema, &request)?;
    let dropped = block_on(crate::attachments::collect::drop_unreferenced(
        storage,
        &chunks,
        schema,
        &erased.scope,
        &erased.attachments,
    ))?;
    println!(
        "erased {} of {collection} {id}: the record is at epoch {}; {dropped} attachments \
         dropped",
        request.erasure.describe(),
        erased.epoch
    );
    if !erased.scrubbed {
        println!(
            "the database's write-ahead log could not be emptied yet (a reader holds it, or \
             the database is PostgreSQL): see DEPLOYMENT.md, \"Erasure\""
        );
    }
    Ok(())
}
