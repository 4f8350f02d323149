//! The shell's catalog: the `CREATE TABLE` statements typed so far.
//!
//! The engine runs jobs given as text, so the shell keeps each declaration
//! as typed and builds a query's job from the declarations it names plus the
//! query itself. The declarations go in name order, whatever order they were
//! typed in: a job's checkpoint belongs to its text (up to formatting), and
//! the same query typed in a later session must find its checkpoint again.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use weir_sql::{Job, JobKind, TableDecl};

/// A declared table.
#[derive(Clone)]
pub struct Declared {
    /// The parsed declaration.
    pub decl: TableDecl,
    /// The statement as typed, secrets included: it becomes part of job
    /// texts, and is never printed.
    pub sql: String,
}

impl std::fmt::Debug for Declared {
    /// The declaration without its text, which may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.decl.fmt(f)
    }
}

impl Declared {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.decl.name
    }
}

/// A declared view: `CREATE VIEW name AS SELECT ...` over streams.
#[derive(Clone)]
pub struct View {
    /// Its name.
    pub name: String,
    /// The statement as typed (it may name tables whose options hold
    /// secrets, but holds none itself).
    pub sql: String,
}

/// The declared tables and views of a session.
#[derive(Clone, Default)]
pub struct Catalog {
    tables: BTreeMap<String, Declared>,
    /// Views, in the order declared (a view may use those before it).
    views: Vec<View>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("tables", &self.tables)
            .field("views", &self.views.iter().map(|v| &v.name).collect::<Vec<_>>())
            .finish()
    }
}

impl Catalog {
    /// Declares a table from its `CREATE TABLE` statement.
    pub fn declare(&mut self, sql: &str) -> Result<&Declared> {
        let job = Job::parse_as(sql, JobKind::Declarations)?;
        let Some(decl) = job.tables.into_values().next() else {
            bail!("expected a CREATE TABLE statement");
        };
        if self.tables.contains_key(&decl.name) {
            bail!(
                "table '{}' is already declared (DROP TABLE {} first to declare it again)",
                decl.name,
                decl.name
            );
        }
        if self.view(&decl.name).is_some() {
            bail!(
                "'{}' is already declared, as a view (DROP VIEW {} first to declare a table of that name)",
                decl.name,
                decl.name
            );
        }
        let name = decl.name.clone();
        Ok(self.tables.entry(name).or_insert(Declared {
            decl,
            sql: sql.trim().to_string(),
        }))
    }

    /// Declares a view from its `CREATE VIEW` statement. Its query is
    /// planned when a statement that uses it runs.
    pub fn declare_view(&mut self, sql: &str) -> Result<&View> {
        let mut text = String::new();
        for name in self.names_in(sql)? {
            self.push_declaration(&name, &mut text);
        }
        text.push_str(sql.trim());
        text.push_str(";\n");
        let job = Job::parse_as(&text, JobKind::Declarations)?;
        let Some(view) = job.views.last() else {
            bail!("expected a CREATE VIEW statement");
        };
        let name = view.name.clone();
        if self.tables.contains_key(&name) || self.views.iter().any(|v| v.name == name) {
            bail!("'{name}' is already declared (DROP VIEW {name} first to declare it again)");
        }
        let view = View {
            name,
            sql: sql.trim().to_string(),
        };
        self.views.push(view);
        let Some(view) = self.views.last() else {
            bail!("the view was not kept");
        };
        Ok(view)
    }

    /// A declared view.
    pub fn view(&self, name: &str) -> Option<&View> {
        self.views.iter().find(|v| v.name == name)
    }

    /// Every declared view, in declaration order.
    pub fn views(&self) -> impl Iterator<Item = &View> {
        self.views.iter()
    }

    /// Forgets a declaration (the table's files stay).
    pub fn drop_table(&mut self, name: &str) -> Option<Declared> {
        self.tables.remove(name)
    }

    /// Forgets a view.
    pub fn drop_view(&mut self, name: &str) -> bool {
        let before = self.views.len();
        self.views.retain(|v| v.name != name);
        self.views.len() != before
    }

    /// A declared table.
    pub fn get(&self, name: &str) -> Option<&Declared> {
        self.tables.get(name)
    }

    /// Every declared table, by name.
    pub fn tables(&self) -> impl Iterator<Item = &Declared> {
        self.tables.values()
    }

    /// The declared tables and views a statement names (as identifiers,
    /// outside strings and comments), and those the views it names use in
    /// turn, by name.
    pub fn names_in(&self, sql: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        let mut todo = vec![sql.to_string()];
        while let Some(text) = todo.pop() {
            for n in weir_sql::statement::identifiers(&text)? {
                if names.contains(&n) {
                    continue;
                }
                if let Some(t) = self.tables.get(&n) {
                    // The tables its options send rows to (late rows, bad
                    // records) belong to the job too: without their
                    // declarations it was refused ("no such table").
                    for key in ["late.sink", "dead_letter"] {
                        if let Some(target) = t.decl.options.get(key).filter(|v| !v.is_empty()) {
                            // As a name in SQL: bare, folded as the
                            // declaration's was, unless it needs quotes.
                            let plain = target.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                            todo.push(match plain {
                                true => target.to_string(),
                                false => format!("\"{}\"", target.replace('"', "\"\"")),
                            });
                        }
                    }
                    names.push(n);
                } else if let Some(v) = self.view(&n) {
                    todo.push(v.sql.clone());
                    names.push(n);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn push_declaration(&self, name: &str, text: &mut String) {
        if let Some(t) = self.tables.get(name) {
            text.push_str(&t.sql);
            text.push_str(";\n");
        }
    }

    /// The job text of a statement: the declarations it names (tables in
    /// name order, then views in the order declared), then it.
    pub fn job_text(&self, statement: &str) -> Result<String> {
        let names = self.names_in(statement)?;
        let mut text = String::new();
        for name in &names {
            self.push_declaration(name, &mut text);
        }
        for v in self.views.iter().filter(|v| names.contains(&v.name)) {
            text.push_str(&v.sql);
            text.push_str(";\n");
        }
        text.push_str(statement.trim());
        text.push_str(";\n");
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIDS: &str = "CREATE TABLE bids (auction BIGINT, date_time TIMESTAMP(3), \
        WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) \
        WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet')";
    const OUT: &str = "CREATE TABLE Out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet')";
    const OTHER: &str =
        "CREATE TABLE other (x INT) WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'csv')";

    #[test]
    fn a_job_holds_the_declarations_its_query_names_in_name_order() {
        let mut c = Catalog::default();
        c.declare(OUT).unwrap();
        c.declare(OTHER).unwrap();
        c.declare(BIDS).unwrap();
        let insert = "INSERT INTO out SELECT auction, 'other' AS other_text -- other\n FROM bids";
        assert_eq!(c.names_in(insert).unwrap(), vec!["bids", "out"]);
        let text = c.job_text(insert).unwrap();
        assert_eq!(text, format!("{BIDS};\n{OUT};\n{insert};\n"));
        // Typed in another order, the same query gets the same job.
        let mut d = Catalog::default();
        d.declare(BIDS).unwrap();
        d.declare(OUT).unwrap();
        assert_eq!(d.job_text(insert).unwrap(), text);
        assert_eq!(
            c.names_in("SELECT * FROM \"Out\" JOIN OTHER").unwrap(),
            vec!["other"],
            "a quoted name keeps its case"
        );
    }

    #[test]
    fn a_view_brings_the_tables_it_uses() {
        let mut c = Catalog::default();
        c.declare(BIDS).unwrap();
        c.declare(OUT).unwrap();
        c.declare_view("CREATE VIEW cheap AS SELECT * FROM bids WHERE auction < 10")
            .unwrap();
        c.declare_view("CREATE VIEW cheaper AS SELECT * FROM cheap WHERE auction < 5")
            .unwrap();
        let text = c.job_text("INSERT INTO out SELECT auction FROM cheaper").unwrap();
        assert_eq!(
            text,
            format!(
                "{BIDS};\n{OUT};\nCREATE VIEW cheap AS SELECT * FROM bids WHERE auction < 10;\n\
                 CREATE VIEW cheaper AS SELECT * FROM cheap WHERE auction < 5;\n\
                 INSERT INTO out SELECT auction FROM cheaper;\n"
            )
        );
        Job::parse(&text).unwrap();
        let e = c
            .declare_view("CREATE VIEW cheap AS SELECT 1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already declared"), "{e}");
        assert!(c.drop_view("cheaper") && !c.drop_view("cheaper"));
    }

    #[test]
    fn a_table_is_declared_once_until_dropped() {
        let mut c = Catalog::default();
        c.declare(BIDS).unwrap();
        let err = c.declare(BIDS).unwrap_err().to_string();
        assert!(
            err.contains("already declared") && err.contains("DROP TABLE bids"),
            "{err}"
        );
        assert!(c.drop_table("bids").is_some());
        c.declare(BIDS).unwrap();
        let err = c
            .declare("CREATE TABLE x (a INT, WATERMARK FOR a AS a)")
            .unwrap_err();
        assert!(err.to_string().contains("TIMESTAMP"), "{err}");
    }

    #[test]
    fn secrets_of_declarations_are_not_in_debug_output() {
        let mut c = Catalog::default();
        c.declare(
            "CREATE TABLE s WITH ('connector'='files','path'='s3://b/x/','format'='parquet',\
             's3.secret_access_key'='hunter2-long')",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
