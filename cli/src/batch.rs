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
use datafusion::arrow::datatypes::SchemaRef;
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
    let config = ListingTableConfig::new(table_url).with_listing_options(options);
    let config = match &decl.schema {
        Some(schema) => config.with_schema(Arc::clone(schema)),
        None => {
            let inferred = config.infer_schema(&ctx.state()).await.map_err(|e| {
                if e.to_string().contains("No files found") {
                    anyhow::anyhow!(
                        "'{}' has no committed output yet, so its columns are not known",
                        decl.name
                    )
                } else {
                    anyhow::anyhow!(weir_sql::strip_df(&e))
                }
            })?;
            // Every column nullable: a column the query added (or dropped)
            // is missing from the older (newer) files and read as NULL,
            // whatever a file written by an earlier Weir declared (see
            // `codec::encode_sink_parallel`).
            match inferred.file_schema.as_ref() {
                Some(s) => {
                    let relaxed = weir_storage::codec::all_nullable(s);
                    inferred.with_schema(relaxed)
                }
                None => inferred,
            }
        }
    };
    Ok(ListingTable::try_new(config)?)
}

/// Registers sink tables in a context.
pub async fn register_sink(ctx: &SessionContext, decl: &TableDecl, env: &StoreOptions) -> Result<()> {
    let table = sink_table(ctx, decl, env).await?;
    ctx.register_table(decl.name.as_str(), Arc::new(table))
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
