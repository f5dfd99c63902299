//! [`SqliteStore`]: pending calls in an SQLite file, so that they survive a restart.

use super::{Pending, PendingStore, StoreError, StoreOp};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use rusqlite::{params, Connection, OptionalExtension};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a write waits for another connection (another process) that holds the file:
/// 5 s, then it fails and the record is kept in memory.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS pending_calls (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    request_ids TEXT NOT NULL,      -- a JSON array of strings
    method TEXT NOT NULL,
    uri TEXT NOT NULL,
    headers BLOB NOT NULL,          -- `name:value` lines, each ended by CR LF
    body BLOB NOT NULL,
    recorded_at_ns INTEGER NOT NULL -- nanoseconds since the Unix epoch
)";

const COLUMNS: &str = "idempotency_key, request_ids, method, uri, headers, body, recorded_at_ns";

/// Pending calls in an SQLite file (feature `sqlite`), so that a process that restarts
/// finds the calls it had not settled. SQLite is bundled: nothing to install.
///
/// Each write is its own transaction, committed before the call's error reaches the
/// caller. The file may be shared by several processes on one machine.
///
/// ```
/// use resilient_http::stripe::reconcile::{Pending, PendingStore, Reconciler, SqliteStore};
/// use std::time::SystemTime;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("reconcile-doc-{}.sqlite", std::process::id()));
/// let call = Pending::new("key_1", http::Method::POST, "/v1/charges".parse()?, SystemTime::now());
/// SqliteStore::open(&path)?.insert(&call)?;
///
/// // After a restart: the same file, the same record.
/// let reconciler = Reconciler::with_store(SqliteStore::open(&path)?);
/// assert_eq!(reconciler.pending()?, [call]);
/// # for suffix in ["", "-wal", "-shm"] { let _ = std::fs::remove_file(format!("{}{suffix}", path.display())); }
/// # Ok(()) }
/// ```
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the store in the file at `path`, creating the file and its table if need be.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or created, or is not an SQLite database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let open = |source: rusqlite::Error| StoreError::new(StoreOp::Open, source);
        let connection = Connection::open(&path).map_err(open)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        // Write-ahead logging: readers do not block the writer, and a commit is one
        // append.
        connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(open)?;
        connection.execute_batch(SCHEMA).map_err(open)?;
        Ok(SqliteStore {
            path,
            connection: Mutex::new(connection),
        })
    }

    /// The file the store is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held leaves the connection usable: SQLite rolls
        // back what was not committed.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PendingStore for SqliteStore {
    fn insert(&self, pending: &Pending) -> Result<(), StoreError> {
        let insert = |source: Box<dyn std::error::Error + Send + Sync>| {
            StoreError::new(StoreOp::Insert, source)
        };
        let request_ids =
            serde_json::to_string(&pending.request_ids).map_err(|e| insert(e.into()))?;
        self.connection()
            .execute(
                &format!("INSERT OR REPLACE INTO pending_calls ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    pending.idempotency_key,
                    request_ids,
                    pending.method.as_str(),
                    pending.uri.to_string(),
                    encode_headers(&pending.headers),
                    pending.body.as_ref(),
                    to_nanos(pending.recorded_at),
                ],
            )
            .map_err(|e| insert(e.into()))?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<Option<Pending>, StoreError> {
        let remove = |source: Box<dyn std::error::Error + Send + Sync>| {
            StoreError::new(StoreOp::Remove, source)
        };
        let row = self
            .connection()
            .query_row(
                &format!(
                    "DELETE FROM pending_calls WHERE idempotency_key = ?1 RETURNING {COLUMNS}"
                ),
                [key],
                Row::read,
            )
            .optional()
            .map_err(|e| remove(e.into()))?;
        // The row is gone either way; one that does not decode is returned as unreadable.
        row.map(Row::decode)
            .transpose()
            .map_err(|e| remove(e.into()))
    }

    fn list(&self) -> Result<Vec<Pending>, StoreError> {
        let list = |source: rusqlite::Error| StoreError::new(StoreOp::List, source);
        let connection = self.connection();
        let mut statement = connection
            .prepare(&format!("SELECT {COLUMNS} FROM pending_calls"))
            .map_err(list)?;
        let rows = statement
            .query_map([], Row::read)
            .map_err(list)?
            .collect::<Result<Vec<Row>, _>>()
            .map_err(list)?;
        drop(statement);
        drop(connection);
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let key = row.idempotency_key.clone();
            match row.decode() {
                Ok(p) => pending.push(p),
                // One bad row must not hide the others; it stays in the file, for a person
                // to look at.
                Err(error) => tracing::warn!(
                    target: "resilient_http::reconcile",
                    path = %self.path.display(),
                    idempotency_key = %key,
                    %error,
                    "pending call not listed: its row does not decode"
                ),
            }
        }
        Ok(pending)
    }
}

/// One row as SQLite gives it back.
struct Row {
    idempotency_key: String,
    request_ids: String,
    method: String,
    uri: String,
    headers: Vec<u8>,
    body: Vec<u8>,
    recorded_at_ns: i64,
}

impl Row {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Row {
            idempotency_key: row.get(0)?,
            request_ids: row.get(1)?,
            method: row.get(2)?,
            uri: row.get(3)?,
            headers: row.get(4)?,
            body: row.get(5)?,
            recorded_at_ns: row.get(6)?,
        })
    }

    fn decode(self) -> Result<Pending, CorruptRow> {
        let corrupt = |column: &'static str| CorruptRow { column };
        Ok(Pending {
            request_ids: serde_json::from_str(&self.request_ids)
                .map_err(|_| corrupt("request_ids"))?,
            method: Method::from_bytes(self.method.as_bytes()).map_err(|_| corrupt("method"))?,
            uri: self.uri.parse::<Uri>().map_err(|_| corrupt("uri"))?,
            headers: decode_headers(&self.headers).ok_or(corrupt("headers"))?,
            body: Bytes::from(self.body),
            recorded_at: from_nanos(self.recorded_at_ns).ok_or(corrupt("recorded_at_ns"))?,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// A row whose column does not decode to what was written.
#[derive(Debug)]
struct CorruptRow {
    column: &'static str,
}

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {} of the row does not decode", self.column)
    }
}

impl std::error::Error for CorruptRow {}

/// Headers as `name:value` lines, each ended by CR LF. Lossless: a name holds no `:`, and
/// a value no CR or LF (`http` refuses them), so every line splits at its first `:`.
fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn decode_headers(bytes: &[u8]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

/// Nanoseconds since the Unix epoch, saturated to `i64` (about the years 1677 to 2262).
fn to_nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|n| -n)
            .unwrap_or(i64::MIN),
    }
}

fn from_nanos(nanos: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_whatever_their_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_static("k:1"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static(""));
        headers.insert("x-bytes", HeaderValue::from_bytes(b"caf\xe9\t: x").unwrap());
        assert_eq!(decode_headers(&encode_headers(&headers)), Some(headers));
        assert_eq!(decode_headers(b""), Some(HeaderMap::new()));
    }

    #[test]
    fn malformed_headers_do_not_decode() {
        for bad in [
            &b"no-colon\r\n"[..],
            b"x:unended",
            b"bad name:v\r\n",
            b"x:\x01\r\n",
        ] {
            assert_eq!(decode_headers(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        let times = [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(86_400, 1),
        ];
        for time in times {
            assert_eq!(from_nanos(to_nanos(time)), Some(time));
        }
        assert_eq!(
            to_nanos(UNIX_EPOCH + Duration::from_secs(1_000_000_000_000)),
            i64::MAX
        );
    }
}
