//! The shell's own commands: backslash commands, `SET`, and the listings
//! (`\d`, `SHOW TABLES`, `DESCRIBE`).

use super::*;

pub(super) const HELP: &str = "\
Statements end with ';' and may span lines:
  CREATE TABLE t (...) WITH (...)   declare a source or a sink
  DROP TABLE t                      forget a declaration (its files stay)
  INSERT INTO sink SELECT ...       start a streaming query in the background
  SELECT ... FROM source            live results as windows close, until Ctrl-C
  SELECT ... FROM sink | 'path/'    a batch query over the committed Parquet files
  EXPLAIN statement                 its plan (the engine's, for streaming queries)
  SHOW QUERIES                      background queries: state, epoch, rows, bad rows, rate, watermark, state
  STOP QUERY name                   stop a query once its current epoch commits
  DESCRIBE t                        a table's columns, watermark and options
  SET name = value                  trigger (1s, available-now, once), drain, threads, state.ttl,
                                    window.max_windows_per_row, checkpoint_dir, metrics (a port:
                                    Prometheus metrics at /metrics), ...; SET alone lists them
Commands:
  \\d [table]                 tables and queries, or one table
  \\format [table|csv|json]   how results print
  \\maxrows N                 rows a table shows on a terminal (0: all)
  \\timing [on|off]           how long each statement takes
  \\?                         this help
  \\q                         leave: running queries stop after their current epoch,
                             and resume from their checkpoints when INSERTed again
Tab completes; Up and Down recall earlier statements; Ctrl-C cancels; Ctrl-D leaves.";

impl Shell {
    pub(super) async fn command(&mut self, text: &str) -> Result<Flow> {
        let mut parts = text.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg = parts.next();
        match cmd {
            "\\q" => return Ok(Flow::Quit),
            "\\?" | "\\h" | "\\help" => out(&format!("{HELP}\n"))?,
            "\\d" | "\\dt" | "\\d+" => match arg {
                None => self.list_tables().await?,
                Some(t) => {
                    self.describe(&normalize_ident(t.trim_matches('"'), t.starts_with('"')))
                        .await?
                }
            },
            "\\timing" => {
                self.settings.timing = match arg {
                    None => !self.settings.timing,
                    Some("on") => true,
                    Some("off") => false,
                    Some(other) => bail!("\\timing takes on or off, not '{other}'"),
                };
                out(&format!(
                    "Timing is {}.\n",
                    if self.settings.timing { "on" } else { "off" }
                ))?;
            }
            "\\format" => {
                if let Some(name) = arg {
                    self.settings.format = Format::parse(name)
                        .ok_or_else(|| anyhow!("\\format takes table, csv or json, not '{name}'"))?;
                }
                out(&format!("Output format is {}.\n", self.settings.format.name()))?;
            }
            "\\maxrows" => {
                let n = arg.ok_or_else(|| anyhow!("\\maxrows takes a number of rows (0: all)"))?;
                self.settings.max_rows = n
                    .parse()
                    .map_err(|_| anyhow!("\\maxrows takes a number of rows (0: all), not '{n}'"))?;
                match self.settings.max_rows {
                    0 => out("Tables show every row.\n")?,
                    n => out(&format!("Tables show at most {n} rows on a terminal.\n"))?,
                }
            }
            "\\x" => bail!(
                "\\x (expanded rows) is not here; \\format json prints each row as one object on a line of its own"
            ),
            "\\l" | "\\dn" => bail!("there are no databases or schemas here; \\d lists the tables"),
            other => bail!("unknown command {other} (\\? lists the commands)"),
        }
        Ok(Flow::Continue)
    }

    /// `SET key = value` (the settings `weir_sql::settings` lists, shared
    /// with job files), or `SET` alone to list them.
    pub(super) fn set(&mut self, sql: &str) -> Result<()> {
        let Some((key, value)) = weir_sql::settings::parse_set(sql)? else {
            bail!("expected SET 'key' = 'value'");
        };
        match key.as_str() {
            "checkpoint_dir" if value.trim().is_empty() => {
                bail!(
                    "SET checkpoint_dir takes a folder or URL (e.g. '/data/weir-checkpoints'), not an empty value"
                )
            }
            "checkpoint_dir" => self.settings.checkpoint_dir = value,
            "trigger" => self.settings.trigger = parse_trigger(&value)?,
            "drain" => self.settings.drain = value == "true",
            "threads" => {
                self.settings.threads = value
                    .parse()
                    .map_err(|_| anyhow!("SET threads: '{value}' is not a whole number (0: one per CPU)"))?
            }
            "metrics" => return self.serve_metrics(&value),
            // Settings a query's job text carries (`state.ttl`, ...).
            _ => {
                self.settings.job.insert(key, value);
            }
        }
        out("SET\n")
    }

    /// `SET metrics = 'ADDR'`: serves the background queries' metrics at
    /// `http://ADDR/metrics` (replacing an earlier server); `off` stops.
    fn serve_metrics(&mut self, value: &str) -> Result<()> {
        self.metrics_server = None;
        self.settings.metrics = "off".into();
        if value.eq_ignore_ascii_case("off") {
            return out("SET (metrics off)\n");
        }
        let server = crate::metrics::Server::start(value, self.queries.metrics(), self.redactor.clone())?;
        let url = server.url();
        self.settings.metrics = server.addr().to_string();
        self.metrics_server = Some(server);
        out(&format!("SET (metrics at {url})\n"))
    }

    /// The value of each setting, in the order `weir_sql::settings` lists them.
    pub(super) fn setting_values(&self) -> Vec<(&'static str, String)> {
        let s = &self.settings;
        weir_sql::settings::SETTINGS
            .iter()
            .map(|d| {
                let v = match d.name {
                    "checkpoint_dir" => s.checkpoint_dir.clone(),
                    "trigger" => trigger_text(s.trigger),
                    "drain" => s.drain.to_string(),
                    "threads" => match s.threads {
                        0 => format!("0 ({} CPUs)", crate::resolve_threads(0)),
                        n => n.to_string(),
                    },
                    "metrics" => s.metrics.clone(),
                    other => s.job.get(other).cloned().unwrap_or_else(|| d.default.to_string()),
                };
                (d.name, v)
            })
            .collect()
    }

    pub(super) fn list_settings(&self) -> Result<()> {
        let rows = self.setting_values();
        let help: Vec<&str> = weir_sql::settings::SETTINGS.iter().map(|d| d.help).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("meaning", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
                Arc::new(StringArray::from_iter_values(help)),
            ],
        )?;
        // A value may hold a credential (a checkpoint_dir URL's user info).
        let batch = self.scrub_batch(batch)?;
        self.print_rows(&schema, batch)
    }

    pub(super) async fn list_tables(&self) -> Result<()> {
        let tables: Vec<&Declared> = self.catalog.tables().collect();
        if tables.is_empty() && self.catalog.views().next().is_none() && self.queries.list().is_empty() {
            return out("(no tables; CREATE TABLE declares one)\n");
        }
        let query_state = |name: &str| {
            self.queries
                .status(name)
                .map_or(String::new(), |s| s.state.name().to_string())
        };
        // name, kind, format, path, watermark, query
        let mut rows: Vec<[String; 6]> = tables
            .iter()
            .map(|d| {
                [
                    d.name().to_string(),
                    if self.is_sink(d) { "sink" } else { "source" }.to_string(),
                    d.decl.options.get("format").unwrap_or("").to_string(),
                    d.decl.options.redacted().get("path").cloned().unwrap_or_default(),
                    d.decl.watermark.as_ref().map(watermark_text).unwrap_or_default(),
                    query_state(d.name()),
                ]
            })
            .collect();
        rows.extend(self.catalog.views().map(|v| {
            [
                v.name.clone(),
                "view".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]
        }));
        let names = ["name", "kind", "format", "path", "watermark", "query"];
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let columns = (0..names.len())
            .map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].clone()))) as _)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let batch = self.scrub_batch(batch)?;
        self.print_rows(&schema, batch)
    }

    pub(super) async fn describe(&self, name: &str) -> Result<()> {
        if let Some(v) = self.catalog.view(name) {
            return out(&format!("View {name}\n{};\n", self.redactor.scrub(&v.sql)));
        }
        let Some(d) = self.catalog.get(name) else {
            let names: Vec<&str> = self.catalog.tables().map(|d| d.name()).collect();
            bail!(
                "no table '{name}' is declared{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (tables: {})", names.join(", "))
                }
            );
        };
        let sink = self.is_sink(d);
        let mut text = format!("{} {name}\n", if sink { "Sink" } else { "Source" });
        // A sink without declared columns has those of its committed files
        // (looked up on local folders only: a remote store may be slow to ask).
        let local = d.decl.options.get("path").is_some_and(|p| !p.contains("://"));
        let columns = match &d.decl.schema {
            Some(s) => Some((Arc::clone(s), "")),
            None if local => batch::sink_schema(&d.decl, &self.store_options)
                .await
                .ok()
                .map(|s| (s, " (from its committed files)")),
            None => None,
        };
        match columns {
            Some((schema, note)) => {
                let cols = Arc::new(Schema::new(vec![
                    Field::new("column", DataType::Utf8, false),
                    Field::new("type", DataType::Utf8, false),
                    Field::new("nullable", DataType::Utf8, false),
                ]));
                let batch = RecordBatch::try_new(
                    Arc::clone(&cols),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            schema.fields().iter().map(|f| f.name().clone()),
                        )),
                        // The types as declared (`TIMESTAMP(3)`), else as SQL names them.
                        Arc::new(StringArray::from_iter_values(
                            schema.fields().iter().enumerate().map(|(i, f)| {
                                d.decl
                                    .column_types
                                    .get(i)
                                    .filter(|_| note.is_empty())
                                    .cloned()
                                    .unwrap_or_else(|| weir_sql::catalog::sql_type_name(f.data_type()))
                            }),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            schema
                                .fields()
                                .iter()
                                .map(|f| if f.is_nullable() { "yes" } else { "no" }),
                        )),
                    ],
                )?;
                let rendered = print::table(&cols, &[batch], schema.fields().len(), None)?;
                // The row count says nothing here.
                let rendered: Vec<&str> = rendered.lines().filter(|l| !l.starts_with('(')).collect();
                if !note.is_empty() {
                    text.push_str(&format!("Columns{note}:\n"));
                }
                text.push_str(&rendered.join("\n"));
                text.push('\n');
            }
            None => text.push_str("Columns: those of the query that writes it (none committed yet)\n"),
        }
        if let Some(w) = &d.decl.watermark {
            text.push_str(&format!(
                "Watermark: WATERMARK FOR {} AS {}\n",
                w.column,
                watermark_text(w)
            ));
        }
        text.push_str("Options:\n");
        for (k, v) in d.decl.options.redacted() {
            text.push_str(&format!("  '{k}' = '{v}'\n"));
        }
        if let Some(s) = self.queries.status(name) {
            text.push_str(&format!(
                "Query: {name} ({}, checkpoint {})\n",
                s.state.name(),
                self.checkpoint_of(name)
            ));
        }
        out(&self.redactor.scrub(&text))
    }
}
