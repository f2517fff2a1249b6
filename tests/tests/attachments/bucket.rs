//! The attachment bucket against a real S3 API server (s3proxy, see
//! `fieldsync_tests::s3proxy`): objects written, read and deleted under the prefix, and the
//! ways a misconfigured bucket fails, each with an error that says what to fix.

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use fieldsync_record::protocol::ATTACHMENT_CHUNK_BYTES;
use fieldsync_server::attachments::bucket::{Bucket, BucketConfig};
use fieldsync_server::error::ServerError;
use fieldsync_tests::s3proxy::S3Proxy;

/// Long enough for anything on loopback; a request that takes longer hangs.
const PATIENCE: Duration = Duration::from_secs(30);

/// s3proxy, started off the async threads, with the bucket `name` created.
async fn s3proxy_with_bucket(name: &str) -> S3Proxy {
    let s3 = tokio::task::spawn_blocking(S3Proxy::start).await.unwrap();
    s3.create_bucket(name).await;
    s3
}

/// The files under `dir`, as paths relative to it with `/` between segments, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_str().unwrap();
                found.push(relative.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_written_read_and_deleted_under_the_prefix() {
    let s3 = s3proxy_with_bucket("clinic-attachments").await;
    let bucket = Bucket::new(s3.config("clinic-attachments", "north/chunks/")).unwrap();
    bucket.check().await.unwrap();

    let chunk: Vec<u8> = (0..ATTACHMENT_CHUNK_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let (full, empty, missing) = (
        "6e6f727468/ab12/0",
        "6e6f727468/ab12/1",
        "6e6f727468/ab12/2",
    );
    bucket.put(full, Bytes::from(chunk.clone())).await.unwrap();
    bucket.put(empty, Bytes::new()).await.unwrap();
    let read = bucket.get(full).await.unwrap().expect("the chunk is held");
    assert!(
        read == chunk,
        "the chunk reads back whole ({} bytes)",
        read.len()
    );
    assert_eq!(bucket.get(empty).await.unwrap().as_deref(), Some(&[][..]));
    assert_eq!(bucket.get(missing).await.unwrap(), None);

    // The objects are under the prefix, the bytes as sent.
    let bucket_dir = s3.buckets_dir().join("clinic-attachments");
    assert_eq!(
        files(&bucket_dir),
        [
            "north/chunks/6e6f727468/ab12/0",
            "north/chunks/6e6f727468/ab12/1"
        ]
    );
    assert!(std::fs::read(bucket_dir.join("north/chunks/6e6f727468/ab12/0")).unwrap() == chunk);

    // Writing again replaces.
    bucket
        .put(full, Bytes::from_static(b"written again"))
        .await
        .unwrap();
    assert_eq!(
        bucket.get(full).await.unwrap().as_deref(),
        Some(&b"written again"[..])
    );

    bucket.delete(full).await.unwrap();
    assert_eq!(bucket.get(full).await.unwrap(), None);
    assert_eq!(
        files(&bucket_dir),
        ["north/chunks/6e6f727468/ab12/1"],
        "deleted from the bucket"
    );
    // Deleting what the bucket does not hold is not an error: it is deleted already.
    bucket.delete(full).await.unwrap();
    bucket.delete(missing).await.unwrap();
    bucket.delete(empty).await.unwrap();
    assert_eq!(bucket.get(empty).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_check_naming_the_credentials() {
    let s3 = s3proxy_with_bucket("attachments").await;
    let right = s3.config("attachments", "");
    for wrong in [
        BucketConfig {
            secret_access_key: "not-the-secret".into(),
            ..right.clone()
        },
        BucketConfig {
            access_key_id: "someone-else".into(),
            ..right.clone()
        },
    ] {
        let bucket = Bucket::new(wrong).unwrap();
        let err = bucket.check().await.unwrap_err();
        assert!(matches!(err, ServerError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("refused the credentials"), "{err}");
        // Later requests say so too, with S3's error code, for the operator.
        let err = bucket
            .put("ab/0", Bytes::from_static(b"bytes"))
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::Config(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("refused the credentials (403 "),
            "{message}"
        );
        assert!(
            !message.contains("bytes"),
            "no body in the message: {message}"
        );
    }
    Bucket::new(right).unwrap().check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_the_check_naming_the_bucket() {
    let s3 = s3proxy_with_bucket("attachments").await;
    let bucket = Bucket::new(s3.config("no-such-bucket", "")).unwrap();
    let err = bucket.check().await.unwrap_err();
    assert!(matches!(err, ServerError::Config(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("\"no-such-bucket\" does not exist"),
        "{message}"
    );
    // An object of a missing bucket is not merely missing: the server would lose track of
    // chunks it believes stored.
    let err = bucket.get("ab/0").await.unwrap_err();
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    // (A DELETE is refused likewise by S3, but s3proxy answers it 204.)
    let err = bucket.put("ab/0", Bytes::new()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_nothing_listening_fails_at_once() {
    // A port that was free a moment ago, and is closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let bucket = Bucket::new(BucketConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "attachments".into(),
        region: "us-east-1".into(),
        prefix: String::new(),
        virtual_hosted: false,
        access_key_id: "fieldsync".into(),
        secret_access_key: "secret".into(),
        session_token: None,
    })
    .unwrap();
    let err = tokio::time::timeout(PATIENCE, bucket.check())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, ServerError::Config(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("http://127.0.0.1:{port} did not answer")),
        "{err}"
    );
    // Later, the devices are told to try again: nothing was stored.
    let err = tokio::time::timeout(PATIENCE, bucket.get("ab/0"))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, ServerError::TryAgain(_)), "{err:?}");
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "no address told: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_is_sent_and_signed() {
    let s3 = s3proxy_with_bucket("attachments").await;
    let bucket = Bucket::new(BucketConfig {
        session_token: Some("FwoGZXIvYXdzEXAMPLE//token+with/odd=characters".into()),
        ..s3.config("attachments", "")
    })
    .unwrap();
    bucket.check().await.unwrap();
    bucket
        .put("ab/0", Bytes::from_static(b"with a token"))
        .await
        .unwrap();
    assert_eq!(
        bucket.get("ab/0").await.unwrap().as_deref(),
        Some(&b"with a token"[..])
    );
    assert_eq!(files(&s3.buckets_dir().join("attachments")), ["ab/0"]);
}

/// The settings of a server keeping attachments in `bucket` of `s3`.
fn bucket_settings(s3: &S3Proxy, bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FIELDSYNC_ATTACHMENT_BUCKET", bucket.to_string()),
        ("FIELDSYNC_ATTACHMENT_BUCKET_ENDPOINT", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", s3.identity().to_string()),
        ("AWS_SECRET_ACCESS_KEY", s3.credential().to_string()),
    ]
}

fn borrowed<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// Counts the server's chunk rows: (bytes in the database, bytes in the bucket).
fn chunk_rows(db: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT count(bytes), count(*) - count(bytes) FROM attachment_chunks",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

/// A server keeping attachments in a bucket: devices exchange them as before, the bytes are
/// objects of the bucket and not rows of the database, `backup` copies them into the backup
/// (and refuses without the bucket), and `collect-attachments` removes them from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_keeps_attachments_in_the_bucket() {
    use fieldsync_core::{AttachmentSource, SyncClient, SyncConfig};
    use fieldsync_server::attachments::chunks::object_key;
    use fieldsync_tests::server::ServerProcess;
    use fieldsync_tests::{fields, open_device};
    use serde_json::json;

    let s3 = s3proxy_with_bucket("clinic").await;
    let settings = bucket_settings(&s3, "clinic");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let server = {
        let (db, settings) = (db.clone(), settings.clone());
        tokio::task::spawn_blocking(move || {
            ServerProcess::start_with_env(
                Path::new(super::SERVER),
                &db,
                &[],
                &borrowed(&settings),
                None,
            )
        })
        .await
        .unwrap()
    };
    let ada = server.user_with_device("ada", &["north"]);
    let bo = server.user_with_device("bo", &["north"]);
    let phone = open_device(&dir.path().join("phone.db"));
    let tablet = open_device(&dir.path().join("tablet.db"));
    let phone_client = SyncClient::new(SyncConfig::new(&server.url, &ada)).unwrap();
    let tablet_client = SyncClient::new(SyncConfig::new(&server.url, &bo)).unwrap();

    let client = phone
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Sam"})),
        )
        .unwrap();
    let form = super::recording(2 * ATTACHMENT_CHUNK_BYTES + 99, 3);
    let consent = phone
        .attach(
            "clients",
            &client,
            "consent_form",
            AttachmentSource::Bytes(&form),
            "image/jpeg",
            None,
        )
        .unwrap();
    assert_eq!(
        phone_client
            .sync_now(&phone)
            .await
            .unwrap()
            .attachments_sent,
        1
    );
    tablet_client.sync_now(&tablet).await.unwrap();
    assert_eq!(tablet.attachment_bytes(&consent).unwrap().unwrap(), form);

    // Three chunks arrived; their bytes are objects in the bucket, none in the database.
    assert_eq!(chunk_rows(&db), (0, 3));
    let bucket = Bucket::new(s3.config("clinic", "fieldsync-attachments/")).unwrap();
    let key = ("north".to_string(), consent.sha256);
    let last = bucket.get(&object_key(&key, 2)).await.unwrap().unwrap();
    assert_eq!(last, form[2 * ATTACHMENT_CHUNK_BYTES..]);

    // A backup holds the bytes itself.
    let backup = dir.path().join("backup.db");
    let said = server.admin(&["backup", backup.to_str().unwrap()]);
    assert!(said.contains("3 attachment chunks copied"), "{said}");
    assert_eq!(chunk_rows(&backup), (3, 0));
    let conn = rusqlite::Connection::open(&backup).unwrap();
    let copied: Vec<u8> = conn
        .prepare("SELECT bytes FROM attachment_chunks ORDER BY chunk")
        .unwrap()
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    assert!(copied == form, "the backup holds the attachment's bytes");
    // Without the bucket's settings, a backup would lack them: refused.
    let refused = std::process::Command::new(super::SERVER)
        .arg("--db")
        .arg(&db)
        .args(["backup", dir.path().join("partial.db").to_str().unwrap()])
        .env("FIELDSYNC_LOG", "warn")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--attachment-bucket"), "{stderr}");

    // The record deleted, its attachment is collected, from the bucket too.
    phone.delete("clients", &client).unwrap();
    phone_client.sync_now(&phone).await.unwrap();
    let said = server.admin(&["collect-attachments", "--grace-hours", "0"]);
    assert!(said.contains("1 dropped"), "{said}");
    assert_eq!(chunk_rows(&db), (0, 0));
    for chunk in 0..3 {
        assert_eq!(bucket.get(&object_key(&key, chunk)).await.unwrap(), None);
    }
}

/// A server told of a bucket it cannot use refuses to start, saying what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refuses_to_start_with_a_bucket_it_cannot_use() {
    let s3 = s3proxy_with_bucket("clinic").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let mut settings = bucket_settings(&s3, "clinic");
    settings[3].1 = "not-the-secret".into();
    let mut server = std::process::Command::new(super::SERVER)
        .arg("--db")
        .arg(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs(borrowed(&settings))
        .env("FIELDSYNC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            server.kill().unwrap();
            server.wait().unwrap();
            panic!("the server started with a wrong secret");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("credentials"), "{stderr}");
}
