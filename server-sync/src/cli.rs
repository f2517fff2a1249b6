//! The `fieldsync-server` command line: run the sync server, or administer its users,
//! devices and grants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::attachments::bucket::Bucket;
use crate::attachments::chunks::ChunkStore;
use crate::schema::{self, SchemaSet};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, AuditQuery, Database, Role, Storage, postgres};
use crate::{AppState, Limits, ServerError, admin, listener, router};
use clap::{Parser, Subcommand, ValueEnum};

mod bucket;
mod erasure;
mod identity;
mod listing;
mod retention;

#[derive(Parser)]
#[command(
    name = "fieldsync-server",
    version,
    about = "The Fieldsync sync server"
)]
struct Cli {
    /// The server's database: a SQLite file, created if missing, or a PostgreSQL URL
    /// (`postgres://user:password@host:port/database`) that several instances may share.
    #[arg(
        long,
        global = true,
        env = "FIELDSYNC_DB",
        default_value = "fieldsync-server.db"
    )]
    db: String,
    /// Most connections this process keeps open to PostgreSQL.
    #[arg(long, global = true, env = "FIELDSYNC_DB_CONNECTIONS", default_value_t = postgres::DEFAULT_CONNECTIONS)]
    db_connections: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve devices over HTTP until SIGTERM or Ctrl-C, then finish in-flight requests.
    Serve {
        /// Address to listen on; port 0 picks a free port (printed at start).
        #[arg(long, env = "FIELDSYNC_LISTEN", default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Largest request body in bytes (compressed).
        #[arg(long, env = "FIELDSYNC_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
        max_body_bytes: usize,
        /// Most records in one push.
        #[arg(long, env = "FIELDSYNC_MAX_RECORDS_PER_PUSH", default_value_t = Limits::default().max_records_per_push)]
        max_records_per_push: usize,
        /// Largest record document in bytes.
        #[arg(long, env = "FIELDSYNC_MAX_DOCUMENT_BYTES", default_value_t = Limits::default().max_document_bytes)]
        max_document_bytes: usize,
        /// Largest attachment in bytes.
        #[arg(long, env = "FIELDSYNC_MAX_ATTACHMENT_BYTES", default_value_t = Limits::default().max_attachment_bytes)]
        max_attachment_bytes: u64,
        /// Requests a second each device may make on average (0: no limit).
        #[arg(long, env = "FIELDSYNC_REQUESTS_PER_SECOND", default_value_t = Limits::default().requests_per_second)]
        requests_per_second: u32,
        /// Requests a device may make in a burst.
        #[arg(long, env = "FIELDSYNC_REQUEST_BURST", default_value_t = Limits::default().request_burst)]
        request_burst: u32,
        /// Connections held at once (default: the open-file limit less 160, at most 10,000).
        #[arg(long, env = "FIELDSYNC_MAX_CONNECTIONS")]
        max_connections: Option<usize>,
        /// Seconds a client may take to send a request's head, or stay idle between requests.
        #[arg(long, env = "FIELDSYNC_HEAD_TIMEOUT_SECS", default_value_t = 10)]
        head_timeout_secs: u64,
        /// Seconds between the samples of the counters the admin console charts (24 hours are
        /// kept, in memory).
        #[arg(long, env = "FIELDSYNC_METRICS_SAMPLE_SECS", default_value_t = 60)]
        metrics_sample_secs: u64,
        /// Serve the feed lag of each scope on `/metrics` labelled with the scope's name
        /// (`fieldsync_feed_lag`); without it only the largest is served, and `/metrics`, which
        /// needs no token, names no scope.
        #[arg(long, env = "FIELDSYNC_METRICS_SCOPE_LABELS")]
        metrics_scope_labels: bool,
        /// The longest a webhook's failed delivery waits before it is tried again, in seconds
        /// (the wait doubles from one second with each failure in a row).
        #[arg(long, env = "FIELDSYNC_WEBHOOK_MAX_BACKOFF_SECS", default_value_t = Limits::default().webhook_max_backoff.as_secs())]
        webhook_max_backoff_secs: u64,
        /// Days a device may go without syncing before the changes it has not read may be
        /// pruned from the feed (its next sync then starts over with whole records); push
        /// answers kept for replays are kept as long. Pruned once a day.
        #[arg(long, env = "FIELDSYNC_FEED_KEEP_DAYS", default_value_t = Limits::default().feed_keep_days)]
        feed_keep_days: u32,
        #[command(flatten)]
        identity: Box<identity::IdentityArgs>,
        #[command(flatten)]
        bucket: bucket::BucketArgs,
    },
    /// Create a user.
    CreateUser {
        /// The user's unique name.
        name: String,
        /// Make the user an administrator.
        #[arg(long, conflicts_with = "service")]
        admin: bool,
        /// Make it a service account: the clinic's own system using the records API, with
        /// grants of its own and a token from `enroll-device`.
        #[arg(long)]
        service: bool,
    },
    /// Register a device for a user and print its token (shown only this once).
    EnrollDevice {
        /// The user.
        #[arg(long)]
        user: String,
        /// A name for the device, such as "Ada's tablet".
        #[arg(long)]
        name: String,
        /// Days until the token expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Issue another token for a device and print it (shown only this once).
    IssueToken {
        /// The device id.
        #[arg(long)]
        device: i64,
        /// Days until the token expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke a token by its id (the 16 hex characters after `fs_`).
    RevokeToken {
        /// The token id.
        token_id: String,
    },
    /// Revoke a device: every token of it stops working.
    RevokeDevice {
        /// The device id.
        device: i64,
    },
    /// Grant a user read or write access to a scope (a caseload, team or clinic).
    Grant {
        /// The user.
        #[arg(long)]
        user: String,
        /// The scope.
        #[arg(long)]
        scope: String,
        /// What the grant allows.
        #[arg(long, value_enum, default_value = "write")]
        access: AccessArg,
    },
    /// Remove a user's grant on a scope; their devices purge it on the next pull.
    RevokeGrant {
        /// The user.
        #[arg(long)]
        user: String,
        /// The scope.
        #[arg(long)]
        scope: String,
    },
    /// List devices with their user, last sync and the Automerge actor they push as.
    Devices,
    /// Free an Automerge actor from the device holding it, so that the device whose changes
    /// it makes can bind it again (a device that took an actor not its own locks that device
    /// out with `foreign_actor`).
    ReleaseActor {
        /// The actor, in hex, as `devices` lists it.
        actor: String,
    },
    /// List users: their role, whether they sign in through the identity provider, and the
    /// name and email it last sent.
    Users,
    /// Set or show what the identity provider's groups give their members.
    #[command(subcommand)]
    GroupGrants(GroupGrantsCommand),
    /// Add, list or remove webhooks: URLs of the clinic's systems that receive every change a
    /// service account may read.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Retention policies: how long each collection's records are kept.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Show who pushed and pulled which records when, and what administrators did, newest
    /// first.
    Audit {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only this record's (or what administrators did to this user, device or token).
        #[arg(long)]
        record: Option<String>,
        /// Only lines from this time on (RFC 3339, such as `2026-12-01T00:00:00Z`).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only lines before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Drop attachments no live record references any more, once older than the grace period
    /// (`serve` does it once a day too).
    CollectAttachments {
        /// Hours an attachment no record references is kept (a device may be about to send
        /// the record that references it).
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
        #[command(flatten)]
        bucket: bucket::BucketArgs,
    },
    /// Print as JSON everything the server holds of one person, for a subject access
    /// request: their record and every record referencing it, each with its whole history and
    /// who made each change, and their audit lines.
    ExportSubject {
        /// The subject's collection (such as `clients`).
        #[arg(long)]
        collection: String,
        /// The subject's record id.
        #[arg(long)]
        id: String,
    },
    /// Erase a record's content from the server, history included: with `--field`, those
    /// fields; with `--history`, every past value (the current ones stay); with `--record`,
    /// the whole record (it keeps only its scope, deleted). Devices replace their copy at their
    /// next sync. The audit log says what was erased and why, never the content.
    Erase(erasure::EraseArgs),
    /// Prune the feed up to where every device that synced within `--keep-days` has read
    /// (a device that did not starts its next sync over with whole records), and the push
    /// answers kept for replays older than that (`serve` does it once a day).
    Prune {
        /// Days a device may go without syncing before it is no longer waited for.
        #[arg(long, default_value_t = Limits::default().feed_keep_days)]
        keep_days: u32,
    },
    /// Delete the audit lines from before a date: the audit log is pruned by date only, and
    /// only when an administrator asks (keep what the law requires).
    PruneAudit {
        /// Lines before this time go (RFC 3339, such as `2019-01-01T00:00:00Z`).
        #[arg(long, value_parser = parse_time)]
        before: i64,
    },
    /// Write a consistent copy of the database to a file, while the server may be running;
    /// with the server's attachment bucket, its attachments' bytes are copied in too.
    Backup {
        /// Where to write the copy.
        to: PathBuf,
        #[command(flatten)]
        bucket: bucket::BucketArgs,
    },
    /// Set or show the schema pushed records are validated against.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Find records whose stored bytes do not load as what the server says they are; exits
    /// with failure if there are any.
    Check {
        /// Rebuild each damaged record from what is still good of it (see `repair`).
        #[arg(long)]
        repair: bool,
    },
    /// Rebuild a damaged record from the intact parts of its stored bytes, its changes in the
    /// feed and, if given, a device's copy of its document; devices get what they lack at
    /// their next sync.
    Repair {
        /// The record's collection.
        #[arg(long)]
        collection: String,
        /// The record's id.
        #[arg(long)]
        id: String,
        /// A file holding a device's copy of the record's document (its saved Automerge
        /// bytes), merged in.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Make the schema in FILE (the app's JSON declaration) the one in force. Only compatible
    /// changes are accepted: new collections, fields and indexes, required fields becoming
    /// optional. A running server picks it up at its next push.
    Set {
        /// The schema's JSON file.
        file: PathBuf,
    },
    /// Print the schema in force (or an earlier version) as JSON.
    Show {
        /// The version to show (default: the one in force).
        #[arg(long)]
        version: Option<u32>,
    },
    /// List the schema versions and when each was set.
    History,
}

#[derive(Subcommand)]
enum GroupGrantsCommand {
    /// Make the mappings in FILE the ones in force, replacing all before: one
    /// `group "NAME" -> read|write SCOPE` a line, `#` comments, a scope ending in `*` naming
    /// every scope with that prefix. Running servers use them from their next request.
    Set {
        /// The mappings file.
        file: PathBuf,
    },
    /// Print the mappings in force, as the file spells them.
    Show,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Add a webhook and print the secret its deliveries are signed with (shown only this
    /// once).
    Add {
        /// Where changes are posted (https; http only to this machine).
        #[arg(long)]
        url: String,
        /// The service account whose grants say which scopes' changes it receives.
        #[arg(long)]
        user: String,
        /// Deliver every change the server holds, not only those from now on.
        #[arg(long)]
        from_start: bool,
    },
    /// List webhooks and how their deliveries go.
    List,
    /// Remove a webhook.
    Remove {
        /// The webhook's id.
        id: i64,
    },
}

/// A time given as RFC 3339, in ms since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|_| "not an RFC 3339 time, such as 2026-12-01T00:00:00Z".to_owned())?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "a time before 1970".to_owned())?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| "a time too far ahead".to_owned())
}

#[derive(Clone, Copy, ValueEnum)]
enum AccessArg {
    Read,
    Write,
}

/// Parses the command line and runs the command; what the `fieldsync-server` binary does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        crate::admission::serve_with_tuned_malloc();
    }
    crate::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), ServerError> {
    let db = Database::parse(&cli.db);
    let open = || db.open(cli.db_connections);
    match cli.command {
        Command::Serve {
            listen,
            max_body_bytes,
            max_records_per_push,
            max_document_bytes,
            max_attachment_bytes,
            requests_per_second,
            request_burst,
            max_connections,
            head_timeout_secs,
            metrics_sample_secs,
            metrics_scope_labels,
            webhook_max_backoff_secs,
            feed_keep_days,
            identity,
            bucket,
        } => {
            let limits = Limits {
                max_body_bytes,
                max_records_per_push,
                max_document_bytes,
                max_attachment_bytes,
                requests_per_second,
                request_burst,
                webhook_max_backoff: std::time::Duration::from_secs(
                    webhook_max_backoff_secs.max(1),
                ),
                feed_keep_days: feed_keep_days.max(1),
                ..Limits::default()
            };
            let identity_provider = identity.provider()?;
            let bucket = bucket.bucket()?;
            let storage = open()?;
            if storage.count_users()? == 0 && identity_provider.is_none() {
                println!(
                    "The database has no users yet. Set the app's schema, create a user and \
                     enroll a device with:\n  \
                     fieldsync-server --db {db} schema set SCHEMA.json\n  \
                     fieldsync-server --db {db} create-user NAME\n  \
                     fieldsync-server --db {db} grant --user NAME --scope SCOPE\n  \
                     fieldsync-server --db {db} enroll-device --user NAME --name DEVICE"
                );
            } else if storage.schema_version()? == 0 {
                println!(
                    "No schema is set: pushes are refused until one is, with\n  \
                     fieldsync-server --db {db} schema set SCHEMA.json"
                );
            }
            let defaults = listener::ConnectionLimits::for_this_process();
            let connections = listener::ConnectionLimits {
                max_connections: max_connections.unwrap_or(defaults.max_connections),
                head_timeout: std::time::Duration::from_secs(head_timeout_secs.max(1)),
            };
            let state = AppState::new(storage.clone(), limits);
            let state = match identity_provider {
                Some(provider) => state.with_identity_provider(provider),
                None => state,
            };
            let state = match bucket {
                Some(bucket) => state.with_attachment_bucket(bucket),
                None => state,
            };
            state.metrics.label_scopes(metrics_scope_labels);
            let every = std::time::Duration::from_secs(metrics_sample_secs);
            let state = AppState {
                metrics_history: Arc::new(crate::metrics::history::History::new(every)),
                ..state
            };
            serve(storage, state, connections, listen)
        }
        Command::CreateUser {
            name,
            admin,
            service,
        } => {
            let role = match (admin, service) {
                (true, _) => Role::Admin,
                (false, true) => Role::Service,
                (false, false) => Role::Member,
            };
            let id = admin::create_user(&*open()?, admin::By::CommandLine, &name, role)?;
            println!("created user {name} (id {id})");
            Ok(())
        }
        Command::EnrollDevice {
            user,
            name,
            expires_in_days,
        } => {
            let enrolled = admin::enroll_device(
                &*open()?,
                admin::By::CommandLine,
                &user,
                &name,
                expires_in_days,
            )?;
            println!("device {} enrolled for {user}", enrolled.device_id);
            println!("token: {}", enrolled.token);
            Ok(())
        }
        Command::IssueToken {
            device,
            expires_in_days,
        } => {
            let (token, _) =
                admin::issue_token(&*open()?, admin::By::CommandLine, device, expires_in_days)?;
            println!("token: {token}");
            Ok(())
        }
        Command::RevokeToken { token_id } => {
            admin::revoke_token(&*open()?, admin::By::CommandLine, &token_id)?;
            println!("token {token_id} revoked");
            Ok(())
        }
        Command::RevokeDevice { device } => {
            admin::revoke_device(&*open()?, admin::By::CommandLine, device)?;
            println!("device {device} revoked");
            Ok(())
        }
        Command::Grant {
            user,
            scope,
            access,
        } => {
            let access = match access {
                AccessArg::Read => Access::Read,
                AccessArg::Write => Access::Write,
            };
            admin::grant(&*open()?, admin::By::CommandLine, &user, &scope, access)?;
            println!(
                "{user} may now {} {scope}",
                if access == Access::Write {
                    "read and write"
                } else {
                    "read"
                }
            );
            Ok(())
        }
        Command::RevokeGrant { user, scope } => {
            admin::revoke_grant(&*open()?, admin::By::CommandLine, &user, &scope)?;
            println!("{user} may no longer read {scope}");
            Ok(())
        }
        Command::Devices => listing::devices(&*open()?),
        Command::ReleaseActor { actor } => {
            admin::release_actor(&*open()?, admin::By::CommandLine, &actor)?;
            println!("actor {actor} released: the next device that stores a push as it binds it");
            Ok(())
        }
        Command::Users => listing::users(&*open()?),
        Command::GroupGrants(GroupGrantsCommand::Set { file }) => {
            let text = std::fs::read_to_string(&file).map_err(|err| {
                ServerError::BadRequest(format!("cannot read {}: {err}", file.display()))
            })?;
            let grants = crate::group_grants::GroupGrants::parse(&text)?;
            admin::set_group_grants(&*open()?, admin::By::CommandLine, &grants)?;
            println!("{} group mappings in force", grants.grants().len());
            Ok(())
        }
        Command::Webhook(WebhookCommand::Add {
            url,
            user,
            from_start,
        }) => {
            let added =
                admin::add_webhook(&*open()?, admin::By::CommandLine, &url, &user, from_start)?;
            println!(
                "added webhook {} for {user}; its deliveries are signed with {}",
                added.id, added.secret
            );
            Ok(())
        }
        Command::Webhook(WebhookCommand::List) => listing::webhooks(&*open()?),
        Command::Webhook(WebhookCommand::Remove { id }) => {
            admin::remove_webhook(&*open()?, admin::By::CommandLine, id)?;
            println!("removed webhook {id}");
            Ok(())
        }
        Command::Prune { keep_days } => {
            let pruned = crate::pruning::prune(&*open()?, keep_days, crate::storage::now_ms())?;
            println!(
                "pruned {} feed entries and {} push answers",
                pruned.feed_entries, pruned.push_answers
            );
            Ok(())
        }
        Command::PruneAudit { before } => {
            let pruned = open()?.prune_audit(before, 0)?;
            println!("deleted {pruned} audit lines");
            Ok(())
        }
        Command::Retention(command) => {
            let storage = open()?;
            retention::run(&*storage, || current_schema(&*storage), command)
        }
        Command::GroupGrants(GroupGrantsCommand::Show) => {
            print!("{}", admin::group_grants(&*open()?)?.to_text());
            Ok(())
        }
        Command::Audit {
            user,
            record,
            since,
            until,
            limit,
        } => {
            let query = AuditQuery {
                user,
                record_id: record,
                since,
                until,
                limit,
            };
            listing::audit(&*open()?, &query)
        }
        Command::CollectAttachments {
            grace_hours,
            bucket,
        } => {
            let storage = open()?;
            let schema = current_schema(&*storage)?;
            let chunks = match bucket.bucket()? {
                Some(bucket) => ChunkStore::Bucket(bucket),
                None => ChunkStore::Database,
            };
            let collected = block_on(async {
                chunks.check().await?;
                crate::attachments::collect::collect(
                    &storage,
                    &chunks,
                    schema,
                    i64::from(grace_hours) * 3_600_000,
                    crate::storage::now_ms(),
                )
                .await
            })?;
            println!(
                "{} attachments held, {} dropped ({} bytes)",
                collected.held, collected.dropped, collected.bytes
            );
            Ok(())
        }
        Command::ExportSubject { collection, id } => {
            let storage = open()?;
            let schema = current_schema(&*storage)?;
            let exported = crate::subject_export::export(
                &*storage,
                &schema,
                (&collection, &id),
                Limits::default().max_document_bytes,
            )?;
            let json = serde_json::to_string_pretty(&exported)
                .map_err(|err| ServerError::Internal(err.to_string()))?;
            println!("{json}");
            Ok(())
        }
        Command::Backup { to, bucket } => backup(&db, &to, bucket.bucket()?),
        Command::Schema(command) => run_schema(&*open()?, command),
        Command::Check { repair } => check(&*open()?, repair),
        Command::Erase(args) => {
            let storage = open()?;
            erasure::run(&storage, &current_schema(&*storage)?, args)
        }
        Command::Repair {
            collection,
            id,
            from,
        } => {
            let copy = from
                .map(|path| {
                    std::fs::read(&path).map_err(|err| {
                        ServerError::BadRequest(format!("cannot read {}: {err}", path.display()))
                    })
                })
                .transpose()?;
            let storage = open()?;
            let schema = current_schema(&*storage)?;
            let repaired =
                crate::repair::repair(&*storage, &schema, (&collection, &id), copy.as_deref())?;
            print_repaired(&collection, &id, repaired);
            Ok(())
        }
    }
}

fn check(storage: &dyn Storage, repair: bool) -> Result<(), ServerError> {
    let (checked, damaged) = crate::repair::check(storage)?;
    for damage in &damaged {
        println!("{}/{}: {}", damage.collection, damage.id, damage.problem);
    }
    println!("{checked} records checked, {} damaged", damaged.len());
    if damaged.is_empty() {
        return Ok(());
    }
    if !repair {
        return Err(ServerError::Corrupt(format!(
            "{} damaged records; rebuild them with `check --repair` or `repair`",
            damaged.len()
        )));
    }
    let schema = current_schema(storage)?;
    let mut failed = 0;
    for damage in &damaged {
        let key = (damage.collection.as_str(), damage.id.as_str());
        match crate::repair::repair(storage, &schema, key, None) {
            Ok(repaired) => print_repaired(&damage.collection, &damage.id, repaired),
            Err(err) => {
                failed += 1;
                println!("{}/{}: not repaired: {err}", damage.collection, damage.id);
            }
        }
    }
    if failed > 0 {
        return Err(ServerError::Corrupt(format!(
            "{failed} damaged records could not be repaired"
        )));
    }
    Ok(())
}

fn current_schema(storage: &dyn Storage) -> Result<fieldsync_record::Schema, ServerError> {
    let stored = storage.current_schema()?.ok_or(ServerError::NoSchema)?;
    schema::parse(&stored)
}

fn print_repaired(collection: &str, id: &str, repaired: crate::repair::Repaired) {
    println!(
        "{collection}/{id}: repaired with {} changes, {} left out",
        repaired.changes, repaired.left_out
    );
}

fn run_schema(storage: &dyn Storage, command: SchemaCommand) -> Result<(), ServerError> {
    match command {
        SchemaCommand::Set { file } => {
            let json = std::fs::read_to_string(&file).map_err(|err| {
                ServerError::Config(format!("cannot read {}: {err}", file.display()))
            })?;
            match schema::set_schema(storage, &json)? {
                SchemaSet::Added(version) => println!("schema version {version} is in force"),
                SchemaSet::Unchanged(version) => {
                    println!("schema unchanged: version {version} is already this schema")
                }
            }
            Ok(())
        }
        SchemaCommand::Show { version } => {
            let history = storage.schema_history()?;
            let shown = match version {
                Some(version) => history.into_iter().find(|s| s.version == version),
                None => history.into_iter().last(),
            };
            let stored = shown.ok_or_else(|| match version {
                Some(version) => ServerError::NotFound(format!("no schema version {version}")),
                None => ServerError::NoSchema,
            })?;
            let pretty = serde_json::to_string_pretty(&schema::parse(&stored)?)
                .expect("a schema always serializes");
            println!("{pretty}");
            Ok(())
        }
        SchemaCommand::History => {
            let history = storage.schema_history()?;
            if history.is_empty() {
                println!("no schema set");
            }
            for stored in history {
                let collections = schema::parse(&stored)?.collections.len();
                println!(
                    "version {} set {} ({collections} collections)",
                    stored.version,
                    listing::utc(stored.set_at)
                );
            }
            Ok(())
        }
    }
}

/// Writes a consistent copy of a SQLite database, with the bytes of attachments kept in
/// `bucket` copied in; PostgreSQL has its own tools.
fn backup(db: &Database, to: &std::path::Path, bucket: Option<Bucket>) -> Result<(), ServerError> {
    let Database::Sqlite(path) = db else {
        return Err(ServerError::Config(
            "`backup` copies SQLite databases; back up PostgreSQL with pg_dump \
             (see docs/DEPLOYMENT.md)"
                .into(),
        ));
    };
    SqliteStorage::open(path)?.backup_to(to)?;
    let copy = Arc::new(SqliteStorage::open(to)?);
    match bucket {
        Some(bucket) => {
            let copied = block_on(async {
                bucket.check().await?;
                crate::attachments::chunks::copy_into_backup(copy, &bucket).await
            })?;
            println!("{copied} attachment chunks copied from the bucket");
        }
        None => {
            let in_bucket = copy.chunks_in_bucket(None, 1)?;
            if !in_bucket.is_empty() {
                return Err(ServerError::Config(format!(
                    "the backup at {} lacks attachments whose bytes are in a bucket: run \
                     `backup` with the server's --attachment-bucket settings",
                    to.display()
                )));
            }
        }
    }
    println!("backup written to {}", to.display());
    Ok(())
}

/// Runs `work` on a runtime of its own, for the commands that reach a bucket.
fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, ServerError>>,
) -> Result<T, ServerError> {
    tokio::runtime::Runtime::new()
        .map_err(|err| ServerError::Internal(err.to_string()))?
        .block_on(work)
}

/// Serves `state`, whose storage is `storage`.
fn serve(
    storage: Arc<dyn Storage>,
    state: AppState,
    connections: listener::ConnectionLimits,
    listen: SocketAddr,
) -> Result<(), ServerError> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|err| ServerError::Internal(err.to_string()))?;
    let served = runtime.block_on(serve_on(state, connections, listen));
    // The runtime goes first, with every task still holding the storage; the storage is
    // dropped last, here: closing a PostgreSQL connection blocks, which must not happen on a
    // thread that drives async tasks.
    drop(runtime);
    drop(storage);
    served
}

async fn serve_on(
    state: AppState,
    connections: listener::ConnectionLimits,
    listen: SocketAddr,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| ServerError::Internal(format!("cannot listen on {listen}: {err}")))?;
    let address = listener
        .local_addr()
        .map_err(|err| ServerError::Internal(err.to_string()))?;
    // Tests and scripts read this line to find a server started on port 0.
    println!("listening on http://{address}");
    tracing::info!(%address, max_connections = connections.max_connections, "listening");
    state.chunks.check().await?;
    tokio::spawn(crate::attachments::collect::periodically(
        state.storage.clone(),
        state.chunks.clone(),
    ));
    tokio::spawn(crate::webhooks::deliver_forever(state.clone()));
    tokio::spawn(crate::retention::periodically(state.storage.clone()));
    tokio::spawn(crate::pruning::periodically(
        state.storage.clone(),
        state.limits.feed_keep_days,
    ));
    tokio::spawn(crate::metrics::history::sample_periodically(
        state.metrics.clone(),
        state.metrics_history.clone(),
    ));
    let app = router(state);
    listener::serve(listener, app, connections, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be handled");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    // Scripts and tests wait for this line to know the server stopped accepting.
    println!("shutting down: finishing in-flight requests");
    tracing::info!("shutting down");
}
