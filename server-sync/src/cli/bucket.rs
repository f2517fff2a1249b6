//! Where attachments' bytes are kept, for `serve`, `collect-attachments` and `backup`: the
//! database by default, or an S3-compatible bucket (AWS S3, MinIO, Ceph).

use clap::Args;

use crate::attachments::bucket::{Bucket, BucketConfig};
use crate::error::ServerError;

/// An S3-compatible bucket for attachments' bytes. The credentials come from the environment,
/// never the command line: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary
/// credentials, `AWS_SESSION_TOKEN`.
#[derive(Args, Debug, Clone)]
pub(super) struct BucketArgs {
    /// Keep attachments' bytes in this bucket rather than the database (which still records
    /// what arrived). Every instance of a server, and its `backup`, must name the same one.
    #[arg(long, env = "FIELDSYNC_ATTACHMENT_BUCKET")]
    attachment_bucket: Option<String>,
    /// The S3 endpoint (default: AWS S3 in the region, `https://s3.REGION.amazonaws.com`).
    #[arg(
        long,
        env = "FIELDSYNC_ATTACHMENT_BUCKET_ENDPOINT",
        requires = "attachment_bucket"
    )]
    attachment_bucket_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(
        long,
        env = "FIELDSYNC_ATTACHMENT_BUCKET_REGION",
        default_value = "us-east-1"
    )]
    attachment_bucket_region: String,
    /// Prepended to every key the server writes in the bucket.
    #[arg(
        long,
        env = "FIELDSYNC_ATTACHMENT_BUCKET_PREFIX",
        default_value = "fieldsync-attachments/"
    )]
    attachment_bucket_prefix: String,
    /// Address the bucket by host name (`BUCKET.ENDPOINT-HOST`, as AWS S3 prefers) rather
    /// than by path (`ENDPOINT/BUCKET`, as MinIO and Ceph do by default).
    #[arg(long, env = "FIELDSYNC_ATTACHMENT_BUCKET_VIRTUAL_HOSTED")]
    attachment_bucket_virtual_hosted: bool,
}

impl BucketArgs {
    /// The bucket named, if any; not yet reached (see [`Bucket::check`]).
    pub(super) fn bucket(&self) -> Result<Option<Bucket>, ServerError> {
        let Some(bucket) = &self.attachment_bucket else {
            return Ok(None);
        };
        let credential = |name: &str| {
            std::env::var(name).map_err(|_| {
                ServerError::Config(format!(
                    "--attachment-bucket needs the bucket's credentials in {name}"
                ))
            })
        };
        let region = self.attachment_bucket_region.clone();
        let endpoint = self
            .attachment_bucket_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Bucket::new(BucketConfig {
            endpoint,
            bucket: bucket.clone(),
            region,
            prefix: self.attachment_bucket_prefix.clone(),
            virtual_hosted: self.attachment_bucket_virtual_hosted,
            access_key_id: credential("AWS_ACCESS_KEY_ID")?,
            secret_access_key: credential("AWS_SECRET_ACCESS_KEY")?,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        })
        .map(Some)
    }
}
