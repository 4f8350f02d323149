//! Batch queries over results: a DataFusion `SessionContext` in which each
//! sink table a query names is a Parquet listing table over the sink's
//! folder, and a quoted path (`SELECT * FROM 'out/hot_items/'`) is a table
//! too (`enable_url_table`).
//!
//! Only the sink folder's own `*.parquet` files are read: that is exactly the
//! committed output. The sink stages an epoch's output under `_weir/` with a
//! `.pending` suffix until the epoch commits; neither the suffix nor the
//! subfolder is listed.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, StoreOptions};

/// A context for batch queries, with quoted paths as tables (an `s3://`
/// one opened with `env`), planned for `threads` partitions (`SET
/// threads`; 0, the default, is one per CPU).
pub fn context(threads: usize, env: &StoreOptions) -> SessionContext {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(crate::resolve_threads(threads));
    with_stores(config, env)
}

/// A context whose object stores are found by Weir's registry (S3 buckets
/// opened on first use with `env`), quoted paths as tables.
fn with_stores(config: SessionConfig, env: &StoreOptions) -> SessionContext {
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(weir_storage::StoreRegistry::new(env.clone())))
        .build_arc();
    let ctx = match runtime {
        Ok(runtime) => SessionContext::new_with_config_rt(config, runtime).enable_url_table(),
        // Building a runtime with only a registry set cannot fail today;
        // should it, local files still work.
        Err(_) => SessionContext::new_with_config(SessionConfig::new()).enable_url_table(),
    };
    // MIN and MAX of floats as a stream computes them (a total order).
    for f in weir_sql::functions::min_max() {
        ctx.register_udaf(f);
    }
    ctx
}

/// A context for batch queries that run on a Ballista cluster: the same, with
/// Ballista's settings (no round-robin repartitions, no view types across
/// the wire), planned `threads` partitions wide.
pub fn cluster_context(threads: usize, env: &StoreOptions) -> SessionContext {
    let config = weir_cluster::session_config(crate::resolve_threads(threads)).with_information_schema(true);
    with_stores(config, env)
}

/// Every function name DataFusion knows, for completion.
pub fn function_names() -> Vec<String> {
    let state = SessionContext::new().state();
    state
        .scalar_functions()
        .keys()
        .chain(state.aggregate_functions().keys())
        .chain(state.window_functions().keys())
        .cloned()
        .collect()
}

/// A sink folder as a listing table of its committed Parquet files. The
/// table's schema is the declared one, or else the files'.
pub async fn sink_table(ctx: &SessionContext, decl: &TableDecl, env: &StoreOptions) -> Result<ListingTable> {
    let path = decl.require("path")?;
    // A local folder by its path, not its `file://` URL: parsed as a URL,
    // a `#` in it ended the path and `%20` became a space (another folder
    // was read than the job wrote).
    let path = weir_storage::location::local_path(path).unwrap_or(path);
    let url = if path.contains("://") {
        if path.starts_with("s3://") || path.starts_with("s3a://") {
            // Register the bucket's store, with the table's own s3.* settings.
            let options = weir_engine::source::table_store_options(decl, env);
            let loc = Location::open(path, &options, Create::No)?;
            let bucket = path
                .split("://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or("");
            let store_url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
            ctx.register_object_store(store_url.as_ref(), Arc::clone(loc.store()));
        }
        format!("{}/", path.trim_end_matches('/'))
    } else {
        if !std::path::Path::new(path).is_dir() {
            bail!(
                "'{}' has no committed output yet ({path} does not exist)",
                decl.name
            );
        }
        format!("{}/", path.trim_end_matches('/'))
    };
    let table_url = ListingTableUrl::parse(&url)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(table_url.clone()).with_listing_options(options);
    let config = match &decl.schema {
        Some(schema) => config.with_schema(Arc::clone(schema)),
        None => {
            let Some(schema) = parquet_schema(ctx, &table_url).await? else {
                bail!(
                    "'{}' has no committed output yet, so its columns are not known",
                    decl.name
                );
            };
            // Every column nullable: a column the query added (or dropped)
            // is missing from the older (newer) files and read as NULL,
            // whatever a file written by an earlier Weir declared (see
            // `codec::encode_sink_parallel`).
            config.with_schema(weir_storage::codec::all_nullable(&schema))
        }
    };
    Ok(ListingTable::try_new(config)?)
}

/// The schema of the Parquet files a folder (or file, or wildcard) URL
/// lists, each file's strings and binaries made DataFusion's views, at any
/// depth, before the files' schemas are merged; `None` when it lists no
/// Parquet file. DataFusion merges the files' own schemas first and makes
/// views of the result after, so a folder holding a file that says its
/// text is `Utf8View` (sink files of a Weir before December 2026) and one
/// that says `Utf8` (Weir's since, pyarrow's, Spark's) could not be read:
/// "Fail to merge schema field 's' because the from data_type = Utf8 does
/// not equal Utf8View". A conflict that remains (a column `BIGINT` in one
/// file and `INT` in another) names two files that disagree.
pub async fn parquet_schema(ctx: &SessionContext, url: &ListingTableUrl) -> Result<Option<SchemaRef>> {
    let files = parquet_files(ctx, url).await?;
    files_schema(ctx, url, files).await
}

/// The Parquet files a URL lists, in name order.
async fn parquet_files(ctx: &SessionContext, url: &ListingTableUrl) -> Result<Vec<object_store::ObjectMeta>> {
    use futures::TryStreamExt;
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<object_store::ObjectMeta> = url
        .list_all_files(&state, store.as_ref(), ".parquet")
        .await?
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// [`parquet_schema`] of listed files.
async fn files_schema(
    ctx: &SessionContext,
    url: &ListingTableUrl,
    files: Vec<object_store::ObjectMeta>,
) -> Result<Option<SchemaRef>> {
    use datafusion::datasource::file_format::FileFormat;
    use futures::{StreamExt, TryStreamExt};
    if files.is_empty() {
        return Ok(None);
    }
    let state = ctx.state();
    let store = state.runtime_env().object_store(url)?;
    // Views, as DataFusion reads text, unless the context reads plain
    // strings (Ballista's: views made its Flight frames too large).
    let views = state.config_options().execution.parquet.schema_force_view_types;
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let (state, store, format) = (&state, &store, &format);
    let schemas: Vec<(String, Schema)> = futures::stream::iter(files)
        .map(|file| async move {
            let schema = format
                .infer_schema(state, store, std::slice::from_ref(&file))
                .await?;
            let fields: Vec<FieldRef> = schema.fields().iter().map(|f| as_read(f, views)).collect();
            // The file's name under the folder (the store's path lacks a
            // local path's leading slash, and looked relative).
            let shown = file.location.as_ref();
            let shown = shown
                .strip_prefix(url.prefix().as_ref())
                .map_or(shown, |rest| rest.trim_start_matches('/'))
                .to_string();
            Ok::<_, datafusion::error::DataFusionError>((shown, Schema::new(fields)))
        })
        .buffered(16)
        .try_collect()
        .await?;
    let mut merged: Option<(String, Schema)> = None;
    for (file, schema) in schemas {
        merged = Some(match merged {
            None => (file, schema),
            Some((first, so_far)) => match Schema::try_merge([so_far, schema.clone()]) {
                Ok(m) => (first, m),
                Err(e) => bail!(
                    "the files of '{url}' disagree on their columns ({first} and {file}): {}; query them one by one",
                    weir_sql::strip_df(&e.into())
                ),
            },
        });
    }
    Ok(merged.map(|(_, s)| Arc::new(s)))
}

/// `field` with its strings and binaries as DataFusion reads them, at any
/// depth: views (`views`), or plain strings and binaries.
fn as_read(field: &FieldRef, views: bool) -> FieldRef {
    fn read(t: &DataType, views: bool) -> DataType {
        match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if views => DataType::Utf8View,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView if views => DataType::BinaryView,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
            DataType::List(f) => DataType::List(as_read(f, views)),
            DataType::LargeList(f) => DataType::LargeList(as_read(f, views)),
            DataType::FixedSizeList(f, n) => DataType::FixedSizeList(as_read(f, views), *n),
            DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| as_read(f, views)).collect()),
            DataType::Map(f, sorted) => DataType::Map(as_read(f, views), *sorted),
            other => other.clone(),
        }
    }
    Arc::new(
        field
            .as_ref()
            .clone()
            .with_data_type(read(field.data_type(), views)),
    )
}

/// A quoted path a batch query names (`'out/'`, `'s3://b/x/*.parquet'`)
/// that lists Parquet files, registered under that name as a table with
/// [`parquet_schema`]'s columns, so DataFusion's own reading of the path
/// (which cannot merge a view with a plain string) is not used. Other
/// paths (CSV, JSON, a single file, one it cannot list) are left to it.
pub async fn register_parquet_path(ctx: &SessionContext, reference: &TableReference) -> Result<()> {
    let TableReference::Bare { table } = reference else {
        return Ok(());
    };
    let name = table.as_ref();
    if !(name.contains('/') || name.ends_with(".parquet")) {
        return Ok(());
    }
    // A local folder by its path, not its `file://` URL (see `sink_table`).
    let Ok(url) = ListingTableUrl::parse(weir_storage::location::local_path(name).unwrap_or(name)) else {
        return Ok(());
    };
    // A path that cannot be listed (a store that is down, a folder that
    // is not there) is DataFusion's to refuse, in words the shell knows.
    let Ok(files) = parquet_files(ctx, &url).await else {
        return Ok(());
    };
    // Files in `key=value` folders: DataFusion makes columns of the keys,
    // which a table of the files' own columns would drop.
    let partitioned = files.iter().any(|f| {
        f.location
            .as_ref()
            .strip_prefix(url.prefix().as_ref())
            .is_some_and(|rest| {
                rest.trim_start_matches('/')
                    .split('/')
                    .rev()
                    .skip(1)
                    .any(|d| d.contains('='))
            })
    });
    if partitioned {
        return Ok(());
    }
    let Some(schema) = files_schema(ctx, &url, files).await? else {
        return Ok(());
    };
    let schema = weir_storage::codec::all_nullable(&schema);
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(reference.clone(), Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Registers sink tables in a context.
pub async fn register_sink(ctx: &SessionContext, decl: &TableDecl, env: &StoreOptions) -> Result<()> {
    let table = sink_table(ctx, decl, env).await?;
    ctx.register_table(TableReference::bare(decl.name.as_str()), Arc::new(table))
        .with_context(|| format!("registering '{}'", decl.name))?;
    Ok(())
}

/// A sink's columns: declared, or read from its committed files.
pub async fn sink_schema(decl: &TableDecl, env: &StoreOptions) -> Result<SchemaRef> {
    if let Some(s) = &decl.schema {
        return Ok(Arc::clone(s));
    }
    let ctx = context(0, env);
    let table = sink_table(&ctx, decl, env).await?;
    Ok(datafusion::catalog::TableProvider::schema(&table))
}

/// A batch query whose join has a key of a nested type (a list, a struct),
/// planned without the hash join's dynamic filter. DataFusion 55 pushes a
/// filter of the build side's keys into the probe side, and over such keys
/// it dropped rows that match: `a JOIN b ON a.l = b.l ORDER BY a.id` (a
/// list key) lost rows the same query without `ORDER BY` gave, and so did
/// `IN (SELECT ...)` on a struct with a NULL field. Other queries keep it.
pub fn without_nested_key_filters(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::{ExprSchemable, LogicalPlan};
    let (mut state, plan) = df.into_parts();
    // Subqueries become joins as the optimizer decorrelates them.
    let optimized = state.optimize(&plan)?;
    let mut nested = false;
    optimized.apply_with_subqueries(|p| {
        if let LogicalPlan::Join(j) = p {
            for (l, r) in &j.on {
                let is_nested = |e: &datafusion::logical_expr::Expr, s| {
                    e.get_type(s).map(|t| t.is_nested()).unwrap_or(false)
                };
                nested |= is_nested(l, j.left.schema()) || is_nested(r, j.right.schema());
            }
        }
        Ok(if nested {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if nested {
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
    }
    Ok(DataFrame::new(state, plan))
}
