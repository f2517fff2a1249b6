//! `fieldsync-server retention`: retention policies set, listed, removed and applied.

use clap::Subcommand;

use crate::error::ServerError;
use crate::retention::{Applied, apply, check};
use crate::storage::{RetentionPolicy, Storage, now_ms};

#[derive(Subcommand)]
pub(super) enum RetentionCommand {
    /// Set a collection's policy (replacing any): its records whose `--age-field` is more than
    /// `--older-than-days` old are erased, whole or only the `--erase-field`s.
    Set {
        /// The collection.
        #[arg(long)]
        collection: String,
        /// The timestamp field a record's age is counted from (such as `started_at`).
        #[arg(long)]
        age_field: String,
        /// Records older than this many days are erased.
        #[arg(long)]
        older_than_days: u32,
        /// A field to erase (repeat for several); none: the whole record.
        #[arg(long = "erase-field")]
        erase_fields: Vec<String>,
    },
    /// List the policies.
    List,
    /// Remove a collection's policy.
    Remove {
        /// The collection.
        #[arg(long)]
        collection: String,
    },
    /// Apply every policy now (`serve` does it once a day too).
    Apply,
}

pub(super) fn run(
    storage: &dyn Storage,
    schema: impl FnOnce() -> Result<fieldsync_record::Schema, ServerError>,
    command: RetentionCommand,
) -> Result<(), ServerError> {
    match command {
        RetentionCommand::Set {
            collection,
            age_field,
            older_than_days,
            erase_fields,
        } => {
            let policy = RetentionPolicy {
                collection,
                age_field,
                older_than_days,
                erase_fields,
                set_at: now_ms(),
            };
            check(&schema()?, &policy)?;
            storage.set_retention_policy(&policy)?;
            storage.audit_admin(0, "retention-set", &policy.collection)?;
            println!("{}", describe(&policy));
        }
        RetentionCommand::List => {
            for policy in storage.retention_policies()? {
                println!("{}", describe(&policy));
            }
        }
        RetentionCommand::Remove { collection } => {
            if !storage.remove_retention_policy(&collection)? {
                return Err(ServerError::NotFound(format!(
                    "`{collection}` has no retention policy"
                )));
            }
            storage.audit_admin(0, "retention-remove", &collection)?;
            println!("removed the retention policy of {collection}");
        }
        RetentionCommand::Apply => {
            for Applied {
                collection,
                erased,
                failed,
            } in apply(storage, &schema()?, now_ms())?
            {
                println!("{collection}: erased {erased} records");
                if failed > 0 {
                    println!("{collection}: {failed} records could not be erased: run `check`");
                }
            }
        }
    }
    Ok(())
}

fn describe(policy: &RetentionPolicy) -> String {
    let what = if policy.erase_fields.is_empty() {
        "erased".to_owned()
    } else {
        format!("erased of {}", policy.erase_fields.join(", "))
    };
    format!(
        "{}: records whose {} is more than {} days old are {what}",
        policy.collection, policy.age_field, policy.older_than_days
    )
}
