//! Running a statement: declarations, background queries (`INSERT`), live
//! and batch queries, `EXPLAIN [ANALYZE]`, and the commands about queries.

use super::*;

impl Shell {
    pub(super) async fn statement(&mut self, sql: &str) -> Result<()> {
        // Dot-commands are SQLite's and DuckDB's: point to ours.
        if let Some(dot) = sql.strip_prefix('.') {
            let word = dot.split_whitespace().next().unwrap_or("");
            bail!(
                "'.{word}' is a command of SQLite's and DuckDB's shells; here it is {} (\\? lists them)",
                match word {
                    "tables" | "schema" => "\\d, or SHOW TABLES",
                    "quit" | "exit" => "\\q",
                    "mode" => "\\format table|csv|json",
                    "timer" => "\\timing",
                    "help" => "\\?",
                    _ => "a backslash command",
                }
            );
        }
        use weir_sql::statement::Statement as S;
        match weir_sql::statement::classify(sql)? {
            S::CreateTable => self.create_table(sql),
            S::CreateView => self.create_view(sql),
            S::Drop {
                view,
                name,
                if_exists,
            } => {
                let name =
                    name.ok_or_else(|| anyhow!("DROP {} needs a name", if view { "VIEW" } else { "TABLE" }))?;
                self.drop_table(view, &name, if_exists)
            }
            S::Insert { target, into, query } => {
                if !into {
                    bail!("expected INSERT INTO sink SELECT ...");
                }
                let name = target.ok_or_else(|| anyhow!("INSERT INTO needs a sink table's name"))?;
                cancellable(self.interrupts.clone(), self.insert(sql, &name, &query)).await
            }
            S::Query => self.query(sql).await,
            S::Explain { analyze, inner } => {
                cancellable(self.interrupts.clone(), self.explain(sql, analyze, &inner)).await
            }
            S::ShowQueries => self.show_queries(),
            S::ShowTables => self.list_tables().await,
            S::StopQuery { name } => {
                let name = name.ok_or_else(|| anyhow!("STOP QUERY needs a query's name"))?;
                self.stop_query(&name).await
            }
            S::Describe { name } => {
                let name = name.ok_or_else(|| anyhow!("DESCRIBE needs a table's name"))?;
                self.describe(&name).await
            }
            S::ShowSettings => self.list_settings(),
            S::Set => self.set(sql),
            S::Other(head) => bail!(
                "'{head}' is not a statement Weir runs here (a typo?); it runs CREATE TABLE, CREATE VIEW, \
                 DROP TABLE, INSERT INTO, SELECT, EXPLAIN, SHOW QUERIES, SHOW TABLES, STOP QUERY, DESCRIBE and \
                 SET (\\? for help in the shell)"
            ),
        }
    }

    pub(super) fn create_table(&mut self, sql: &str) -> Result<()> {
        if let Some(name) = weir_sql::statement::create_if_not_exists(sql)?
            && self.catalog.get(&name).is_some()
        {
            out(&format!(
                "table {name} is already declared; left as it is (IF NOT EXISTS)\n"
            ))?;
            return Ok(());
        }
        let declared = self.catalog.declare(sql)?;
        // Its options are checked now, as `weir run` checks a job's, not at
        // the first statement that uses it (whose line the error named).
        for s in declared.decl.options.secret_values() {
            self.redactor.add(s);
        }
        if let Err(e) = weir_engine::options::check_declared_options(&declared.decl) {
            let name = declared.name().to_string();
            self.catalog.drop_table(&name);
            return Err(e.into());
        }
        let summary = match &declared.decl.schema {
            Some(s) => format!(
                "declared {} ({} column{}{})",
                declared.name(),
                s.fields().len(),
                if s.fields().len() == 1 { "" } else { "s" },
                declared
                    .decl
                    .watermark
                    .as_ref()
                    .map_or(String::new(), |w| format!(", watermark on {}", w.column))
            ),
            None => format!(
                "declared {} (a sink: its columns come from the query that writes it)",
                declared.name()
            ),
        };
        for s in declared.decl.options.secret_values() {
            self.redactor.add(s);
        }
        self.catalog_changed = true;
        out(&format!("{summary}\n"))
    }

    pub(super) fn drop_table(&mut self, view: bool, name: &str, if_exists: bool) -> Result<()> {
        let name = name.to_string();
        if self.queries.is_running(&name) {
            bail!("query '{name}' writes '{name}'; STOP QUERY {name} first");
        }
        // A running query's source or view: dropped, \d no longer listed
        // what the query reads.
        if let Some((query, _)) = self
            .reads
            .iter()
            .find(|(q, names)| *q != &name && names.contains(&name) && self.queries.is_running(q))
        {
            bail!("query '{query}' reads '{name}'; STOP QUERY {query} first");
        }
        match (
            view,
            self.catalog.view(&name).is_some(),
            self.catalog.get(&name).is_some(),
        ) {
            (false, true, false) => bail!("'{name}' is a view: DROP VIEW {name}"),
            (true, false, true) => bail!("'{name}' is a table: DROP TABLE {name}"),
            _ => {}
        }
        if view {
            return match self.catalog.drop_view(&name) {
                true => {
                    self.catalog_changed = true;
                    out(&format!("dropped view {name}\n"))
                }
                false if if_exists => Ok(()),
                false => bail!("no view '{name}' is declared"),
            };
        }
        match self.catalog.drop_table(&name) {
            Some(_) => {
                self.written.remove(&name);
                self.catalog_changed = true;
                out(&format!("dropped {name} (its files stay where they are)\n"))
            }
            None if if_exists => Ok(()),
            None => bail!("no table '{name}' is declared"),
        }
    }

    pub(super) fn create_view(&mut self, sql: &str) -> Result<()> {
        let name = self.catalog.declare_view(sql)?.name.clone();
        self.catalog_changed = true;
        if self.reads_stream(sql, &mut vec![name.clone()])? {
            out(&format!(
                "declared view {name} (a query over streams: SELECT from it shows live results)\n"
            ))
        } else {
            out(&format!(
                "declared view {name} (it reads no stream: SELECT from it runs once, as a batch query)\n"
            ))
        }
    }

    pub(super) fn kind_of_query(&self, sql: &str) -> Result<QueryKind> {
        Ok(if self.reads_stream(sql, &mut Vec::new())? {
            QueryKind::Live
        } else {
            QueryKind::Batch
        })
    }

    /// Whether a statement reads a declared source, itself or through the
    /// views it reads (`seen`: the views on the way, so that a view is
    /// looked into once). A view of constants (`SELECT 1`, `VALUES`) reads
    /// none: a SELECT from it ran as a live query that had no input to
    /// wait for, showed nothing and never ended, even with LIMIT.
    fn reads_stream(&self, sql: &str, seen: &mut Vec<String>) -> Result<bool> {
        if weir_sql::statement::has_window_call(sql)? {
            return Ok(true);
        }
        for r in weir_sql::statement::table_references(sql)? {
            if r.schema().is_some() {
                continue;
            }
            let name = r.table().to_string();
            if self.catalog.get(&name).is_some_and(|d| !self.is_sink(d)) {
                return Ok(true);
            }
            if let Some(view) = self.catalog.view(&name)
                && !seen.contains(&name)
            {
                seen.push(name);
                if self.reads_stream(&view.sql, seen)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    pub(super) async fn query(&mut self, sql: &str) -> Result<()> {
        match self.kind_of_query(sql)? {
            QueryKind::Live => self.live(sql).await,
            QueryKind::Batch => cancellable(self.interrupts.clone(), self.batch(sql)).await,
        }
    }

    /// A context with the sinks a statement names registered.
    pub(super) async fn batch_context(&self, sql: &str) -> Result<datafusion::prelude::SessionContext> {
        let references = weir_sql::statement::table_references(sql)?;
        for r in &references {
            check_glob(r.table())?;
            check_csv_headers(r.table())?;
        }
        let ctx = match &self.cluster {
            Some(_) => batch::cluster_context(self.settings.threads, &self.store_options),
            None => batch::context(self.settings.threads, &self.store_options),
        };
        for r in &references {
            if self.catalog.get(r.table()).is_none() && self.catalog.view(r.table()).is_none() {
                batch::register_parquet_path(&ctx, r).await?;
            }
        }
        let names = self.catalog.names_in(sql)?;
        for name in &names {
            if let Some(d) = self.catalog.get(name)
                && self.is_sink(d)
            {
                batch::register_sink(&ctx, &d.decl, &self.store_options).await?;
            }
        }
        // Views that read no stream (of constants, of sinks, of files),
        // each after the views it reads (a view dropped and declared again
        // comes after those that read it in declaration order).
        let mut order = Vec::new();
        for name in &names {
            self.view_order(name, &mut Vec::new(), &mut order)?;
        }
        for name in order {
            if let Some(view) = self.catalog.view(&name)
                && !self.reads_stream(&view.sql, &mut Vec::new())?
            {
                ctx.sql(&view.sql).await.map_err(|e| self.batch_error(&e))?;
            }
        }
        Ok(ctx)
    }

    /// Appends view `name` to `order` after the views it reads (depth
    /// first; `path`: the views on the way, to name a view that reads
    /// itself).
    fn view_order(&self, name: &str, path: &mut Vec<String>, order: &mut Vec<String>) -> Result<()> {
        let Some(view) = self.catalog.view(name) else {
            return Ok(());
        };
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if let Some(at) = path.iter().position(|n| n == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name.to_string());
            bail!(
                "view '{name}' reads itself ({}): DROP VIEW one of them and declare it again",
                cycle.join(" reads ")
            );
        }
        path.push(name.to_string());
        // (The view's text starts `CREATE VIEW name AS`: its own name is
        // no read.)
        for read in weir_sql::statement::identifiers(&view.sql)? {
            if read != name {
                self.view_order(&read, path, order)?;
            }
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }

    pub(super) async fn batch(&self, sql: &str) -> Result<()> {
        batch_set_quantifiers(sql)?;
        weir_sql::statement::check_distinct_from_in(sql)?;
        let ctx = self.batch_context(sql).await?;
        let df = match ctx.sql(sql).await {
            Ok(df) => df,
            Err(e) => return Err(self.batch_error_why(&e).await),
        };
        self.print_dataframe(df).await
    }

    /// [`Shell::batch_error`], and for a table on an object store
    /// (`s3://...`) that DataFusion did not find, why: DataFusion says "not
    /// found" whatever went wrong (the store refused the credentials, or
    /// could not be reached), so the folder is listed here to tell.
    pub(super) async fn batch_error_why(&self, e: &datafusion::error::DataFusionError) -> anyhow::Error {
        let Some(name) = missing_table(e).filter(|n| n.contains("://") && !n.starts_with("file://")) else {
            return self.batch_error(e);
        };
        let listed = match weir_storage::Location::open(
            &name,
            &self.store_options,
            weir_storage::location::Create::No,
        ) {
            Ok(loc) => loc.list("").await,
            Err(e) => Err(e),
        };
        match listed {
            Err(e) => anyhow!("cannot read '{name}': {e}"),
            Ok(files) if files.is_empty() => anyhow!("no such file or folder: '{name}'"),
            Ok(files) => no_file_to_read(
                &name,
                files
                    .iter()
                    .any(|f| f.location.as_ref().ends_with(SINK_OWNER_FILE)),
            ),
        }
    }

    /// A batch query's planning error as a user reads it: a table DataFusion
    /// did not find is a file or folder that does not exist, or a table
    /// that is not declared.
    pub(super) fn batch_error(&self, e: &datafusion::error::DataFusionError) -> anyhow::Error {
        let msg = strip_df(e);
        match missing_table(e) {
            Some(name) if name.contains('/') || name.contains('.') || name.contains("://") => {
                // DataFusion says "not found" of a folder with no file it can
                // read, and of a file of a kind it does not know, too.
                let local = std::path::Path::new(weir_storage::location::local_path(&name).unwrap_or(&name));
                if name.contains("://") && !name.starts_with("file://") || !local.exists() {
                    anyhow!("no such file or folder: '{name}'")
                } else if local.is_dir() {
                    no_file_to_read(&name, local.join(SINK_OWNER_FILE).exists())
                } else {
                    anyhow!(
                        "'{name}': not a file kind a query reads by its name (.parquet, .csv, .json, .arrow); \
                         declare it as a table (CREATE TABLE ... WITH ('format' = ...)) to read it"
                    )
                }
            }
            // Found by its name alone, so it was asked for with a schema
            // or catalog before it (`public.bids`), which the shell's
            // tables do not have.
            Some(name) if self.catalog.get(&name).is_some() || self.catalog.view(&name).is_some() => {
                anyhow!("'{name}' is declared here without a schema or catalog: name it as '{name}' alone")
            }
            Some(name) => {
                let declared: Vec<&str> = self.catalog.tables().map(|d| d.name()).collect();
                anyhow!(
                    "unknown table '{name}' ({}; a file or folder is a table too, in single quotes: 'out/t/')",
                    if declared.is_empty() {
                        "no tables are declared".to_string()
                    } else {
                        format!("declared: {}", declared.join(", "))
                    }
                )
            }
            None => anyhow!(msg),
        }
    }

    /// Prints a batch query's result as it streams in (CSV, JSON) or when it
    /// is complete (a table), with a spinner meanwhile on a terminal.
    pub(super) async fn print_dataframe(&self, df: DataFrame) -> Result<()> {
        // A batch query answers wrongly where a stream's is refused.
        if let Err(weir_sql::Error::Unsupported(why)) =
            weir_sql::planner::check_not_in_subqueries(df.logical_plan(), &|_| true)
        {
            bail!("{why}");
        }
        let df = batch::without_nested_key_filters(df).map_err(|e| anyhow!(strip_df(&e)))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let format = self.settings.format;
        let limit = (self.terminal_out && format == Format::Table && self.settings.max_rows > 0)
            .then_some(self.settings.max_rows);
        let mut spinner = QuerySpinner::start(stderr_is_terminal());
        let mut stream = match &self.cluster {
            None => df.execute_stream().await.map_err(|e| {
                let why = strip_df(&e);
                if why.contains("does not support logical expression InSubquery")
                    || why.contains("does not support logical expression Exists")
                {
                    anyhow!("{}", weir_sql::planner::IN_OR_EXISTS_LEFT)
                } else {
                    anyhow!(why)
                }
            })?,
            Some(url) => {
                // Planned here, run as one Ballista job; the result comes
                // back whole.
                let session = df.task_ctx().session_config().clone();
                let plan = df
                    .create_physical_plan()
                    .await
                    .map_err(|e| anyhow!(strip_df(&e)))?;
                let batches =
                    weir_cluster::execute(url, plan, &session, crate::CLUSTER_CONNECT_TIMEOUT).await?;
                let stream = futures::stream::iter(batches.into_iter().map(Ok));
                Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    Arc::clone(&schema),
                    stream,
                )) as datafusion::execution::SendableRecordBatchStream
            }
        };
        if format == Format::Csv {
            out(&print::csv_header(&schema)?)?;
        }
        let (mut kept, mut kept_rows, mut total) = (Vec::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| anyhow!(strip_df(&e)))?;
            let n = batch.num_rows();
            spinner.add_rows(n as u64);
            total += n;
            match format {
                Format::Table => {
                    if limit.is_none_or(|l| kept_rows < l) {
                        kept_rows += n;
                        kept.push(batch);
                    }
                }
                Format::Csv | Format::Json => {
                    let mut buf = Vec::new();
                    if format == Format::Csv {
                        print::csv_rows(&mut buf, &batch)?;
                    } else {
                        print::json_rows(&mut buf, &batch)?;
                    }
                    spinner.suspend(|| out(&String::from_utf8_lossy(&buf)))?;
                }
            }
        }
        drop(spinner);
        if format == Format::Table {
            out(&print::table(&schema, &kept, total, limit)?)?;
        }
        Ok(())
    }

    /// The job text of a statement: the `SET`s queries carry, the
    /// declarations it names, then it.
    pub(super) fn job_text(&self, statement: &str) -> Result<String> {
        let mut text = String::new();
        for (k, v) in &self.settings.job {
            text.push_str(&format!("SET '{k}' = '{}';\n", v.replace('\'', "''")));
        }
        text.push_str(&self.catalog.job_text(statement)?);
        Ok(text)
    }

    /// The job options of a query with this checkpoint.
    pub(super) fn job_options(&self, checkpoint: String) -> JobOptions {
        let threads = crate::resolve_threads(self.settings.threads);
        // What sources report between epochs (a Kafka broker out of
        // reach), on stderr as it happens, scrubbed of secrets.
        let scrub = self.redactor.clone();
        let notice: weir_engine::source::Notice = std::sync::Arc::new(move |m: &str| {
            errln!("weir: {}", scrub.scrub(m));
        });
        JobOptions {
            store_options: self.store_options.clone(),
            threads,
            notice: Some(notice),
            owner: weir_engine::LeaseOwner::this_process(crate::host_name()),
            ..JobOptions::new(checkpoint)
        }
    }

    /// Live results of a streaming `SELECT`, until its input is done (a
    /// bounded trigger) or Ctrl-C.
    pub(super) async fn live(&mut self, sql: &str) -> Result<()> {
        // `SELECT ... LIMIT n` over a stream is a peek, as in Flink's SQL
        // client: the first n rows, then the query stops.
        let (sql, limit) = match weir_sql::statement::peek_limit(sql)? {
            Some((query, n)) => (query, Some(n)),
            None => (sql, None),
        };
        let text = self.job_text(sql)?;
        let scratch = tempfile::Builder::new().prefix("weir-live-").tempdir()?;
        let (tx, mut rx) = mpsc::channel(16);
        let mut options = JobOptions {
            live: Some(tx),
            ..self.job_options(scratch.path().display().to_string())
        };
        if limit.is_some() {
            // A peek's first rows are the input's first, in its order: on
            // several threads an epoch's output comes in the order the
            // threads finish, which changed from run to run.
            options.threads = 1;
        }
        let open = async { Ok(StreamingJob::open(&text, options).await?) };
        let mut job = cancellable(self.interrupts.clone(), open).await?;
        let schema = job
            .live_schema()
            .ok_or_else(|| anyhow!("the live query has no output"))?;
        let mut table = LiveTable::new(&schema, self.settings.format)?;
        let (trigger, drain) = self.query_trigger();
        if self.terminal_out {
            errln!("live results: rows appear as their epochs commit; Ctrl-C stops");
        }
        out(&table.header()?)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        // However this function returns (an error printing, say), the query
        // does not outlive it.
        let mut run = AbortOnDrop(tokio::spawn(async move {
            let r = job.run(trigger, drain, stop_rx, &mut |_| {}).await;
            // Releases the scratch checkpoint and closes the live channel.
            let _ = job.close().await;
            r
        }));
        let mut irq = self.interrupts.clone();
        irq.mark_unchanged();
        let mut stopping = false;
        let mut limited = false;
        let ended = loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Some(live) => {
                        let mut text = String::new();
                        for b in &live.batches {
                            let left = limit.map_or(u64::MAX, |n| n.saturating_sub(table.rows()));
                            if left == 0 {
                                break;
                            }
                            let b = b.slice(0, b.num_rows().min(left.try_into().unwrap_or(usize::MAX)));
                            text.push_str(&table.batch(&b)?);
                        }
                        out(&text)?;
                        if limit.is_some_and(|n| table.rows() >= n) {
                            // Enough rows: the rest of the query is not wanted.
                            limited = true;
                            run.0.abort();
                            break (&mut run.0).await;
                        }
                    }
                    None => break (&mut run.0).await,
                },
                _ = irq.changed() => {
                    if stopping {
                        run.0.abort();
                        break (&mut run.0).await;
                    }
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
        };
        // On a terminal, write over the `^C` the terminal echoed.
        out(&format!(
            "{}{}",
            if self.terminal_out { "\r" } else { "" },
            table.footer()
        ))?;
        let rows = table.rows();
        let note = |how: &str| {
            format!(
                "({} row{}; {how})\n",
                print::group_digits(rows),
                if rows == 1 { "" } else { "s" }
            )
        };
        match ended {
            _ if limited => out(&note("LIMIT reached")),
            Ok(Ok(_)) if stopping => out(&note("stopped")),
            Ok(Ok(_)) => out(&note("the input is done")),
            Ok(Err(e)) => Err(e.into()),
            Err(j) if j.is_cancelled() => out(&note("stopped at once")),
            Err(j) => bail!("the live query stopped on an internal error: {j}"),
        }
    }

    pub(super) async fn insert(&mut self, sql: &str, name: &str, _query: &str) -> Result<()> {
        let name = name.to_string();
        if self.queries.is_running(&name) {
            bail!("query '{name}' is already running (STOP QUERY {name} first)");
        }
        if self.catalog.get(&name).is_none() {
            bail!(
                "unknown sink table '{name}': declare it first with CREATE TABLE {name} WITH \
                 ('connector' = 'files', 'path' = '...', 'format' = 'parquet')"
            );
        }
        let text = self.job_text(sql)?;
        let checkpoint = self.checkpoint_of(&name);
        // The checkpoint decides, by the same rules as `weir run`: a
        // compatible change goes on with its state, another is refused.
        let job = StreamingJob::open(&text, self.job_options(checkpoint.clone())).await?;
        for note in job.notes() {
            errln!("note: {}", self.redactor.scrub(note));
        }
        let resumed = job.last_committed();
        // What it uses, for DROP to refuse: the tables the job planned
        // (its sources, lookups, sinks, late-row and dead-letter tables;
        // a column named like a table is none), and the views its text
        // names.
        let mut reads: Vec<String> = job.tables().into_iter().collect();
        reads.extend(
            self.catalog
                .names_in(sql)?
                .into_iter()
                .filter(|n| self.catalog.view(n).is_some()),
        );
        let (trigger, drain) = self.query_trigger();
        self.queries
            .start(&name, checkpoint.clone(), job, trigger, drain)?;
        self.written.insert(name.clone());
        self.reads.insert(name.clone(), reads);
        out(&format!(
            "started query {name} (checkpoint {}{}); SHOW QUERIES shows its progress\n",
            self.redactor.scrub(&checkpoint),
            resumed.map_or(String::new(), |e| format!(", resuming after epoch {e}"))
        ))
    }

    pub(super) fn query_trigger(&self) -> (Trigger, bool) {
        let t = self.settings.trigger;
        (t, self.settings.drain && !matches!(t, Trigger::Interval(_)))
    }

    pub(super) async fn explain(&mut self, sql: &str, analyze: bool, inner: &str) -> Result<()> {
        use weir_sql::statement::Statement as S;
        let inner_statement = weir_sql::statement::classify(inner)?;
        let inner_kw = match &inner_statement {
            S::Insert { .. } => "INSERT",
            S::Query => "SELECT",
            _ => "",
        };
        let streaming = match inner_kw {
            "INSERT" => true,
            "SELECT" => matches!(self.kind_of_query(inner)?, QueryKind::Live),
            _ => false,
        };
        if !streaming {
            batch_set_quantifiers(sql)?;
            weir_sql::statement::check_distinct_from_in(sql)?;
            let ctx = self.batch_context(sql).await?;
            let df = match ctx.sql(sql).await {
                Ok(df) => df,
                Err(e) => return Err(self.batch_error_why(&e).await),
            };
            return self.print_dataframe(df).await;
        }
        if analyze {
            return self.explain_analyze(inner_statement, inner).await;
        }
        let text = self.job_text(inner)?;
        let scratch = tempfile::Builder::new().prefix("weir-explain-").tempdir()?;
        let mut options = JobOptions {
            explain_only: true,
            ..self.job_options(scratch.path().display().to_string())
        };
        let _receiver;
        if inner_kw != "INSERT" {
            let (tx, rx) = mpsc::channel(1);
            options.live = Some(tx);
            _receiver = rx;
        }
        let job = StreamingJob::open(&text, options).await?;
        out(&format!("{}\n", self.redactor.scrub(&job.explain())))
    }

    /// `EXPLAIN ANALYZE` of a streaming query: it runs on a throwaway
    /// checkpoint, its rows discarded (an `INSERT` writes nothing: its
    /// `SELECT` runs), for the input there now (`available-now`), or one
    /// epoch when the session's trigger is an interval; then its plan prints
    /// with each operator's rows and time.
    pub(super) async fn explain_analyze(
        &mut self,
        inner: weir_sql::statement::Statement,
        text: &str,
    ) -> Result<()> {
        let query = match &inner {
            weir_sql::statement::Statement::Insert { query, .. } => {
                if query.starts_with('(') {
                    bail!("INSERT INTO t (columns) is not supported: the sink takes the query's columns");
                }
                query.as_str()
            }
            _ => text,
        };
        let text = self.job_text(query)?;
        let scratch = tempfile::Builder::new().prefix("weir-explain-").tempdir()?;
        let (tx, mut rx) = mpsc::channel(16);
        let options = JobOptions {
            live: Some(tx),
            ..self.job_options(scratch.path().display().to_string())
        };
        let mut job = StreamingJob::open(&text, options).await?;
        let (trigger, drain) = match self.query_trigger() {
            (Trigger::Interval(_), _) => (Trigger::Once, false),
            bounded => bounded,
        };
        let (_stop_tx, stop_rx) = watch::channel(false);
        let drained = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let work = async {
            let summary = job.run(trigger, drain, stop_rx, &mut |_| {}).await?;
            Ok::<_, anyhow::Error>(summary)
        };
        let summary = cancellable(self.interrupts.clone(), work).await?;
        let mut plan = job.explain_analyze();
        if let weir_sql::statement::Statement::Insert {
            target: Some(target), ..
        } = &inner
        {
            // The job ran the INSERT's query alone: say so, not "SELECT".
            plan = plan.replacen(
                "== SELECT (live results)",
                &format!("== INSERT INTO {target} (its query run, nothing written)"),
                1,
            );
        }
        let _ = job.close().await;
        drained.abort();
        out(&format!(
            "{}\n({} epoch{}, {} rows in)\n",
            self.redactor.scrub(&plan),
            summary.epochs,
            if summary.epochs == 1 { "" } else { "s" },
            print::group_digits(summary.rows_in)
        ))
    }

    pub(super) fn show_queries(&self) -> Result<()> {
        let list = self.queries.list();
        if list.is_empty() && self.settings.format == Format::Table {
            return out("(no queries; INSERT INTO a sink starts one)\n");
        }
        let table = self.settings.format == Format::Table;
        let (schema, batch) = show_queries(&list, !table)?;
        let batch = self.scrub_batch(batch)?;
        self.print_rows(&schema, batch)?;
        if table {
            for q in &list {
                if let State::Failed(e) = &q.status.state {
                    out(&format!("{}: {}\n", q.name, self.redactor.scrub(e)))?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn stop_query(&mut self, name: &str) -> Result<()> {
        let Some(task) = self.queries.stop(name)? else {
            let state = self.queries.status(name).map(|s| s.state);
            return out(&format!(
                "query {name} is not running ({})\n",
                state.as_ref().map_or("unknown", State::name)
            ));
        };
        let mut irq = self.interrupts.clone();
        irq.mark_unchanged();
        tokio::select! {
            _ = task => {}
            _ = irq.changed() => {
                return out(&format!("query {name} goes on stopping after its current epoch\n"));
            }
        }
        let status = self.queries.status(name);
        match status.as_ref().map(|s| &s.state) {
            Some(State::Failed(e)) => bail!("query {name} failed while stopping: {e}"),
            _ => out(&format!(
                "stopped query {name}{}; INSERT it again to resume\n",
                committed_note(status.and_then(|s| s.committed))
            )),
        }
    }
}

/// The table a DataFusion planning error says it did not find.
fn missing_table(e: &datafusion::error::DataFusionError) -> Option<String> {
    strip_df(e)
        .strip_prefix("table '")
        .and_then(|rest| rest.split_once("' not found"))
        .map(|(name, _)| {
            name.strip_prefix("datafusion.public.")
                .unwrap_or(name)
                .to_string()
        })
}

/// Refuses a quoted path whose wildcards reach into subfolders (`'g/**/*.csv'`,
/// `'g/*/f.csv'`): DataFusion reads only the files directly in the folder
/// before the first wildcard, so such a glob would silently leave out every
/// file it matches in a subfolder.
pub(super) fn check_glob(name: &str) -> Result<()> {
    let path = name.split_once("://").map_or(name, |(_, rest)| rest);
    let wild = |part: &str| part.contains(['*', '?', '[']);
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts.pop().unwrap_or_default();
    if parts.iter().any(|p| wild(p)) || last.contains("**") {
        bail!(
            "'{name}': a wildcard matches the files of one folder only (such as 'logs/*.csv'); files in \
             subfolders are not read that way. Query each folder, or UNION ALL them"
        );
    }
    // A local folder of files of several kinds: DataFusion would read
    // those of the kind it saw first and silently leave the others.
    let local = weir_storage::location::local_path(name).unwrap_or(name);
    if !name.contains("://") || name.starts_with("file://") {
        let kinds: std::collections::BTreeSet<String> = std::fs::read_dir(local)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.starts_with(['.', '_']) || !e.file_type().is_ok_and(|t| t.is_file()) {
                    return None;
                }
                let ext = file.rsplit_once('.')?.1.to_ascii_lowercase();
                ["parquet", "csv", "json", "arrow", "avro"]
                    .contains(&ext.as_str())
                    .then_some(ext)
            })
            .collect();
        if kinds.len() > 1 {
            let kinds: Vec<String> = kinds.into_iter().map(|k| format!(".{k}")).collect();
            bail!(
                "'{name}' holds files of several kinds ({}); a folder is read as one kind. Name one kind \
                 with a wildcard, such as '{}/*{}'",
                kinds.join(", "),
                local.trim_end_matches('/'),
                kinds[0]
            );
        }
    }
    Ok(())
}

/// A local CSV folder (or `folder/*.csv`) whose files' headers differ:
/// DataFusion reads every file of a folder by position under one file's
/// header, so a file listing `n,id` where another lists `id,n` had its
/// values swapped into the other's columns, with no word. Refused, naming
/// two files that differ. (An object store's folder is not checked.)
pub(super) fn check_csv_headers(name: &str) -> Result<()> {
    // Only paths: a plain name is a declared table or view.
    if name.contains("://") && !name.starts_with("file://") || !name.contains(['/', '.']) {
        return Ok(());
    }
    let local = std::path::Path::new(weir_storage::location::local_path(name).unwrap_or(name));
    let (folder, pattern) = if local.is_dir() {
        (local.to_path_buf(), None)
    } else {
        let file = local.file_name().map(|f| f.to_string_lossy().into_owned());
        match (local.parent(), file) {
            (Some(parent), Some(file)) if file.contains(['*', '?']) && !file.contains('[') => {
                (parent.to_path_buf(), Some(file))
            }
            _ => return Ok(()),
        }
    };
    let mut files = Vec::new();
    csv_files(&folder, pattern.as_deref(), &mut files);
    files.sort();
    let mut first: Option<(std::path::PathBuf, Vec<String>)> = None;
    for file in files {
        let Some(header) = csv_header(&file) else { continue };
        match &first {
            None => first = Some((file, header)),
            Some((f0, h0)) if *h0 != header => {
                let shown = |f: &std::path::Path| f.strip_prefix(&folder).unwrap_or(f).display().to_string();
                bail!(
                    "'{name}': its CSV files list different columns ({} has {}; {} has {}), and a query over \
                     a folder reads every file by position under one file's header, so values would land in \
                     the wrong columns. Query the files one by one (SELECT ... FROM '{}' UNION ALL SELECT ... FROM \
                     '{}'), or give them one header",
                    shown(f0),
                    h0.join(","),
                    shown(&file),
                    header.join(","),
                    f0.display(),
                    file.display()
                );
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The `.csv` files in `folder` and its `key=value` subfolders (a query of
/// a folder reads those, and no other), those whose name matches
/// `pattern` (`*`, `?`) if given; hidden (`.`, `_`) ones left out.
fn csv_files(folder: &std::path::Path, pattern: Option<&str>, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if file.starts_with(['.', '_']) {
            continue;
        }
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && pattern.is_none() && file.contains('=') {
            csv_files(&e.path(), None, out);
        } else if kind.is_file()
            && file.to_ascii_lowercase().ends_with(".csv")
            && pattern.is_none_or(|p| wildcard_match(p.as_bytes(), file.as_bytes()))
        {
            out.push(e.path());
        }
    }
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], name) || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(a), Some(b)) if a == b => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// A CSV file's header: its first line's names, unquoted and trimmed
/// (`None` for an empty or unreadable file).
fn csv_header(file: &std::path::Path) -> Option<Vec<String>> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::open(file).ok()?.take(1 << 20))
        .read_line(&mut line)
        .ok()?;
    let line = line.trim_start_matches('\u{feff}').trim_end_matches(['\n', '\r']);
    (!line.is_empty()).then(|| {
        line.split(',')
            .map(|c| c.trim().trim_matches('"').to_string())
            .collect()
    })
}

/// [`weir_sql::statement::check_set_quantifiers_in`] for a batch query: its
/// reason alone (it is no stream's).
fn batch_set_quantifiers(sql: &str) -> Result<()> {
    match weir_sql::statement::check_set_quantifiers_in(sql) {
        Err(weir_sql::Error::Unsupported(why)) => bail!("{why}"),
        other => Ok(other?),
    }
}

/// The file a sink keeps in its folder to say which job writes it.
const SINK_OWNER_FILE: &str = weir_storage::SinkOwner::NAME;

/// Why a folder gave a query nothing to read: a sink's folder whose job
/// has committed epochs without a row (a window that has not closed) said
/// it had none "until its first epoch commits", which was not so.
fn no_file_to_read(name: &str, sink: bool) -> anyhow::Error {
    if sink {
        anyhow!(
            "'{name}' is a sink's folder with no rows yet (no epoch its job committed has written one), so its \
             columns are not known; query it once rows land"
        )
    } else {
        anyhow!(
            "'{name}' holds no file to read (no .parquet, .csv, .json or .arrow file; a sink's folder has \
             none until its job writes a row)"
        )
    }
}
