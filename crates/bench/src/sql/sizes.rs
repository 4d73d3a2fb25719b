//! What the event store occupies on disk, per table and per index
//! (`bench storage`, docs/spec.md §6.1).
//!
//! MySQL/MariaDB: `ANALYZE TABLE` refreshes InnoDB's persistent statistics,
//! then `mysql.innodb_index_stats` gives each index's `size` (pages the
//! index's segments hold, leaf and non-leaf, allocated extents included) and
//! `n_leaf_pages`; bytes = pages × `innodb_page_size`. The clustered index
//! (`PRIMARY`, or `GEN_CLUST_INDEX`) is the table's data. This is an exact
//! page count, unlike `information_schema.tables.data_length`, which InnoDB
//! derives from the same statistics but rounds through its estimates.
//!
//! SQLite: the `dbstat` virtual table (compiled into the bundled SQLite)
//! gives every b-tree's pages and the bytes in use on them.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use backbone::store::{get_text, Backend, Store, StoreError};

/// One b-tree: a table's data (clustered index / rowid table) or an index.
#[derive(Debug, Clone, Serialize)]
pub struct TreeSize {
    pub name: String,
    /// Pages allocated to it × page size: what the disk holds.
    pub bytes: i64,
    /// Leaf pages × page size (MySQL) or bytes of cells on its pages (SQLite).
    pub used_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSize {
    pub table: String,
    pub rows: i64,
    pub data: TreeSize,
    pub indexes: Vec<TreeSize>,
}

impl TableSize {
    pub fn bytes(&self) -> i64 {
        self.data.bytes + self.indexes.iter().map(|i| i.bytes).sum::<i64>()
    }
}

/// The whole store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSizes {
    /// How the figures were read (see the module documentation).
    pub method: &'static str,
    pub page_size: i64,
    pub tables: Vec<TableSize>,
    /// Rows of `events`.
    pub events: i64,
    /// Bytes of the events' `changes` (the raw payload), reported apart.
    pub payload_bytes: i64,
}

impl StoreSizes {
    pub fn total_bytes(&self) -> i64 {
        self.tables.iter().map(TableSize::bytes).sum()
    }
}

/// Tables that are not the event store's own.
const SKIP: [&str; 1] = ["_sqlx_migrations"];

/// Measures every table of the store (see the module documentation).
pub async fn measure_sizes(store: &Store) -> Result<StoreSizes, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let (method, page_size, trees) = match store.backend() {
        Backend::Mysql => mysql_trees(&mut conn).await?,
        Backend::Sqlite => sqlite_trees(&mut conn).await?,
    };
    let mut tables = Vec::new();
    for (table, (data, indexes)) in trees {
        if SKIP.contains(&table.as_str()) {
            continue;
        }
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await?;
        tables.push(TableSize {
            table,
            rows,
            data,
            indexes,
        });
    }
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let len = match store.backend() {
        Backend::Mysql => "LENGTH(changes)",
        Backend::Sqlite => "LENGTH(CAST(changes AS BLOB))",
    };
    let payload_bytes: i64 = sqlx::query_scalar(&format!(
        "SELECT CAST(COALESCE(SUM({len}), 0) AS SIGNED) FROM events"
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(StoreSizes {
        method,
        page_size,
        tables,
        events,
        payload_bytes,
    })
}

type Trees = BTreeMap<String, (TreeSize, Vec<TreeSize>)>;

async fn mysql_trees(
    conn: &mut sqlx::AnyConnection,
) -> Result<(&'static str, i64, Trees), StoreError> {
    let db: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut *conn)
        .await?;
    let page_size: i64 = sqlx::query_scalar("SELECT CAST(@@innodb_page_size AS SIGNED)")
        .fetch_one(&mut *conn)
        .await?;
    let names: Vec<String> = sqlx::query(
        "SELECT CAST(table_name AS CHAR) AS t FROM information_schema.tables \
         WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .bind(db.clone())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| get_text(r, "t"))
    .collect::<Result<_, _>>()?;
    // A compressed table's pages are KEY_BLOCK_SIZE KiB on disk (0007).
    let mut physical: BTreeMap<String, i64> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT CAST(table_name AS CHAR) AS t, CAST(row_format AS CHAR) AS f, \
         CAST(create_options AS CHAR) AS o FROM information_schema.tables \
         WHERE table_schema = ? AND table_type = 'BASE TABLE'",
    )
    .bind(db.clone())
    .fetch_all(&mut *conn)
    .await?
    {
        let format = backbone::store::get_opt_text(&r, "f")?.unwrap_or_default();
        let options = backbone::store::get_opt_text(&r, "o")?.unwrap_or_default();
        if format.eq_ignore_ascii_case("compressed") {
            physical.insert(get_text(&r, "t")?, zip_page_size(&options, page_size));
        }
    }
    let mut trees = Trees::new();
    for t in names {
        if SKIP.contains(&t.as_str()) {
            continue;
        }
        let page_size = physical.get(&t).copied().unwrap_or(page_size);
        // Persistent statistics are recomputed here, so the page counts
        // below are the ones of the table as it is now.
        sqlx::query(&format!("ANALYZE TABLE {t}"))
            .fetch_all(&mut *conn)
            .await?;
        let rows = sqlx::query(
            "SELECT CAST(index_name AS CHAR) AS i, CAST(stat_name AS CHAR) AS s, \
             CAST(stat_value AS SIGNED) AS v FROM mysql.innodb_index_stats \
             WHERE database_name = ? AND table_name = ? AND stat_name IN ('size', 'n_leaf_pages')",
        )
        .bind(db.clone())
        .bind(t.clone())
        .fetch_all(&mut *conn)
        .await?;
        let mut by_index: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in &rows {
            let e = by_index.entry(get_text(r, "i")?).or_default();
            let v: i64 = r.try_get("v")?;
            match get_text(r, "s")?.as_str() {
                "size" => e.0 = v * page_size,
                _ => e.1 = v * page_size,
            }
        }
        let mut data = None;
        let mut indexes = Vec::new();
        for (name, (bytes, used_bytes)) in by_index {
            let tree = TreeSize {
                name: name.clone(),
                bytes,
                used_bytes,
            };
            if name == "PRIMARY" || name == "GEN_CLUST_INDEX" {
                data = Some(tree);
            } else {
                indexes.push(tree);
            }
        }
        let data = data.unwrap_or(TreeSize {
            name: "PRIMARY".into(),
            bytes: 0,
            used_bytes: 0,
        });
        trees.insert(t, (data, indexes));
    }
    Ok((
        "ANALYZE TABLE, then mysql.innodb_index_stats: size (allocated pages) and n_leaf_pages × the page size on disk (innodb_page_size; KEY_BLOCK_SIZE for a compressed table)",
        page_size,
        trees,
    ))
}

/// The on-disk page of a compressed table: `key_block_size=N` (KiB) from its
/// create options, else half the page (InnoDB's default for COMPRESSED).
fn zip_page_size(create_options: &str, page_size: i64) -> i64 {
    create_options
        .to_ascii_lowercase()
        .split_whitespace()
        .find_map(|o| o.strip_prefix("key_block_size="))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|k| *k > 0)
        .map_or(page_size / 2, |k| k * 1024)
}

async fn sqlite_trees(
    conn: &mut sqlx::AnyConnection,
) -> Result<(&'static str, i64, Trees), StoreError> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("ANALYZE").execute(&mut *conn).await?;
    // Every b-tree and the table it belongs to.
    let objects = sqlx::query(
        "SELECT name, tbl_name, type FROM sqlite_master WHERE type IN ('table', 'index') \
         AND name NOT LIKE 'sqlite_stat%' AND name <> 'sqlite_sequence'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let sizes = sqlx::query(
        "SELECT name, COUNT(*) AS pages, SUM(pgsize - unused) AS used FROM dbstat GROUP BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_name: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &sizes {
        by_name.insert(
            get_text(r, "name")?,
            (r.try_get::<i64, _>("pages")?, r.try_get::<i64, _>("used")?),
        );
    }
    let mut trees = Trees::new();
    let mut idx: Vec<(String, String)> = Vec::new();
    for o in &objects {
        let (name, table, kind) = (
            get_text(o, "name")?,
            get_text(o, "tbl_name")?,
            get_text(o, "type")?,
        );
        let (pages, used) = by_name.get(&name).copied().unwrap_or((0, 0));
        let tree = TreeSize {
            name: name.clone(),
            bytes: pages * page_size,
            used_bytes: used,
        };
        if kind == "table" {
            trees.insert(table, (tree, Vec::new()));
        } else {
            idx.push((table, name));
        }
    }
    for (table, name) in idx {
        let (pages, used) = by_name.get(&name).copied().unwrap_or((0, 0));
        if let Some((_, list)) = trees.get_mut(&table) {
            list.push(TreeSize {
                name,
                bytes: pages * page_size,
                used_bytes: used,
            });
        }
    }
    Ok((
        "ANALYZE, then the dbstat virtual table: pages × page_size (used = cell bytes)",
        page_size,
        trees,
    ))
}

#[cfg(test)]
mod tests {
    use super::zip_page_size;

    #[test]
    fn compressed_page_size_comes_from_the_create_options() {
        assert_eq!(
            zip_page_size("row_format=COMPRESSED key_block_size=8", 16384),
            8192
        );
        assert_eq!(
            zip_page_size("row_format=COMPRESSED KEY_BLOCK_SIZE=4", 16384),
            4096
        );
        assert_eq!(zip_page_size("row_format=COMPRESSED", 16384), 8192);
        assert_eq!(zip_page_size("", 16384), 8192);
    }
}
