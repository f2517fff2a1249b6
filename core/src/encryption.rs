//! Encryption at rest: the store file (and its WAL) encrypted by SQLCipher with a 256-bit raw
//! key that the app keeps in the iOS Keychain or the Android Keystore.
//!
//! A raw key skips SQLCipher's passphrase derivation (PBKDF2), so opening costs nothing extra,
//! and the key's strength is the platform key store's. Temporary tables and indexes stay in
//! memory (`temp_store = MEMORY`), and the store writes no other file.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// A 256-bit key for an encrypted store. Its bytes are wiped from memory when it is dropped,
/// and it never prints.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl EncryptionKey {
    /// A key from its 32 bytes (as kept in the Keychain or Keystore).
    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        EncryptionKey(bytes)
    }

    /// A key from a byte slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<EncryptionKey> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidKey(format!("a key has 32 bytes, not {}", bytes.len())))?;
        Ok(EncryptionKey(bytes))
    }

    /// A new random key, for an app creating its store for the first time.
    pub fn generate() -> Result<EncryptionKey> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|err| Error::InvalidKey(format!("no randomness for a new key: {err}")))?;
        Ok(EncryptionKey(bytes))
    }

    /// The key's bytes, to store in the Keychain or Keystore.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The SQLCipher literal for a raw key, `"x'<64 hex digits>'"`. PRAGMA takes no
    /// parameters; the text is built from hex digits only.
    fn sql_literal(&self) -> Zeroizing {
        let mut text = String::with_capacity(69);
        text.push_str("\"x'");
        for byte in self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text.push_str("'\"");
        Zeroizing(text)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// A string wiped when dropped: SQL text that carries a key.
struct Zeroizing(String);

impl Drop for Zeroizing {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// What the first bytes of an existing file say.
#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    /// No file yet, or an empty one: it will be created as asked.
    New,
    /// A plain SQLite file.
    Plain,
    /// Anything else: an encrypted file (or not SQLite at all).
    Other,
}

/// SQLite's smallest page size; SQLCipher's pages are 4096 bytes unless configured otherwise.
const MIN_PAGE_SIZE: u64 = 512;

fn file_kind(path: &Path) -> Result<FileKind> {
    let mut header = [0u8; 16];
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::New),
        Err(err) => return Err(Error::Corrupt(format!("the file cannot be read: {err}"))),
    };
    let len = file
        .metadata()
        .map_err(|err| Error::Corrupt(format!("the file cannot be read: {err}")))?
        .len();
    // SQLite sees a file shorter than one page as holding no pages, an empty database, and
    // the store would be created afresh over what is left of the old one.
    if (1..MIN_PAGE_SIZE).contains(&len) {
        return Err(Error::Corrupt(format!(
            "the file is {len} bytes long, shorter than one database page: it was cut short"
        )));
    }
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) => return Err(Error::Corrupt(format!("the file cannot be read: {err}"))),
        }
    }
    Ok(match read {
        0 => FileKind::New,
        _ if &header[..read] == b"SQLite format 3\0" => FileKind::Plain,
        _ => FileKind::Other,
    })
}

/// Keys a new connection (before anything else touches the file) and checks that the key and
/// the file agree, so that a wrong or missing key is a typed error and nothing is written.
pub(crate) fn unlock(conn: &Connection, path: &Path, key: Option<&EncryptionKey>) -> Result<()> {
    let kind = file_kind(path)?;
    match (key, &kind) {
        (None, FileKind::Other) => return Err(Error::KeyRequired),
        (Some(_), FileKind::Plain) => return Err(Error::NotEncrypted),
        _ => {}
    }
    if let Some(key) = key {
        conn.execute_batch(&format!("PRAGMA key = {};", key.sql_literal().0))?;
    }
    // The first read decrypts page 1: a wrong key (or a file that is not SQLite) fails here.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(err) if err.sqlite_error_code() == Some(ErrorCode::NotADatabase) => match key {
            Some(_) => Err(Error::WrongKey),
            None => Err(Error::Corrupt("the file is not a SQLite database".into())),
        },
        Err(err) => Err(err.into()),
    }
}

/// Re-encrypts the open database with `new_key`. The WAL is checkpointed into the main file
/// first and journaling switches to a rollback journal for the rewrite, so that no page stays
/// behind under the old key.
pub(crate) fn rekey(conn: &Connection, new_key: &EncryptionKey) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    let rekeyed = conn.execute_batch(&format!("PRAGMA rekey = {};", new_key.sql_literal().0));
    // Back to WAL whatever happened: the store relies on it.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    rekeyed?;
    Ok(())
}

/// Encrypts an unencrypted store file in place with `key`. The file must not be open. The
/// encrypted copy is written beside it and renamed over it only when complete, so a crash
/// leaves either the old file or the new one.
pub(crate) fn encrypt_file(path: &Path, key: &EncryptionKey) -> Result<()> {
    match file_kind(path)? {
        FileKind::Plain => {}
        FileKind::New => {
            return Err(Error::Corrupt(format!(
                "there is no store file at {}",
                path.display()
            )));
        }
        FileKind::Other => return Err(Error::AlreadyEncrypted),
    }
    let partial = sibling(path, ".encrypting");
    remove_if_present(&partial)?;
    {
        let conn = Connection::open(path)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        conn.execute(
            &format!(
                "ATTACH DATABASE ?1 AS encrypted KEY {}",
                key.sql_literal().0
            ),
            [partial.to_string_lossy()],
        )?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        // `version` is our own integer; PRAGMA takes no parameters.
        conn.execute_batch(&format!("PRAGMA encrypted.user_version = {version}"))?;
        conn.execute_batch("DETACH DATABASE encrypted")?;
    }
    File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(|err| Error::Corrupt(format!("the encrypted copy cannot be synced: {err}")))?;
    std::fs::rename(&partial, path).map_err(|err| {
        Error::Corrupt(format!("the encrypted copy cannot replace the file: {err}"))
    })?;
    // The old file's WAL and shared memory belonged to the plain file.
    remove_if_present(&sibling(path, "-wal"))?;
    remove_if_present(&sibling(path, "-shm"))?;
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::Corrupt(format!(
            "{} cannot be removed: {err}",
            path.display()
        ))),
    }
}
