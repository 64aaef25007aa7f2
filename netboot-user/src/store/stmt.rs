//! A write for either lease-store backend, described once: SQL whose N-th parameter is written
//! `{p}N` (SQLite's `?N`, PostgreSQL's `$N`, the only way the two dialects differ in what the
//! store writes) and the values to bind. `db::ProvisionDb::transact` runs a list of
//! them in one transaction on whichever backend the config names.

use std::borrow::Cow;

/// A value bound to a [`Stmt`]; each variant is the Rust type the column's SQL type takes in
/// both backends (PostgreSQL checks it: an `i64` for a `BIGINT`, an `i32` for an `INTEGER`).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int8(i64),
    Int4(Option<i32>),
    Bool(bool),
    Text(Option<String>),
}

impl From<i64> for Param {
    fn from(v: i64) -> Param {
        Param::Int8(v)
    }
}

impl From<Option<i32>> for Param {
    fn from(v: Option<i32>) -> Param {
        Param::Int4(v)
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Param {
        Param::Bool(v)
    }
}

impl From<String> for Param {
    fn from(v: String) -> Param {
        Param::Text(Some(v))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Param {
        Param::Text(Some(v.to_string()))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Param {
        Param::Text(v)
    }
}

/// One statement and its values.
#[derive(Debug, Clone)]
pub struct Stmt {
    sql: Cow<'static, str>,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<Cow<'static, str>>, params: Vec<Param>) -> Stmt {
        Stmt { sql: sql.into(), params }
    }

    /// The SQL with `sign` (`?` or `$`) for the parameters' mark.
    pub fn sql(&self, sign: &str) -> String {
        self.sql.replace("{p}", sign)
    }
}

impl Param {
    /// The value as the Rust type it holds, which both backends know how to bind.
    fn value(&self) -> &(dyn Value + Sync) {
        match self {
            Param::Int8(v) => v,
            Param::Int4(v) => v,
            Param::Bool(v) => v,
            Param::Text(v) => v,
        }
    }
}

/// A value both backends bind.
trait Value: rusqlite::ToSql + tokio_postgres::types::ToSql {}

impl<T: rusqlite::ToSql + tokio_postgres::types::ToSql> Value for T {}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self.value())
    }
}

impl tokio_postgres::types::ToSql for Param {
    /// Through [`Self::to_sql_checked`]: the held value's own `to_sql` needs its concrete type.
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql_checked(ty, out)
    }

    /// Every variant is acceptable here; [`Self::to_sql_checked`] asks the value itself.
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        tokio_postgres::types::ToSql::to_sql_checked(self.value(), ty, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::{ToSql, Type};

    #[test]
    fn one_statement_reads_in_both_dialects() {
        let s = Stmt::new("UPDATE t SET a = {p}2 WHERE k = {p}1", vec!["k".into(), 7i64.into()]);
        assert_eq!(s.sql("?"), "UPDATE t SET a = ?2 WHERE k = ?1");
        assert_eq!(s.sql("$"), "UPDATE t SET a = $2 WHERE k = $1");
    }

    #[test]
    fn postgresql_still_checks_each_value_against_its_column() {
        let mut out = bytes::BytesMut::new();
        assert!(Param::Int8(1).to_sql_checked(&Type::INT8, &mut out).is_ok());
        assert!(Param::Int8(1).to_sql_checked(&Type::INT4, &mut out).is_err(), "an i64 is not an INTEGER");
        assert!(Param::Int4(None).to_sql_checked(&Type::INT4, &mut out).is_ok());
        assert!(Param::Text(Some("x".into())).to_sql_checked(&Type::TEXT, &mut out).is_ok());
        assert!(Param::Bool(true).to_sql_checked(&Type::TEXT, &mut out).is_err());
    }
}
