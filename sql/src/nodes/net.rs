//! `ChangelogNet`: signed rows into a changelog, per epoch.

use super::*;

/// The sign column a [`ChangelogNetNode`]'s input ends with.
pub const SIGN_COLUMN: &str = "__weir_sign";

/// Turns an epoch's *signed* rows (the values, then [`SIGN_COLUMN`]: how
/// many times the row is added, negative for taken back) into changelog
/// rows: equal rows are netted, then each row whose net is negative is
/// emitted as `-D` (once per unit), before each whose net is positive as
/// `+I`. A join whose input is a changelog joins signed rows (the sign of
/// a pair is the product of its rows' signs) and ends with this node. The
/// netting is per epoch and per partition: equal rows come from the same
/// shard of the operator below, which is keyed on part of their values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChangelogNetNode {
    /// The signed rows.
    pub input: LogicalPlan,
    schema: DFSchemaRef,
}

impl ChangelogNetNode {
    /// The node over `input`, whose last column is the sign.
    pub fn try_new(input: LogicalPlan) -> Result<Self> {
        let s = input.schema();
        let n = s.fields().len();
        if n == 0 || s.field(n - 1).name() != SIGN_COLUMN {
            return plan_err!("a changelog net needs its input's last column to be {SIGN_COLUMN}");
        }
        let mut fields: Vec<(Option<TableReference>, Arc<Field>)> = (0..n - 1)
            .map(|i| {
                let (q, f) = s.qualified_field(i);
                (q.cloned(), Arc::clone(f))
            })
            .collect();
        fields.push((None, Arc::new(Field::new(PLAN_OP_COLUMN, DataType::Utf8, false))));
        let schema = DFSchema::new_with_metadata(fields, Default::default())?;
        Ok(Self {
            input,
            schema: Arc::new(schema),
        })
    }
}

impl PartialOrd for ChangelogNetNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.input.partial_cmp(&other.input)
    }
}

impl UserDefinedLogicalNodeCore for ChangelogNetNode {
    fn name(&self) -> &str {
        "ChangelogNet"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ChangelogNet: signed rows netted per epoch, emitted as -D (taken back) then +I (added)"
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        Self::try_new(inputs.swap_remove(0))
    }
}
