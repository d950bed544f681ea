//! The SQL a read model speaks, whichever database holds it: [`Db`], a
//! connection inside the transaction the runner opened, with statements as
//! text and parameters as [`Param`]s, and rows read through [`SqlRow`].
//!
//! A projection's statements are written once, in the SQL both backends
//! take: `?1`, `?2`, … (or plain `?`) for parameters, `INSERT … ON CONFLICT
//! (…) DO UPDATE SET … = excluded.…`, `CASE` rather than `max(a, b)` /
//! `GREATEST`, 64-bit integers and text. Only its `CREATE TABLE`s differ
//! (SQLite's `STRICT`, PostgreSQL's `BIGINT`): see
//! [`RowProjection::SCHEMA`](crate::projection::RowProjection::SCHEMA) and
//! `POSTGRES_SCHEMA`. The SQLite side is here (`impl Db for Connection`); the
//! PostgreSQL side is in herald-postgres.

use herald_core::store::StoreError;
use rusqlite::Connection;

use crate::sqlite::backend;

/// One statement parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Int(i64),
    Text(&'a str),
}

impl From<i64> for Param<'_> {
    fn from(n: i64) -> Self {
        Param::Int(n)
    }
}

/// Positions and counts past `i64::MAX` saturate (none is that large).
impl From<u64> for Param<'_> {
    fn from(n: u64) -> Self {
        Param::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Param<'_> {
    fn from(n: usize) -> Self {
        Param::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(s: &'a str) -> Self {
        Param::Text(s)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(s: &'a String) -> Self {
        Param::Text(s)
    }
}

/// One row of a query's result.
pub trait SqlRow {
    /// The integer in column `idx` (0-based).
    fn int(&self, idx: usize) -> Result<i64, StoreError>;
    /// The text in column `idx` (0-based).
    fn text(&self, idx: usize) -> Result<String, StoreError>;
}

impl dyn SqlRow + '_ {
    /// A position (or count) in column `idx`: a negative one is a damaged row.
    pub fn position(&self, idx: usize) -> Result<u64, StoreError> {
        let n = self.int(idx)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("read model column {idx}: negative value {n}")))
    }
}

/// A connection inside a transaction, as a projection's code sees it.
pub trait Db {
    /// Runs one statement; returns the rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;

    /// Runs one query, calling `each` for every row, in order.
    fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

impl dyn Db + '_ {
    /// The first row of a query, if any, read by `f`.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn SqlRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut out = None;
        self.query(sql, params, &mut |row| {
            if out.is_none() {
                out = Some(f(row)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every row of a query, each read by `f`.
    pub fn query_vec<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn SqlRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.query(sql, params, &mut |row| {
            out.push(f(row)?);
            Ok(())
        })?;
        Ok(out)
    }
}

fn bind(stmt: &mut rusqlite::Statement<'_>, params: &[Param<'_>]) -> Result<(), StoreError> {
    for (i, param) in params.iter().enumerate() {
        match *param {
            Param::Int(n) => stmt.raw_bind_parameter(i + 1, n),
            Param::Text(s) => stmt.raw_bind_parameter(i + 1, s),
        }
        .map_err(backend)?;
    }
    Ok(())
}

struct SqliteRow<'a, 'r>(&'a rusqlite::Row<'r>);

impl SqlRow for SqliteRow<'_, '_> {
    fn int(&self, idx: usize) -> Result<i64, StoreError> {
        self.0.get(idx).map_err(backend)
    }

    fn text(&self, idx: usize) -> Result<String, StoreError> {
        self.0.get(idx).map_err(backend)
    }
}

/// Statements are prepared once per connection (`prepare_cached`); the
/// parameters are bound by index, so `?N` is the N-th [`Param`].
impl Db for Connection {
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.prepare_cached(sql).map_err(backend)?;
        bind(&mut stmt, params)?;
        Ok(stmt.raw_execute().map_err(backend)? as u64)
    }

    fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql).map_err(backend)?;
        bind(&mut stmt, params)?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(backend)? {
            each(&SqliteRow(row))?;
        }
        Ok(())
    }
}

/// Most rows one multi-row statement of a read model carries.
pub const MAX_CHUNK: usize = 64;

/// How many of `remaining` rows the next multi-row statement takes: the
/// largest power of two up to [`MAX_CHUNK`], so a model's statements come in
/// at most seven shapes (each prepared once per connection), whatever the sizes.
pub fn chunk_len(remaining: usize) -> usize {
    let n = remaining.clamp(1, MAX_CHUNK);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// `count` groups of `width` numbered parameters, `(?1, ?2), (?3, ?4)`
/// (with `width` 1: `?1, ?2`, for an `IN (…)` list).
pub fn numbered(count: usize, width: usize) -> String {
    let mut out = String::with_capacity(count * width * 5);
    for row in 0..count {
        if row > 0 {
            out.push_str(", ");
        }
        if width > 1 {
            out.push('(');
        }
        for col in 0..width {
            if col > 0 {
                out.push_str(", ");
            }
            out.push('?');
            out.push_str(&(row * width + col + 1).to_string());
        }
        if width > 1 {
            out.push(')');
        }
    }
    out
}

/// `sql` with every `?N` (and every plain `?`, numbered in order) written
/// `$N`, PostgreSQL's parameters. Statements of read models hold no `?` in
/// a string literal or a name.
pub fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut next = 1usize;
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(&(_, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            digits.push(d);
            chars.next();
        }
        out.push('$');
        if digits.is_empty() {
            out.push_str(&next.to_string());
            next += 1;
        } else {
            out.push_str(&digits);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_up_to_the_most() {
        let sizes = |mut n: usize| {
            let mut out = Vec::new();
            while n > 0 {
                let c = chunk_len(n);
                out.push(c);
                n -= c;
            }
            out
        };
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(37), vec![32, 4, 1]);
        assert_eq!(sizes(64), vec![64]);
        assert_eq!(sizes(130), vec![64, 64, 2]);
        assert_eq!(numbered(2, 2), "(?1, ?2), (?3, ?4)");
        assert_eq!(numbered(3, 1), "?1, ?2, ?3");
    }

    #[test]
    fn numbered_and_plain_parameters_become_dollars() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT a FROM t WHERE a = $1 AND b = $12"
        );
        assert_eq!(
            dollar_params("INSERT INTO t VALUES (?, ?), (?, ?)"),
            "INSERT INTO t VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(dollar_params("no parameters"), "no parameters");
    }

    #[test]
    fn sqlite_rows_come_back_typed_and_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        let db: &dyn Db = &conn;
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER NOT NULL) STRICT", &[])
            .unwrap();
        for (k, n) in [("b", 2i64), ("a", 1), ("c", -3)] {
            assert_eq!(
                db.execute("INSERT INTO t (k, n) VALUES (?1, ?2)", &[k.into(), n.into()])
                    .unwrap(),
                1
            );
        }
        let rows = db
            .query_vec("SELECT k, n FROM t WHERE n < ?1 ORDER BY k", &[10i64.into()], |r| {
                Ok((r.text(0)?, r.int(1)?))
            })
            .unwrap();
        assert_eq!(rows, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), -3)]);
        let none = db
            .query_opt("SELECT n FROM t WHERE k = ?1", &["zz".into()], |r| r.int(0))
            .unwrap();
        assert_eq!(none, None);
        let negative = db.query_opt("SELECT n FROM t WHERE k = 'c'", &[], |r| r.position(0));
        assert!(matches!(negative, Err(StoreError::Corrupt(_))), "{negative:?}");
    }
}
