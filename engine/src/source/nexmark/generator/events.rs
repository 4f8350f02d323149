//! Building one batch of events: each event's fields drawn from its own
//! random stream, written straight into column builders; channels and URLs as
//! views into shared buffers.

use super::*;

/// The channels and their fixed URLs: the 4 hot ones first, then the
/// 10,000 others. Columns declared `VARCHAR` (Utf8View) take their channel
/// and URL as views into one shared buffer each, not as copies.
pub(super) struct Channels {
    names: Vec<String>,
    urls: Vec<String>,
    name_data: Buffer,
    pub(super) name_views: Vec<u128>,
    url_data: Buffer,
    pub(super) url_views: Vec<u128>,
}

/// Seeds for the channel URLs (Flink draws them from an unseeded Random).
const HOT_URL_SEED: i64 = -1;
const CHANNEL_URL_SEED: i64 = 1 << 40;

fn base_url(rng: &mut JavaRandom) -> String {
    let mut s = b"https://www.nexmark.com/".to_vec();
    for _ in 0..3 {
        next_string_with(rng, 5, b'_', &mut s);
        s.push(b'/');
    }
    s.extend_from_slice(b"item.htm?query=1");
    String::from_utf8_lossy(&s).into_owned()
}

/// The strings one after another, and a view of each into them, checked
/// (so that arrays of any of these views over this buffer are valid); no
/// views if the check fails, and then columns are made as copies.
fn views_of(strings: &[String]) -> (Buffer, Vec<u128>) {
    let mut data = Vec::new();
    let views: Vec<u128> = strings
        .iter()
        .map(|s| {
            let offset = data.len() as u32;
            data.extend_from_slice(s.as_bytes());
            make_view(s.as_bytes(), 0, offset)
        })
        .collect();
    let data = Buffer::from_vec(data);
    let valid = StringViewArray::try_new(ScalarBuffer::from(views.clone()), vec![data.clone()], None).is_ok();
    (data, if valid { views } else { Vec::new() })
}

pub(super) fn channels() -> &'static Channels {
    static CHANNELS: OnceLock<Channels> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let hot = (0..HOT_CHANNELS.len()).map(|i| {
            let url = base_url(&mut JavaRandom::new(HOT_URL_SEED - i as i64));
            (HOT_CHANNELS[i].to_string(), url)
        });
        let others = (0..CHANNELS_NUMBER).map(|c| {
            let mut rng = JavaRandom::new(CHANNEL_URL_SEED + i64::from(c));
            let mut url = base_url(&mut rng);
            if rng.next_int_below(10) > 0 {
                url.push_str(&format!("&channel_id={}", c.reverse_bits().wrapping_abs()));
            }
            (format!("channel-{c}"), url)
        });
        let (names, urls): (Vec<String>, Vec<String>) = hot.chain(others).unzip();
        let (name_data, name_views) = views_of(&names);
        let (url_data, url_views) = views_of(&urls);
        Channels {
            names,
            urls,
            name_data,
            name_views,
            url_data,
            url_views,
        }
    })
}

/// A string column being built.
struct TextBuf {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl TextBuf {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    #[inline]
    fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> Result<StringArray> {
        Ok(StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.values),
            None,
        )?)
    }
}

enum ColBuf {
    Int(Vec<i64>),
    Ts(Vec<i64>),
    Text(TextBuf),
    /// Indices into the channel table (`channel` or `url` as views).
    Channel(Vec<u32>),
    /// A price column's uniform draws, made prices all at once when the
    /// batch is finished ([`prices_of`]).
    Price(Vec<f64>),
}

/// The columns of one output batch, for the columns a query reads.
pub(super) struct Builder {
    table: NexmarkTable,
    cols: Vec<Option<ColBuf>>,
    wanted: Vec<bool>,
    /// Columns made as views into the channel table.
    as_channel: Vec<bool>,
    /// Rows per batch to make room for.
    capacity: usize,
    /// The last RNG step any wanted column needs: draws stop there.
    last_step: u8,
    /// Strings that must be drawn (for the RNG's sake, or for a length) but
    /// are not wanted.
    scratch: Vec<u8>,
    /// Rows added since the last `finish`.
    pub(super) rows: usize,
}

impl Builder {
    pub(super) fn new(table: NexmarkTable, wanted: &[bool], as_channel: &[bool], capacity: usize) -> Self {
        let steps = table.steps();
        let last_step = wanted
            .iter()
            .zip(steps)
            .filter(|(w, _)| **w)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        let mut b = Self {
            table,
            cols: Vec::new(),
            wanted: wanted.to_vec(),
            as_channel: as_channel.to_vec(),
            capacity,
            last_step,
            scratch: Vec::new(),
            rows: 0,
        };
        b.cols = b.fresh_columns();
        b
    }

    /// Empty columns for the wanted columns, with room for a batch.
    fn fresh_columns(&self) -> Vec<Option<ColBuf>> {
        let table = self.table;
        let capacity = self.capacity;
        let text_bytes = |col: usize| -> usize {
            match (table, col) {
                (NexmarkTable::Bid, B_URL) => 64,
                (NexmarkTable::Bid, B_EXTRA) => 72,
                (NexmarkTable::Auction, A_EXTRA) => 360,
                (NexmarkTable::Auction, A_DESCRIPTION) => 50,
                (NexmarkTable::Person, P_EXTRA) => 140,
                _ => 16,
            }
        };
        table
            .columns()
            .iter()
            .enumerate()
            .map(|(i, (_, t))| {
                self.wanted[i].then(|| match t {
                    Text if self.as_channel[i] => ColBuf::Channel(Vec::with_capacity(capacity)),
                    Int64 if table == NexmarkTable::Bid && i == B_PRICE => {
                        ColBuf::Price(Vec::with_capacity(capacity))
                    }
                    Int64 => ColBuf::Int(Vec::with_capacity(capacity)),
                    Timestamp => ColBuf::Ts(Vec::with_capacity(capacity)),
                    Text => ColBuf::Text(TextBuf::with_capacity(capacity, capacity * text_bytes(i))),
                })
            })
            .collect()
    }

    #[inline]
    fn int(&mut self, col: usize, v: i64) {
        if let Some(ColBuf::Int(b) | ColBuf::Ts(b)) = &mut self.cols[col] {
            b.push(v);
        }
    }

    /// Writes a string column with `f` (into the column, or into scratch
    /// when the column is not wanted); returns the string's length.
    #[inline]
    fn text(&mut self, col: usize, f: impl FnOnce(&mut Vec<u8>)) -> usize {
        match &mut self.cols[col] {
            Some(ColBuf::Text(t)) => {
                let before = t.values.len();
                f(&mut t.values);
                t.end_row();
                t.values.len() - before
            }
            _ => {
                self.scratch.clear();
                f(&mut self.scratch);
                self.scratch.len()
            }
        }
    }

    /// Writes a channel's name or URL (`which`) to a column.
    #[inline]
    fn channel(&mut self, col: usize, pick: u32, which: fn(&Channels) -> &Vec<String>) {
        match &mut self.cols[col] {
            Some(ColBuf::Channel(v)) => v.push(pick),
            Some(ColBuf::Text(t)) => {
                t.values
                    .extend_from_slice(which(channels())[pick as usize].as_bytes());
                t.end_row();
            }
            _ => {}
        }
    }

    #[inline]
    fn wants(&self, col: usize) -> bool {
        self.cols[col].is_some()
    }

    pub(super) fn person(&mut self, cfg: &NexmarkConfig, id: u64, ts: i64) {
        let e = id as i64;
        self.int(P_ID, last_base0_person_id(e) + FIRST_PERSON_ID);
        self.int(P_DATE_TIME, ts);
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let name = self.text(P_NAME, |out| {
            out.extend_from_slice(
                FIRST_NAMES[rng.next_int_below(FIRST_NAMES.len() as i32) as usize].as_bytes(),
            );
            out.push(b' ');
            out.extend_from_slice(
                LAST_NAMES[rng.next_int_below(LAST_NAMES.len() as i32) as usize].as_bytes(),
            );
        });
        // Each later field draws after this one: stop at the last one wanted
        // (a query of `id, name` skips the e-mail's and card's draws).
        if self.last_step < 2 {
            return;
        }
        let email = self.text(P_EMAIL, |out| {
            next_string(&mut rng, 7, out);
            out.push(b'@');
            next_string(&mut rng, 5, out);
            out.extend_from_slice(b".com");
        });
        if self.last_step < 3 {
            return;
        }
        let card = self.text(P_CARD, |out| {
            for i in 0..4 {
                if i > 0 {
                    out.push(b' ');
                }
                // Four digits, zero-padded (`{d:04}` without formatting machinery).
                let d = rng.next_int_below(10_000) as u32;
                out.extend_from_slice(&[
                    b'0' + (d / 1000 % 10) as u8,
                    b'0' + (d / 100 % 10) as u8,
                    b'0' + (d / 10 % 10) as u8,
                    b'0' + (d % 10) as u8,
                ]);
            }
        });
        if self.last_step < 4 {
            return;
        }
        let city = self.text(P_CITY, |out| {
            out.extend_from_slice(US_CITIES[rng.next_int_below(US_CITIES.len() as i32) as usize].as_bytes())
        });
        if self.last_step < 5 {
            return;
        }
        let state = self.text(P_STATE, |out| {
            out.extend_from_slice(US_STATES[rng.next_int_below(US_STATES.len() as i32) as usize].as_bytes())
        });
        if self.wants(P_EXTRA) {
            let size = 8 + (name + email + card + city + state) as i32;
            self.text(P_EXTRA, |out| next_extra(&mut rng, size, AVG_PERSON_BYTES, out));
        }
    }

    pub(super) fn auction(&mut self, cfg: &NexmarkConfig, id: u64, ts: i64) {
        let e = id as i64;
        self.int(A_ID, last_base0_auction_id(e) + FIRST_AUCTION_ID);
        self.int(A_DATE_TIME, ts);
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let seller = if rng.next_int_below(HOT_SELLERS_RATIO) > 0 {
            (last_base0_person_id(e) / HOT_BLOCK) * HOT_BLOCK
        } else {
            next_base0_person_id(e, &mut rng)
        };
        self.int(A_SELLER, seller + FIRST_PERSON_ID);
        if self.last_step < 2 {
            return;
        }
        self.int(
            A_CATEGORY,
            FIRST_CATEGORY_ID + i64::from(rng.next_int_below(NUM_CATEGORIES)),
        );
        if self.last_step < 3 {
            return;
        }
        let initial_bid = next_price(&mut rng);
        self.int(A_INITIAL_BID, initial_bid);
        if self.last_step < 4 {
            return;
        }
        // An auction lasts on average as long as it takes to start the next
        // `numInFlightAuctions` auctions.
        let events_for_auctions = (NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION) / AUCTION_PROPORTION;
        let horizon = cfg.timestamp_ms(id + events_for_auctions) - ts;
        let length = 1 + rng.next_long_below((horizon * 2).max(1));
        self.int(A_EXPIRES, ts + length);
        if self.last_step < 5 {
            return;
        }
        let name = self.text(A_ITEM_NAME, |out| next_string(&mut rng, 20, out));
        if self.last_step < 6 {
            return;
        }
        let desc = self.text(A_DESCRIPTION, |out| next_string(&mut rng, 100, out));
        if self.last_step < 7 {
            return;
        }
        self.int(A_RESERVE, initial_bid + next_price(&mut rng));
        if self.wants(A_EXTRA) {
            let size = (8 + name + desc + 8 * 5) as i32;
            self.text(A_EXTRA, |out| next_extra(&mut rng, size, AVG_AUCTION_BYTES, out));
        }
    }

    #[inline]
    pub(super) fn bid(&mut self, cfg: &NexmarkConfig, id: u64) {
        let e = id as i64;
        if self.wants(B_DATE_TIME) {
            self.int(B_DATE_TIME, cfg.timestamp_ms(id));
        }
        if self.last_step == 0 {
            return;
        }
        let mut rng = cfg.rng(id);
        let auction = if rng.next_int_below(HOT_AUCTION_RATIO) > 0 {
            (last_base0_auction_id(e) / HOT_BLOCK) * HOT_BLOCK
        } else {
            next_base0_auction_id(e, &mut rng)
        };
        self.int(B_AUCTION, auction + FIRST_AUCTION_ID);
        if self.last_step < 2 {
            return;
        }
        let bidder = if rng.next_int_below(HOT_BIDDERS_RATIO) > 0 {
            // The second of the block, so hot bidders and hot sellers differ.
            (last_base0_person_id(e) / HOT_BLOCK) * HOT_BLOCK + 1
        } else {
            next_base0_person_id(e, &mut rng)
        };
        self.int(B_BIDDER, bidder + FIRST_PERSON_ID);
        if self.last_step < 3 {
            return;
        }
        let draw = rng.next_double();
        if let Some(ColBuf::Price(draws)) = &mut self.cols[B_PRICE] {
            draws.push(draw);
        }
        if self.last_step < 4 {
            return;
        }
        let pick = if rng.next_int_below(HOT_CHANNELS_RATIO) > 0 {
            rng.next_int_below(HOT_CHANNELS.len() as i32) as u32
        } else {
            HOT_CHANNELS.len() as u32 + rng.next_int_below(CHANNELS_NUMBER) as u32
        };
        self.channel(B_CHANNEL, pick, |c| &c.names);
        self.channel(B_URL, pick, |c| &c.urls);
        if self.wants(B_EXTRA) {
            self.text(B_EXTRA, |out| next_extra(&mut rng, 8 * 4, AVG_BID_BYTES, out));
        }
    }

    /// The batch of the rows so far, as `outputs` lists them; resets.
    pub(super) fn finish(
        &mut self,
        outputs: &[(usize, DataType)],
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let fresh = self.fresh_columns();
        let mut arrays: Vec<Option<ArrayRef>> = Vec::with_capacity(fresh.len());
        for (i, col) in std::mem::replace(&mut self.cols, fresh).into_iter().enumerate() {
            arrays.push(match col {
                None => None,
                Some(ColBuf::Int(v)) => Some(Arc::new(Int64Array::from(v))),
                Some(ColBuf::Price(draws)) => {
                    let mut prices = Vec::with_capacity(draws.len());
                    prices_of(&draws, &mut prices);
                    Some(Arc::new(Int64Array::from(prices)))
                }
                Some(ColBuf::Ts(v)) => Some(Arc::new(TimestampMillisecondArray::from(v))),
                Some(ColBuf::Text(t)) => Some(Arc::new(t.finish()?)),
                Some(ColBuf::Channel(picks)) => {
                    let ch = channels();
                    let (data, views) = match self.table.columns()[i].0 {
                        "url" => (&ch.url_data, &ch.url_views),
                        _ => (&ch.name_data, &ch.name_views),
                    };
                    let views: Vec<u128> = picks.iter().map(|&p| views[p as usize]).collect();
                    // SAFETY: every view is one of the table's, which
                    // `channels()` validated against this same buffer; a
                    // view array is valid when each of its views is.
                    Some(Arc::new(unsafe {
                        StringViewArray::new_unchecked(ScalarBuffer::from(views), vec![data.clone()], None)
                    }))
                }
            });
        }
        let columns = outputs
            .iter()
            .map(|(col, to)| {
                let a = arrays[*col].clone().ok_or_else(|| {
                    Error::Config(format!(
                        "nexmark {}: column {} was not generated",
                        self.table.name(),
                        self.table.columns()[*col].0
                    ))
                })?;
                convert(a, to)
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &options,
        )?)
    }
}
