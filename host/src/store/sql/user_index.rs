//! The users' dense index on every backend, kept where a run writes
//! anyway, so that a first run of millions of users adds no B-tree insert
//! per user:
//!
//! - `user_tag_sets.uidx`: each row's index, written with the row; a run
//!   reads it for the rows it updates or deletes;
//! - `retired_users`: the index of each user whose row was deleted (no tag
//!   left), which the user gets back with a new row;
//! - `audience_ids`: the ids in index order, a chunk per batch of newly
//!   indexed users (`first_uidx`, how many, their ids front-coded),
//!   appended once per batch: what exports and member pages read.
//!
//! New users get consecutive indexes after the last chunk's, taken while
//! the run holds the writers' lock (SQLite's write transaction, MariaDB's
//! run lock, a PostgreSQL advisory lock held to the commit), so two runs
//! never hand out the same index. An index is never reused by another
//! user.

use super::{Arg, Conn, Dialect};
use crate::store::{Op, StoreError, UserRows};
use std::collections::HashMap;

/// Users per statement of the index's lookups and inserts.
const CHUNK: usize = 500;

/// PostgreSQL's advisory lock on handing out indexes (to the commit).
const PG_LOCK: i64 = 7_461_676_574;

/// `n` placeholders, comma-separated.
pub fn marks(n: usize, each: &str) -> String {
    vec![each; n].join(", ")
}

/// Appends `n` as LEB128.
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            return;
        }
    }
}

/// A LEB128 number at the front of `bytes`, and the rest.
fn take_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (mut n, mut shift) = (0usize, 0);
    for (i, &byte) in bytes.iter().enumerate() {
        n |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
        shift += 7;
        if shift > 35 {
            return None;
        }
    }
    None
}

/// Ids as a chunk stores them, front-coded: for each, the bytes it shares
/// with the one before, then the length and bytes of the rest (a batch of
/// ids sorted by id takes a few bytes each).
pub fn encode_ids(ids: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 6);
    let mut before: &[u8] = &[];
    for id in ids {
        let id = id.as_bytes();
        let shared = before.iter().zip(id).take_while(|(a, b)| a == b).count();
        push_varint(&mut out, shared);
        push_varint(&mut out, id.len() - shared);
        out.extend_from_slice(&id[shared..]);
        before = id;
    }
    out
}

/// The ids [`encode_ids`] wrote.
pub fn decode_ids(mut bytes: &[u8]) -> Result<Vec<String>, StoreError> {
    let corrupt = || StoreError::Corrupt("a chunk of user ids is cut short".into());
    let mut out: Vec<String> = Vec::new();
    let mut before: Vec<u8> = Vec::new();
    while !bytes.is_empty() {
        let (shared, rest) = take_varint(bytes).ok_or_else(corrupt)?;
        let (len, rest) = take_varint(rest).ok_or_else(corrupt)?;
        let suffix = rest.get(..len).ok_or_else(corrupt)?;
        before.truncate(shared.min(before.len()));
        if before.len() != shared {
            return Err(corrupt());
        }
        before.extend_from_slice(suffix);
        out.push(
            String::from_utf8(before.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        bytes = &rest[len..];
    }
    Ok(out)
}

/// The index after the last chunk's, with the allocation locked for the
/// rest of the transaction.
fn next_free(c: &mut dyn Conn) -> Result<u32, StoreError> {
    let last = "SELECT first_uidx + user_count FROM audience_ids ORDER BY first_uidx DESC LIMIT 1";
    let sql = match c.dialect() {
        Dialect::Sqlite => last.to_string(),
        Dialect::Postgres => {
            c.execute("SELECT pg_advisory_xact_lock(?)", &[Arg::Int(PG_LOCK)])?;
            format!("{last} FOR UPDATE")
        }
        Dialect::MySql => format!("{last} FOR UPDATE"),
    };
    let next = c.query_first(&sql, &[])?.map(|r| r.int(0)).transpose()?;
    u32::try_from(next.unwrap_or(0)).map_err(|_| {
        StoreError::Database("the dense user index is full (4,294,967,295 users)".into())
    })
}

/// Each of `users`' index from `table` (`user_tag_sets` or
/// `retired_users`), by id; those not there are left out.
pub fn lookup(
    c: &mut dyn Conn,
    table: &str,
    users: &[&str],
) -> Result<HashMap<String, u32>, StoreError> {
    let mut found = HashMap::with_capacity(users.len());
    for chunk in users.chunks(CHUNK) {
        let sql = format!(
            "SELECT user_id, uidx FROM {table} WHERE user_id IN ({})",
            marks(chunk.len(), "?")
        );
        let args: Vec<Arg<'_>> = chunk.iter().map(|u| Arg::Text(u)).collect();
        for row in c.query(&sql, &args)? {
            if let Some(uidx) = row.opt_int(1)? {
                found.insert(
                    row.text(0)?,
                    u32::try_from(uidx)
                        .map_err(|_| StoreError::Corrupt(format!("index {uidx}")))?,
                );
            }
        }
    }
    Ok(found)
}

/// Runs `sql` (ending in `IN (`) over `users`, [`CHUNK`] at a time.
fn each_chunk(c: &mut dyn Conn, sql: &str, users: &[&str]) -> Result<(), StoreError> {
    for chunk in users.chunks(CHUNK) {
        let sql = format!("{sql}{})", marks(chunk.len(), "?"));
        let args: Vec<Arg<'_>> = chunk.iter().map(|u| Arg::Text(u)).collect();
        c.execute(&sql, &args)?;
    }
    Ok(())
}

/// Hands out indexes within one transaction (the first use locks the
/// allocation until it ends).
#[derive(Debug, Default)]
pub struct Allocator {
    next: Option<u32>,
    /// Whether `retired_users` may hold someone (asked once per run).
    retired: Option<bool>,
}

impl Allocator {
    /// The index of each row of `changes` (in their order), called before
    /// they are applied: an update's or delete's is read from its row (a
    /// delete's is retired), a new row gets its user's retired index back
    /// or the next one.
    pub fn index(&mut self, c: &mut dyn Conn, changes: &UserRows) -> Result<Vec<u32>, StoreError> {
        let rows: Vec<(Op, &str)> = changes.iter().map(|(op, user, _)| (op, user)).collect();
        let mut out = vec![u32::MAX; rows.len()];
        let (new, there): (Vec<usize>, Vec<usize>) =
            (0..rows.len()).partition(|&i| rows[i].0 == Op::Insert);
        if !there.is_empty() {
            let users: Vec<&str> = there.iter().map(|&i| rows[i].1).collect();
            let found = lookup(c, "user_tag_sets", &users)?;
            for &i in &there {
                out[i] = *found.get(rows[i].1).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "user {:?} has a row but no dense index",
                        rows[i].1
                    ))
                })?;
            }
            let deleted: Vec<(&str, u32)> = there
                .iter()
                .filter(|&&i| rows[i].0 == Op::Delete)
                .map(|&i| (rows[i].1, out[i]))
                .collect();
            self.retire(c, &deleted)?;
        }
        let users: Vec<&str> = new.iter().map(|&i| rows[i].1).collect();
        let back = self.unretire(c, &users)?;
        let fresh: Vec<usize> = match back.is_empty() {
            true => new,
            false => new
                .into_iter()
                .filter(|&i| !back.contains_key(rows[i].1))
                .collect(),
        };
        for (user, &old) in &back {
            if let Some(i) = rows.iter().position(|(_, u)| u == user) {
                out[i] = old;
            }
        }
        if !fresh.is_empty() {
            let ids: Vec<&str> = fresh.iter().map(|&i| rows[i].1).collect();
            let first = self.assign(c, &ids)?;
            for (k, &i) in fresh.iter().enumerate() {
                out[i] = first + k as u32;
            }
        }
        Ok(out)
    }

    /// Gives `ids` the next indexes, in order, and appends their chunk;
    /// the first index.
    pub fn assign(&mut self, c: &mut dyn Conn, ids: &[&str]) -> Result<u32, StoreError> {
        let first = match self.next {
            Some(next) => next,
            None => next_free(c)?,
        };
        let sql = "INSERT INTO audience_ids (first_uidx, user_count, user_ids) VALUES (?, ?, ?)";
        let encoded = encode_ids(ids);
        let args = [
            Arg::from(first),
            Arg::Int(ids.len() as i64),
            Arg::Blob(&encoded),
        ];
        c.execute(sql, &args)?;
        self.next = Some(first + ids.len() as u32);
        Ok(first)
    }

    /// Keeps the index of users whose row goes.
    fn retire(&mut self, c: &mut dyn Conn, users: &[(&str, u32)]) -> Result<(), StoreError> {
        for chunk in users.chunks(CHUNK) {
            let into = format!(
                "INTO retired_users (user_id, uidx) VALUES {}",
                marks(chunk.len(), "(?, ?)")
            );
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (user, uidx) in chunk {
                args.push(Arg::Text(user));
                args.push(Arg::from(*uidx));
            }
            c.execute(&c.dialect().insert_ignore(&into), &args)?;
            self.retired = Some(true);
        }
        Ok(())
    }

    /// The retired indexes of those of `users` who had one, taken back.
    fn unretire(
        &mut self,
        c: &mut dyn Conn,
        users: &[&str],
    ) -> Result<HashMap<String, u32>, StoreError> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        if self.retired.is_none() {
            let any = c
                .query_first("SELECT 1 FROM retired_users LIMIT 1", &[])?
                .is_some();
            self.retired = Some(any);
        }
        if self.retired != Some(true) {
            return Ok(HashMap::new());
        }
        let back = lookup(c, "retired_users", users)?;
        let names: Vec<&str> = back.keys().map(String::as_str).collect();
        each_chunk(c, "DELETE FROM retired_users WHERE user_id IN (", &names)?;
        Ok(back)
    }
}

/// The chunk holding index `uidx`: its first index and ids.
fn containing(c: &mut dyn Conn, uidx: u32) -> Result<Option<(u32, Vec<String>)>, StoreError> {
    let sql = "SELECT first_uidx, user_ids FROM audience_ids WHERE first_uidx <= ? \
               ORDER BY first_uidx DESC LIMIT 1";
    match c.query_first(sql, &[Arg::from(uidx)])? {
        Some(row) => Ok(Some((row.id(0)?, decode_ids(&row.blob(1)?)?))),
        None => Ok(None),
    }
}

/// Calls `each` with the index and id of every user of `uidx` (ascending),
/// reading each chunk once; an index no chunk holds is left out. `each`
/// returns false to stop.
pub fn each_indexed(
    c: &mut dyn Conn,
    uidx: impl Iterator<Item = u32>,
    each: &mut dyn FnMut(u32, &str) -> bool,
) -> Result<(), StoreError> {
    let mut chunk: Option<(u32, Vec<String>)> = None;
    for u in uidx {
        let inside =
            |(first, ids): &(u32, Vec<String>)| u >= *first && ((u - first) as usize) < ids.len();
        if !chunk.as_ref().is_some_and(inside) {
            chunk = containing(c, u)?;
        }
        if let Some((first, ids)) = chunk.as_ref().filter(|ch| inside(ch)) {
            if !each(u, &ids[(u - first) as usize]) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_whatever_their_length_and_characters() {
        let long = "x".repeat(300);
        let ids = [
            "u1",
            "",
            "高净值用户",
            "高净值",
            "a,b\n\"c\"",
            long.as_str(),
            "user_0001",
            "user_0002",
        ];
        let bytes = encode_ids(&ids);
        assert_eq!(decode_ids(&bytes).unwrap(), ids.to_vec());
        assert!(decode_ids(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        assert!(decode_ids(&[]).unwrap().is_empty());
        let sorted: Vec<String> = (0..1000).map(|i| format!("user_{i:09}")).collect();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let bytes = encode_ids(&refs);
        assert!(bytes.len() < 1000 * 5, "front-coded: {} bytes", bytes.len());
        assert_eq!(decode_ids(&bytes).unwrap(), sorted);
    }
}
