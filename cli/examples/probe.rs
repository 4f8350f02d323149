use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser};
fn main() {
    for sql in [
        "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))",
        "CREATE TABLE hot WITH ('connector' = 'files', 'path' = 'out/')",
        "CREATE TABLE b (a BIGINT, ts TIMESTAMP(3), s VARCHAR) WITH ('connector' = 'files')",
        "INSERT INTO hot SELECT a FROM b",
        "SELECT a FROM b EMIT ON WINDOW CLOSE",
    ] {
        match Parser::parse_sql(&GenericDialect {}, sql) {
            Ok(s) => println!("OK {sql}\n  {:?}\n", s),
            Err(e) => println!("ERR {sql}\n  {e}\n"),
        }
    }
}
