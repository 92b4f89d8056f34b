//! The users' dense index on every backend, kept in two tables so that a
//! run's first write of millions of users adds one B-tree insert per user,
//! not two:
//!
//! - `audience_users` (`user_id` → `uidx`), keyed by the user id: what a
//!   run looks up for the users it changes, and where a user who gets a
//!   row again finds the index it had;
//! - `audience_ids`: the ids in index order, a chunk per batch of newly
//!   indexed users (`first_uidx`, how many, their ids encoded), appended
//!   once per batch: what exports and member pages read.
//!
//! New users get consecutive indexes after the last chunk's, taken while
//! the run holds the writers' lock (SQLite's write transaction, MariaDB's
//! run lock, a PostgreSQL advisory lock held to the commit), so two runs
//! never hand out the same index. An index is never reused: a user keeps
//! it after losing every tag. A user whose insert found it already indexed
//! leaves a hole in its chunk that no bitmap ever holds.

use super::{Arg, Conn, Dialect};
use crate::store::StoreError;
use std::collections::HashMap;

/// Users per statement of the index's lookups and inserts.
const CHUNK: usize = 500;

/// PostgreSQL's advisory lock on handing out indexes (to the commit).
const PG_LOCK: i64 = 7_461_676_574;

/// `n` placeholders, comma-separated.
pub fn marks(n: usize, each: &str) -> String {
    vec![each; n].join(", ")
}

/// Ids as a chunk stores them: each its length (LEB128) and its bytes.
pub fn encode_ids(ids: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
    for id in ids {
        let mut n = id.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// The ids [`encode_ids`] wrote.
pub fn decode_ids(mut bytes: &[u8]) -> Result<Vec<String>, StoreError> {
    let corrupt = || StoreError::Corrupt("a chunk of user ids is cut short".into());
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (mut n, mut shift) = (0usize, 0);
        loop {
            let (&byte, rest) = bytes.split_first().ok_or_else(corrupt)?;
            bytes = rest;
            n |= ((byte & 0x7f) as usize) << shift;
            shift += 7;
            if byte & 0x80 == 0 || shift > 35 {
                break;
            }
        }
        let (id, rest) = (bytes.get(..n).ok_or_else(corrupt)?, &bytes[n..]);
        out.push(String::from_utf8(id.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        bytes = rest;
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

/// Each of `users`' index, by id (those not indexed are left out).
pub fn lookup(c: &mut dyn Conn, users: &[&str]) -> Result<HashMap<String, u32>, StoreError> {
    let mut found = HashMap::with_capacity(users.len());
    for chunk in users.chunks(CHUNK) {
        let sql = format!(
            "SELECT user_id, uidx FROM audience_users WHERE user_id IN ({})",
            marks(chunk.len(), "?")
        );
        let args: Vec<Arg<'_>> = chunk.iter().map(|u| Arg::Text(u)).collect();
        for row in c.query(&sql, &args)? {
            found.insert(row.text(0)?, row.id(1)?);
        }
    }
    Ok(found)
}

/// Hands out indexes within one transaction (the first use locks the
/// allocation until it ends).
#[derive(Debug, Default)]
pub struct Allocator {
    next: Option<u32>,
}

impl Allocator {
    /// The index of each of `users` (in their order); `new[i]` marks the
    /// users getting their first row now, who get the next indexes unless
    /// they had one. A user neither new nor indexed is corrupt state.
    pub fn index(
        &mut self,
        c: &mut dyn Conn,
        users: &[&str],
        new: &[bool],
    ) -> Result<Vec<u32>, StoreError> {
        let mut out = vec![u32::MAX; users.len()];
        let fresh: Vec<usize> = (0..users.len()).filter(|&i| new[i]).collect();
        if !fresh.is_empty() {
            self.assign(c, users, &fresh, &mut out)?;
        }
        let rest: Vec<&str> = (0..users.len())
            .filter(|&i| !new[i])
            .map(|i| users[i])
            .collect();
        let found = lookup(c, &rest)?;
        for i in (0..users.len()).filter(|&i| !new[i]) {
            out[i] = *found.get(users[i]).ok_or_else(|| {
                StoreError::Corrupt(format!("user {:?} has a row but no dense index", users[i]))
            })?;
        }
        Ok(out)
    }

    /// Gives the users at `fresh` the next indexes (keeping the index of
    /// one that had one) and appends their chunk.
    fn assign(
        &mut self,
        c: &mut dyn Conn,
        users: &[&str],
        fresh: &[usize],
        out: &mut [u32],
    ) -> Result<(), StoreError> {
        let first = match self.next {
            Some(next) => next,
            None => next_free(c)?,
        };
        let ids: Vec<&str> = fresh.iter().map(|&i| users[i]).collect();
        let mut had = Vec::new();
        for (k, chunk) in ids.chunks(CHUNK).enumerate() {
            let base = first + (k * CHUNK) as u32;
            let values = marks(chunk.len(), "(?, ?)");
            let into = format!("INTO audience_users (user_id, uidx) VALUES {values}");
            let sql = c.dialect().insert_ignore(&into);
            let numbers: Vec<i64> = (0..chunk.len())
                .map(|j| i64::from(base) + j as i64)
                .collect();
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (u, n) in chunk.iter().zip(&numbers) {
                args.push(Arg::Text(u));
                args.push(Arg::Int(*n));
            }
            if (c.execute(&sql, &args)? as usize) < chunk.len() {
                had.extend_from_slice(chunk);
            }
        }
        for (k, &i) in fresh.iter().enumerate() {
            out[i] = first + k as u32;
        }
        let sql = "INSERT INTO audience_ids (first_uidx, user_count, user_ids) VALUES (?, ?, ?)";
        let encoded = encode_ids(&ids);
        let args = [
            Arg::from(first),
            Arg::Int(ids.len() as i64),
            Arg::Blob(&encoded),
        ];
        c.execute(sql, &args)?;
        self.next = Some(first + ids.len() as u32);
        // Users indexed before (a row again after losing every tag) keep
        // their index; the one handed out stays a hole.
        let found = lookup(c, &had)?;
        for &i in fresh {
            if let Some(&old) = found.get(users[i]) {
                out[i] = old;
            }
        }
        Ok(())
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
        let ids = ["u1", "", "高净值用户", "a,b\n\"c\"", long.as_str()];
        let bytes = encode_ids(&ids);
        assert_eq!(decode_ids(&bytes).unwrap(), ids.to_vec());
        assert!(decode_ids(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        assert!(decode_ids(&[]).unwrap().is_empty());
    }
}
