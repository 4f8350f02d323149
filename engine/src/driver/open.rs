//! Opening a job: planning its pipelines, checking the folders it writes,
//! claiming its checkpoint, opening its sources and sinks, and recovering
//! from the checkpoint.

use super::*;

impl StreamingJob {
    /// Parses and plans a job, opens its sources, sinks and checkpoint, and
    /// recovers from the checkpoint.
    pub async fn open(sql: &str, options: JobOptions) -> Result<StreamingJob> {
        let job = match options.live {
            Some(_) => Job::parse_as(sql, JobKind::Live)?,
            None => Job::parse(sql)?,
        };
        let options = options.with_job_settings(&job)?;
        // A path with credentials is refused before anything is written
        // (the checkpoint's metadata names the sources' and sinks' paths).
        for decl in job.tables.values() {
            if let Some(path) = decl.options.get("path") {
                weir_storage::location::refuse_credentials(path)
                    .map_err(|e| Error::Config(format!("table '{}': {e}", decl.name)))?;
            }
        }
        let threads = options.threads.max(1);
        let config = SessionConfig::new().with_target_partitions(threads);
        let scans = EngineScans { partitions: threads };
        let planner = StreamPlanner::new(&job, Some(Arc::new(scans)), config)?;
        for f in &options.udfs {
            planner.context().register_udf(f.clone());
        }
        for f in &options.udafs {
            planner.context().register_udaf(f.clone());
        }
        let plans = planner.plan().await?;
        // A lookup join's bounded table builds its hash table, once, for
        // every thread (see `exec::lookup_join`); DataFusion's join
        // selection runs after this rule and keeps that choice.
        let state = {
            let state = planner.context().state();
            let mut rules = state.physical_optimizers().to_vec();
            let at = rules
                .iter()
                .position(|r| r.name() == "join_selection")
                .unwrap_or(0);
            rules.insert(at, Arc::new(crate::exec::lookup_join::LookupBuildSide));
            datafusion::execution::SessionStateBuilder::new_from_existing(state)
                .with_physical_optimizer_rules(rules)
                .build()
        };

        // A source a cluster cannot read is refused before the checkpoint
        // is created (a refused job leaves nothing behind); the source's own
        // check, once it is open, says the rest (`Source::check_remote`).
        if let Some(remote) = &options.remote {
            for name in plans.iter().flat_map(|p| p.sources.iter()) {
                let Some(decl) = job.tables.get(name) else {
                    continue;
                };
                let connector = decl.connector()?;
                if !matches!(connector, "files" | "nexmark") {
                    return Err(Error::Config(format!(
                        "source '{name}' (connector '{connector}') cannot be read on a cluster yet: only 'files' and 'nexmark' sources can (reading on {})",
                        remote.describe()
                    )));
                }
            }
        }
        // Before the checkpoint is created, which would leave its folder
        // in the source.
        {
            // A bounded (lookup) table's folder counts as a source's: a
            // sink or checkpoint in it would be read back as the table.
            let sources: BTreeSet<&String> = plans
                .iter()
                .flat_map(|p| p.sources.iter().chain(p.lookups.iter()))
                .collect();
            let folders: Vec<(&str, &str)> = sources
                .into_iter()
                .filter_map(|name| {
                    let decl = job.tables.get(name)?;
                    match (decl.connector(), decl.options.get("path")) {
                        (Ok("files"), Some(path)) => Some((name.as_str(), path)),
                        _ => None,
                    }
                })
                .collect();
            crate::folders::refuse_checkpoint_in_sources(&options.checkpoint, &folders)?;
        }
        // A sink declared wrongly (an unknown format, say) is refused before
        // the checkpoint is created, for the same reason.
        for decl in plans.iter().filter_map(|p| p.sink.as_ref()) {
            PipelineSink::check(decl)?;
        }
        check_shared_sinks(&plans)?;
        // So is a late-row or dead-letter table a source names (one that
        // is itself read, or written by a query, is refused later, with a
        // message of its own).
        let read_or_written: BTreeSet<&String> = plans
            .iter()
            .flat_map(|p| {
                p.sources
                    .iter()
                    .chain(p.lookups.iter())
                    .chain(p.sink.iter().map(|d| &d.name))
            })
            .collect();
        for name in plans.iter().flat_map(|p| p.sources.iter()) {
            let Some(source) = job.tables.get(name) else {
                continue;
            };
            for option in ["late.sink", "dead_letter"] {
                if let Some(table) = source.options.get(option).and_then(|t| job.tables.get(t))
                    && !read_or_written.contains(&table.name)
                {
                    crate::sink::FileSink::check(table)?;
                }
            }
        }
        let loc = Location::open(&options.checkpoint, &options.store_options, Create::Yes)
            .map_err(|e| Error::Config(format!("checkpoint: {e}")))?;
        let checkpoint = Checkpoint::new(loc);
        // Commits and the lease rely on create-if-absent: refuse a store
        // that would silently overwrite, before anything is written to it.
        checkpoint.location().verify_create_if_absent().await?;
        // The lease comes first: claiming may rewrite the metadata and, with
        // `fresh_state`, delete state, which only the checkpoint's one
        // writer may do.
        let lease = crate::lease::Lease::acquire(&checkpoint, &options.owner, options.lease_ttl).await?;
        // Whatever stops the opening from here on, the lease is given back
        // (else a run on another host waits for it to lapse).
        let opened: Result<StreamingJob> = async {
            // A ranking (Top-N, dedup) breaks ties by arrival order, which is
            // the source's order only when rows do not cross a shuffle from
            // several threads: those arrive interleaved as the threads run, so
            // the row kept among ties changed from run to run. So such a
            // query's scans read in order, in one partition; a hash shuffle
            // from that one partition keeps each shard's rows in order, so the
            // ranking still runs on every thread, one shard each. Where
            // something between the scans and the ranking merges partitions
            // (a window aggregate's shards under a Top-N, a join), the query
            // runs on one thread.
            let one_thread = {
                let config = state.config().clone().with_target_partitions(1);
                datafusion::execution::SessionStateBuilder::new_from_existing(state.clone())
                    .with_config(config)
                    .build()
            };
            let mut physical = Vec::new();
            for p in plans {
                // What DataFusion cannot plan is said with the statement's line.
                let in_statement = |e: datafusion::error::DataFusionError| match Error::from(e) {
                    Error::DataFusion(e) => {
                        Error::Sql(p.in_statement(weir_sql::Error::Plan(weir_sql::strip_df(&e))))
                    }
                    ours => ours,
                };
                let plan = if threads > 1 && ranks(&p.plan) {
                    let sharded = crate::exec::scan::in_one_partition(
                        physical_planner()
                            .create_physical_plan(&p.plan, &state)
                            .await
                            .map_err(in_statement)?,
                    )?;
                    if rankings_see_arrival_order(&sharded) {
                        sharded
                    } else {
                        let plan = physical_planner()
                            .create_physical_plan(&p.plan, &one_thread)
                            .await
                            .map_err(in_statement)?;
                        crate::exec::scan::in_one_partition(plan)?
                    }
                } else {
                    physical_planner()
                        .create_physical_plan(&p.plan, &state)
                        .await
                        .map_err(in_statement)?
                };
                let operators = stateful_operators(p.index, &plan);
                physical.push((p, plan, operators));
            }
            check_late_sinks(&physical)?;
            // Where bad input records go, checked before the checkpoint is
            // claimed (the dead-letter sinks are part of its records).
            let bad_routes = {
                let sources: BTreeSet<String> = physical
                    .iter()
                    .flat_map(|(p, _, _)| p.sources.iter().cloned())
                    .collect();
                let written: BTreeSet<String> = physical
                    .iter()
                    .flat_map(|(p, plan, _)| {
                        let late = late_sink_tables(plan).into_iter().map(|(t, _)| t);
                        p.sink.iter().map(|d| d.name.clone()).chain(late)
                    })
                    .collect();
                dead_letter::routes(&job, &sources, &written)
            };
            let bad_routes = match bad_routes {
                // A live query is a look at a stream: it writes no table, so its
                // bad records (and late rows) are counted, not kept.
                Ok(_) if options.live.is_some() => BTreeMap::new(),
                r => r?,
            };
            // The folders the job writes, checked before the checkpoint is
            // claimed, so a refused job changes nothing.
            check_job_folders(&job, &physical, &bad_routes, &checkpoint, &lease.id(), &options).await?;
            // A rollback killed midway is finished first (its commits are
            // gone, its later offsets and state may not be).
            let finished =
                crate::admin::finish_rollback(&checkpoint, &options.store_options, &lease.id()).await?;
            let claimed = compat::claim::claim_checkpoint(&checkpoint, &job, &options, &|query_id| {
                compat::claim::job_records(&job, &physical, &bad_routes, query_id, &options.store_options)
            })
            .await;
            let (metadata, mut notes, reset_sources) = claimed?;
            if let Some(to) = finished {
                notes.insert(
                    0,
                    format!(
                        "finished the rollback to epoch {to} that was interrupted ({} was left behind)",
                        checkpoint.location().url_of("rollback.json")
                    ),
                );
            }

            let mut sources = BTreeMap::new();
            for (p, _, _) in &physical {
                for name in &p.sources {
                    if sources.contains_key(name) {
                        continue;
                    }
                    let decl = &job.tables[name];
                    let mut source = open_source(decl, &options.store_options)?;
                    if let Some(remote) = &options.remote {
                        source.check_remote().map_err(|e| match e {
                            Error::Config(m) => {
                                Error::Config(format!("{m} (reading on {})", remote.describe()))
                            }
                            e => e,
                        })?;
                    }
                    if let Some(n) = &options.notice {
                        source.set_notice(Arc::clone(n));
                    }
                    sources.insert(
                        name.clone(),
                        SourceSlot {
                            source,
                            decl: decl.clone(),
                            watermark: decl.watermark.clone(),
                            columns: Arc::new(Vec::new()),
                            idle_timeout_ms: idle_timeout(decl)?,
                            // Until it has rows, a source is idle from the start.
                            last_data_ms: chrono::Utc::now().timestamp_millis(),
                        },
                    );
                }
            }

            let mut lookups = BTreeMap::new();
            for (p, _, _) in &physical {
                for name in &p.lookups {
                    if !lookups.contains_key(name) {
                        let table = lookup::LookupTable::open(&job.tables[name], &options.store_options)?;
                        lookups.insert(name.clone(), table);
                    }
                }
            }

            // How many queries write each sink: a late row's tag names the
            // query by its sink, and by its statement too when that is shared.
            let mut writers_of: BTreeMap<String, usize> = BTreeMap::new();
            for (p, _, _) in &physical {
                if let Some(d) = &p.sink {
                    *writers_of.entry(d.name.clone()).or_default() += 1;
                }
            }
            let mut pipelines = Vec::new();
            for (p, plan, operators) in physical {
                let schema = plan.schema();
                let writer = sink_writer(&metadata.query_id, p.index, false);
                let mut sink = PipelineSink::open(
                    p.sink.as_ref(),
                    &writer,
                    &options.store_options,
                    options.live.as_ref(),
                    checkpoint.location(),
                )?;
                sink.set_threads(options.threads);
                let mut late_sinks: Vec<SideSink> = Vec::new();
                let late_tables = if options.live.is_some() {
                    Vec::new()
                } else {
                    late_sink_tables(&plan)
                };
                for (table, schema) in late_tables {
                    if let Some(existing) = late_sinks.iter().find(|l| l.table() == table) {
                        if existing.schema().fields() != schema.fields() {
                            return Err(Error::Config(format!(
                                "late sink '{table}' would receive rows of two different shapes in one query"
                            )));
                        }
                        continue;
                    }
                    let decl = job.tables.get(&table).ok_or_else(|| {
                        Error::Config(format!("late sink '{table}' is not a declared table"))
                    })?;
                    let writer = sink_writer(&metadata.query_id, p.index, true);
                    let late_for = match &p.sink {
                        Some(d) if writers_of.get(&d.name).copied().unwrap_or(0) > 1 => {
                            format!("{} ({})", d.name, p.statement)
                        }
                        Some(d) => d.name.clone(),
                        None => p.statement.clone(),
                    };
                    late_sinks.push(SideSink::open_late(
                        decl,
                        &writer,
                        &options.store_options,
                        schema,
                        &late_for,
                    )?);
                }
                pipelines.push(Pipeline {
                    index: p.index,
                    statement: p.statement.clone(),
                    logical: p.plan.clone(),
                    changelog: p.changelog,
                    plan,
                    schema,
                    sink,
                    late_sinks,
                    sources: p.sources,
                    lookups: p.lookups,
                    operators,
                    on_executors: Ok(()),
                });
            }
            let udfs: Vec<String> = options.udfs.iter().map(|f| f.name().to_string()).collect();
            for p in &mut pipelines {
                p.on_executors = remote_epoch::runs_on_executors(p, &udfs);
            }

            let dead_letters = DeadLetters::open(
                &job,
                bad_routes,
                &dead_letter::writer(&metadata.query_id),
                &options.store_options,
            )?;
            // Each sink folder is this query's: recorded before its first output.
            let file_sinks = pipelines
                .iter()
                .filter_map(|p| p.sink.files())
                .chain(
                    pipelines
                        .iter()
                        .flat_map(|p| p.late_sinks.iter().map(SideSink::files)),
                )
                .chain(dead_letters.sinks().iter().map(SideSink::files));
            let mut interrupted = 0;
            for sink in file_sinks.filter(|_| !options.explain_only) {
                sink.set_owner(checkpoint.location().url(), &metadata.query_id)
                    .await?;
                interrupted += weir_storage::checkpoint::remove_all(
                    sink.location().child("_weir").interrupted_writes(true),
                );
            }
            // Writes a kill cut short left temporaries no listing shows and no
            // retention deletes: this run is the folders' one writer now.
            if !options.explain_only {
                interrupted += checkpoint.remove_interrupted_writes();
            }
            if interrupted > 0 {
                tracing::debug!("deleted {interrupted} temporary file(s) of writes a kill interrupted");
            }

            // Sources read only the columns some scan needs (and the watermark's).
            let mut needed: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
            for p in &pipelines {
                scan_columns(&p.plan, &mut needed);
            }
            for (name, slot) in sources.iter_mut() {
                let mut cols = needed.remove(name).unwrap_or_default();
                if let Some(w) = &slot.watermark {
                    let column = slot.source.schema().index_of(&w.column)?;
                    // A source that knows each batch's greatest event time (a
                    // generator) need not make the column for the watermark.
                    if !slot.source.knows_max_time(&w.column) {
                        cols.insert(column);
                    }
                }
                if cols.is_empty() {
                    cols.insert(0); // COUNT(*) alone still needs the rows
                }
                let cols: Vec<usize> = cols.into_iter().collect();
                slot.source.set_columns(cols.clone());
                slot.source.set_threads(threads);
                slot.columns = Arc::new(cols);
            }

            let watermarks = sources
                .iter()
                .filter(|(_, s)| s.watermark.is_some())
                .map(|(n, _)| (n.clone(), i64::MIN))
                .collect();
            // Operators whose state can grow without bound say so once, in the
            // first progress line.
            let warnings: Vec<String> = pipelines
                .iter()
                .flat_map(|p| {
                    p.operators.iter().filter_map(move |(id, op)| {
                        op.warning().map(|w| format!("{} {id}: {w}", p.statement))
                    })
                })
                .collect();
            let mut job = StreamingJob {
                checkpoint,
                metadata,
                sources,
                lookups,
                pipelines,
                dead_letters,
                watermarks,
                last_committed: None,
                pending: None,
                state,
                hooks: options.hooks,
                remote: options.remote,
                policies: HashMap::new(),
                state_chains: BTreeMap::new(),
                pipeline_high: BTreeMap::new(),
                behind: BTreeSet::new(),
                lease: Arc::clone(&lease),
                retain_epochs: options.retain_epochs.max(1),
                pruned_to: std::sync::atomic::AtomicU64::new(0),
                notes,
                reset_sources,
                tvfs: job.tvfs.clone(),
                warnings,
                warned_drained: false,
                drain_epoch: tokio::sync::OnceCell::new(),
                ahead: BTreeMap::new(),
            };
            if let Err(e) = job.recover().await {
                return Err(match e {
                    // Damage: say how to look at it and how to get past it.
                    Error::Storage(
                        e @ (weir_storage::Error::Corrupt { .. } | weir_storage::Error::FutureVersion { .. }),
                    ) => Error::Checkpoint(format!(
                        "{e}\n(`weir checkpoint inspect {loc}` lists what is damaged; \
                     `weir checkpoint rollback {loc} --to N` goes back to a good epoch)",
                        loc = job.checkpoint.location()
                    )),
                    e => e,
                });
            }
            Ok(job)
        }
        .await;
        if opened.is_err() {
            let _ = lease.release().await;
        }
        opened
    }
}

/// Refuses INSERTs into one `files` table that write a column as two
/// kinds of type (`BIGINT` and `VARCHAR`): the table's folder would hold
/// files that no reader reads as one table. Each column is compared with
/// the first INSERT that wrote it; text and binary types of any width
/// count as one kind at any depth, and a NULL column goes with any.
fn check_shared_sinks(plans: &[weir_sql::planner::PipelinePlan]) -> Result<()> {
    use datafusion::arrow::datatypes::DataType;
    fn kind(t: &DataType) -> String {
        match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::ListView(f)
            | DataType::LargeListView(f) => {
                format!("list<{}>", kind(f.data_type()))
            }
            DataType::FixedSizeList(f, n) => format!("list<{}>[{n}]", kind(f.data_type())),
            DataType::Struct(fields) => format!(
                "struct<{}>",
                fields
                    .iter()
                    .map(|f| format!("{}:{}", f.name(), kind(f.data_type())))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            DataType::Map(f, _) => format!("map<{}>", kind(f.data_type())),
            DataType::Dictionary(_, v) => kind(v),
            other => other.to_string(),
        }
    }
    // Per table, per column: its kind, its SQL type and the statement
    // that first wrote it.
    let mut seen: BTreeMap<&str, BTreeMap<String, (String, String, &str)>> = BTreeMap::new();
    for p in plans {
        let Some(sink) = &p.sink else { continue };
        if sink.connector().ok() != Some("files") {
            continue;
        }
        let table = seen.entry(sink.name.as_str()).or_default();
        for f in p.plan.schema().fields() {
            if f.data_type() == &DataType::Null {
                continue;
            }
            let (k, sql) = (
                kind(f.data_type()),
                weir_sql::catalog::sql_type_name(f.data_type()),
            );
            match table.get(f.name()) {
                None => {
                    table.insert(f.name().clone(), (k, sql, &p.statement));
                }
                Some((other, other_sql, first)) if *other != k => {
                    return Err(Error::Config(format!(
                        "two INSERTs into '{}' write column '{}' as different types ({other_sql} in {first}, {sql} \
                         in {}): its folder's files would not read as one table; CAST one of them",
                        sink.name,
                        f.name(),
                        p.statement
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// A table that receives late rows (`'late.sink'`) receives nothing else:
/// not a query's rows, nor late rows of another shape (a folder of files of
/// two shapes cannot be read as one table), and it is not a source.
fn check_late_sinks(physical: &[PhysicalPipeline]) -> Result<()> {
    let mut shapes: BTreeMap<String, (SchemaRef, String)> = BTreeMap::new();
    for (p, plan, _) in physical {
        for (table, schema) in late_sink_tables(plan) {
            let refuse = |why: String| {
                Err(Error::Config(format!(
                    "late sink '{table}' ({}): {why}",
                    p.statement
                )))
            };
            if physical
                .iter()
                .any(|(q, _, _)| q.sink.as_ref().is_some_and(|d| d.name == table))
            {
                return refuse(
                    "that table already receives a query's rows; late rows need a sink table of their own"
                        .into(),
                );
            }
            if physical.iter().any(|(q, _, _)| q.sources.contains(&table)) {
                return refuse(
                    "that table is a source of this job; late rows need a sink table of their own".into(),
                );
            }
            match shapes.get(&table) {
                Some((seen, by)) if seen.fields() != schema.fields() => {
                    return refuse(format!(
                        "it already receives late rows of another shape (of {by}): one late table holds rows of \
                         one shape, so sources of other columns need late tables of their own, and queries that \
                         read one source differently (a window over a view that projects it) cannot share its \
                         late table"
                    ));
                }
                Some(_) => {}
                None => {
                    shapes.insert(table.clone(), (schema, p.statement.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The late sinks of a plan's window calls, with the shape of their rows.
pub(crate) fn late_sink_tables(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, SchemaRef)> {
    let mut out = Vec::new();
    if let Some(w) = plan.downcast_ref::<WindowAssignExec>()
        && let Some((table, schema)) = w.late_sink()
    {
        out.push((table.to_string(), schema));
    }
    for child in plan.children() {
        out.extend(late_sink_tables(child));
    }
    out
}

/// `'watermark.idle_timeout'` of a source, ms.
fn idle_timeout(decl: &weir_sql::TableDecl) -> Result<Option<i64>> {
    let Some(v) = decl.options.get("watermark.idle_timeout") else {
        return Ok(None);
    };
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        Error::Config(format!(
            "table '{}': 'watermark.idle_timeout' = '{v}': {e} (write e.g. '30s' or '5m')",
            decl.name
        ))
    })?;
    Ok(Some(d.as_millis() as i64))
}

/// Adds the declared columns each source scan in a plan reads.
fn scan_columns(plan: &Arc<dyn ExecutionPlan>, out: &mut BTreeMap<String, BTreeSet<usize>>) {
    if let Some(scan) = plan.downcast_ref::<StreamScanExec>() {
        let cols = out.entry(scan.source().to_string()).or_default();
        match scan.projection() {
            Some(p) => cols.extend(p.iter().copied()),
            None => cols.extend(0..scan.schema().fields().len()),
        }
    }
    for child in plan.children() {
        scan_columns(child, out);
    }
}

pub(crate) type PhysicalPipeline = (
    PipelinePlan,
    Arc<dyn ExecutionPlan>,
    Vec<(String, Arc<dyn StatefulOperator>)>,
);

/// Checks the folders a job writes against each other, its sources and
/// checkpoints (`crate::folders`), and that no other query owns a sink
/// folder, before anything is written.
async fn check_job_folders(
    job: &Job,
    pipelines: &[PhysicalPipeline],
    dead_letters: &BTreeMap<String, String>,
    checkpoint: &Checkpoint,
    lease: &str,
    options: &JobOptions,
) -> Result<()> {
    let mut tables: Vec<String> = Vec::new();
    for (p, plan, _) in pipelines {
        tables.extend(p.sink.iter().map(|d| d.name.clone()));
        if options.live.is_none() {
            tables.extend(late_sink_tables(plan).into_iter().map(|(t, _)| t));
        }
    }
    tables.extend(dead_letters.values().cloned());
    tables.sort();
    tables.dedup();
    let mut sinks = Vec::new();
    for table in &tables {
        let Some(decl) = job.tables.get(table) else {
            continue;
        };
        let (Ok("files"), Some(path)) = (decl.connector(), decl.options.get("path")) else {
            continue;
        };
        let store = table_store_options(decl, &options.store_options);
        let loc = Location::open(path, &store, Create::Yes)
            .map_err(|e| Error::Config(format!("sink table '{table}': {e}")))?;
        sinks.push((table.clone(), loc, store));
    }
    let mut sources = Vec::new();
    for (p, _, _) in pipelines {
        for name in p.sources.iter().chain(p.lookups.iter()) {
            let Some(decl) = job.tables.get(name) else {
                continue;
            };
            let (Ok("files"), Some(path)) = (decl.connector(), decl.options.get("path")) else {
                continue;
            };
            if let Ok(loc) = Location::open(
                path,
                &table_store_options(decl, &options.store_options),
                Create::No,
            ) {
                sources.push((name.clone(), loc));
            }
        }
    }
    let folders: Vec<crate::folders::SinkFolder> = sinks
        .iter()
        .map(|(table, loc, store)| crate::folders::SinkFolder {
            table,
            loc,
            options: store.clone(),
        })
        .collect();
    let sources: Vec<(&str, &Location)> = sources.iter().map(|(n, l)| (n.as_str(), l)).collect();
    crate::folders::check(checkpoint.location(), &folders, &sources).await?;
    if options.explain_only {
        return Ok(());
    }
    // The owner: this checkpoint's query, when it has one already (a new
    // checkpoint's query owns no folder yet, so any owner is another).
    let query_id = checkpoint
        .read_metadata()
        .await?
        .map(|m| m.query_id)
        .unwrap_or_else(|| "(a new checkpoint)".into());
    for (table, loc, _) in &sinks {
        let me = weir_storage::SinkOwner {
            version: weir_storage::FORMAT_VERSION,
            checkpoint: checkpoint.location().url().to_string(),
            query_id: query_id.clone(),
            table: table.clone(),
        };
        crate::folders::check_owner(loc, &me, lease, &options.store_options).await?;
    }
    Ok(())
}

/// Whether every ranking operator of `plan` gets each shard's rows in the
/// order its scans read them: below it, nothing merges partitions (every
/// shuffle and coalesce reads one partition) and nothing joins.
fn rankings_see_arrival_order(plan: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    let is_ranking = |n: &Arc<dyn ExecutionPlan>| {
        n.downcast_ref::<crate::exec::stream_topn::TopNExec>().is_some()
            || n.downcast_ref::<crate::exec::WindowTopNExec>().is_some()
    };
    let partitions = |n: &Arc<dyn ExecutionPlan>| n.properties().output_partitioning().partition_count();
    let mut ok = true;
    let _ = plan.apply(|node| {
        if !is_ranking(node) {
            return Ok(TreeNodeRecursion::Continue);
        }
        for below in node.children() {
            let _ = below.apply(|n| {
                let children = n.children();
                let merges = (n.downcast_ref::<RepartitionExec>().is_some()
                    || n.downcast_ref::<CoalescePartitionsExec>().is_some())
                    && children.iter().any(|c| partitions(c) > 1);
                if merges || children.len() > 1 || (is_ranking(n) && partitions(n) > 1) {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

/// Whether a pipeline's plan ranks rows (a Top-N or dedup, in windows or
/// not).
fn ranks(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = false;
    let _ = plan.apply(|node| {
        if let datafusion::logical_expr::LogicalPlan::Extension(e) = node
            && (e.node.as_any().is::<weir_sql::StreamTopNNode>()
                || e.node.as_any().is::<weir_sql::WindowTopNNode>())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Per stateful operator of a pipeline's plan, in the order of
/// [`stateful_operators`] (`p<pipeline>-agg<n>` is the n-th), what the
/// columns of its input are computed from: every column that a projection
/// below it (down to the source, or to the operator before it) computes or
/// renames, `name=expression`, per input (`in0[...]`, `in1[...]` for a
/// join's two sides). Empty when no projection below computes anything.
///
/// An operator's own signature names its keys and arguments by the input
/// columns' names, so a view or subquery that computes another value under
/// the same name (`k % 5 AS k`, `v AS k`) left it the same, and a changed
/// query resumed with state of other keys or sums. This part goes into the
/// operator's recorded signature (see `claim::job_records`), and after it
/// (behind `compat::MORE_MARK`) what it did not follow: a window's time
/// column, and each input of a UNION or lookup join below the operator.
pub(crate) fn operator_inputs(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, String)> {
    /// An input's computed columns, and what they leave out (see `chain`).
    type Chain = (Vec<String>, Vec<String>);
    use datafusion::physical_plan::projection::ProjectionExec;
    use std::collections::BTreeSet;
    /// The computed or renamed columns along the single-input chain below
    /// an operator's input `plan`, nearest projection first (each one's in
    /// name order, so that reordering a view's columns changes nothing).
    /// Only the columns the operator reads are followed, down through what
    /// they are computed from: a column a filter alone reads may change.
    ///
    /// Second, what the chain's record left out (see [`MORE_MARK`]): the
    /// time column of a window assignment on the way, and below a node of
    /// several inputs (a UNION, a lookup join), each input's chain, all of
    /// its columns followed (which of them the operator reads is not
    /// traced through such a node).
    ///
    /// [`MORE_MARK`]: crate::compat::MORE_MARK
    fn chain(plan: &Arc<dyn ExecutionPlan>, mut needed: BTreeSet<String>) -> Chain {
        let mut out = Vec::new();
        let mut more = Vec::new();
        let mut at = Arc::clone(plan);
        loop {
            if crate::exec::stateful_state(at.as_ref()).is_some() {
                break;
            }
            let children = at.children();
            let child = match children.as_slice() {
                [] => {
                    // What the chain reads: branches of a UNION that read
                    // other tables are told apart (a computation moved
                    // from one to the other is a change).
                    if let Some(scan) = at.downcast_ref::<crate::exec::scan::StreamScanExec>() {
                        more.push(format!("from {}", scan.source()));
                    } else if let Some(scan) = at.downcast_ref::<crate::exec::scan::LookupScanExec>() {
                        more.push(format!("from {}", scan.table()));
                    } else {
                        more.push(format!("from {}", at.name()));
                    }
                    break;
                }
                [child] => Arc::clone(child),
                several => {
                    let mut branches: Vec<String> = several
                        .iter()
                        .map(|c| {
                            let all = c.schema().fields().iter().map(|f| f.name().clone()).collect();
                            let (layers, below) = chain(c, all);
                            format!("[{}]{{{}}}", layers.join("; "), below.join("; "))
                        })
                        .collect();
                    // Without the node's name: a restart may change the
                    // thread count, and with it the node (a UNION may be
                    // an InterleaveExec). A join's inputs in name order,
                    // which a thread count may swap (its build side); a
                    // UNION's in its order, so that a computation moved
                    // from one branch to another is a change.
                    if at.name().contains("Join") {
                        branches.sort();
                    }
                    more.push(format!("inputs({})", branches.join(" ")));
                    break;
                }
            };
            if let Some(p) = at.downcast_ref::<ProjectionExec>() {
                let mut layer = Vec::new();
                let mut below = BTreeSet::new();
                for e in p.expr() {
                    if !needed.contains(&e.alias) {
                        continue;
                    }
                    below.extend(
                        datafusion::physical_expr::utils::collect_columns(&e.expr)
                            .into_iter()
                            .map(|c| c.name().to_string()),
                    );
                    let text = crate::compat::signature::strip_column_positions(&e.expr.to_string());
                    if text != e.alias {
                        layer.push(format!("{}={text}", e.alias));
                    }
                }
                layer.sort();
                out.extend(layer);
                needed = below;
            } else {
                // Other nodes pass their input's columns on by name (a
                // filter, a repartition) or compute some: a window
                // assignment its window columns from its time column, any
                // partial aggregate from its keys and arguments, any other
                // from what it may read, all of its input.
                let schema = child.schema();
                if let Some(w) = at.downcast_ref::<crate::exec::window_assign::WindowAssignExec>() {
                    more.push(format!("window time={}", schema.field(w.config().1).name()));
                }
                if let Some(p) = at.downcast_ref::<crate::exec::partial_agg::PartialWindowAggExec>() {
                    needed = p.spec().input_columns().into_iter().collect();
                } else if needed.iter().any(|n| schema.field_with_name(n).is_err()) {
                    match at.downcast_ref::<crate::exec::window_assign::WindowAssignExec>() {
                        Some(w) => {
                            needed.retain(|n| schema.field_with_name(n).is_ok());
                            let time = w.config().1;
                            needed.insert(schema.field(time).name().clone());
                        }
                        None => needed.extend(schema.fields().iter().map(|f| f.name().clone())),
                    }
                }
            }
            at = child;
        }
        (out, more)
    }
    fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(String, String)>) {
        if crate::exec::stateful_state(plan.as_ref()).is_some() {
            let inputs: Vec<Chain> = plan
                .children()
                .into_iter()
                .map(|c| chain(c, c.schema().fields().iter().map(|f| f.name().clone()).collect()))
                .collect();
            let part = |pick: &dyn Fn(&Chain) -> String| {
                if inputs.iter().all(|i| pick(i).is_empty()) {
                    String::new()
                } else {
                    inputs
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!(" in{i}[{}]", pick(c)))
                        .collect::<String>()
                }
            };
            out.push((
                part(&|(layers, _)| layers.join("; ")),
                part(&|(_, more)| more.join("; ")),
            ));
        }
        for child in plan.children() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// The stateful operators of a pipeline's plan, with ids that are stable as
/// long as the query is (`p<pipeline>-agg<n>`, in plan order).
fn stateful_operators(
    pipeline: usize,
    plan: &Arc<dyn ExecutionPlan>,
) -> Vec<(String, Arc<dyn StatefulOperator>)> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn StatefulOperator>>) {
        out.extend(crate::exec::stateful_state(plan.as_ref()));
        for child in plan.children() {
            walk(child, out);
        }
    }
    let mut ops = Vec::new();
    walk(plan, &mut ops);
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let id = format!("p{pipeline}-agg{i}");
        let side = Arc::clone(&op).side_table();
        out.push((id.clone(), op));
        if let Some((name, table)) = side {
            out.push((format!("{id}-{name}"), table));
        }
    }
    out
}
