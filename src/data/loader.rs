//! The batch loader: a reader thread streams records in a seeded order, worker threads
//! decode and augment whole batches, and a bounded queue hands them out in order.
//!
//! Order of an epoch (a pure function of seed, epoch and the shard record counts):
//! this rank's shards (every `world_size`-th), shuffled, read one after another through
//! a tf.data-style shuffle buffer. Augmentation draws from an RNG keyed by (seed, epoch,
//! record index). So batches do not depend on the number of workers, and a [`Cursor`]
//! (epoch, batch) is enough to resume: the reader recomputes the order and skips the
//! records already handed out without reading their data.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::error::{DataError, OnBadRecord, Result};
use super::image::Image;
use super::preprocess::Preprocess;
use super::rng::{Purpose, Rng};

/// A batch of preprocessed images.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// NCHW, contiguous.
    pub images: Vec<f32>,
    /// [N, C, H, W]; N can be below the batch size (last batch, skipped records).
    pub shape: [usize; 4],
    /// 0-based class ids.
    pub labels: Vec<i64>,
    /// Global record index of each image.
    pub indices: Vec<u64>,
}

impl Batch {
    /// The batch as burn tensors on `device`: images `[N, C, H, W]` and 0-based labels `[N]`.
    pub fn to_tensors(
        &self,
        device: &burn::prelude::Device,
    ) -> (burn::Tensor<4>, burn::Tensor<1, burn::prelude::Int>) {
        use burn::prelude::{Tensor, TensorData};
        let images = Tensor::from_data(TensorData::new(self.images.clone(), self.shape), device);
        let labels = Tensor::from_data(
            TensorData::new(self.labels.clone(), [self.labels.len()]),
            device,
        );
        (images, labels)
    }
}

/// Position in the batch stream: the next batch to hand out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batch: u64,
}

impl Cursor {
    /// The cursor at `tenths` tenths of an epoch (the schedule's mini-epochs), rounding
    /// down to a batch boundary.
    pub fn at_tenths(tenths: u64, batches_per_epoch: u64) -> Cursor {
        Cursor {
            epoch: tenths / 10,
            batch: (tenths % 10) * batches_per_epoch / 10,
        }
    }

    /// Epochs elapsed, as a fraction (e.g. 2.3).
    pub fn epochs(&self, batches_per_epoch: u64) -> f64 {
        self.epoch as f64 + self.batch as f64 / batches_per_epoch.max(1) as f64
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer (at least `workers`).
    pub prefetch: usize,
    /// Shuffle shard order and pass records through the shuffle buffer.
    pub shuffle: bool,
    /// Records held by the shuffle buffer (as `tf.data.Dataset.shuffle`).
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// Drop the last, incomplete batch of each epoch.
    pub drop_last: bool,
    /// Go on to the next epoch at the end of one (training); otherwise stop.
    pub repeat: bool,
    /// This process reads shards `rank`, `rank + world_size`, ...
    pub rank: usize,
    pub world_size: usize,
    pub preprocess: Preprocess,
    pub on_bad_record: OnBadRecord,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            workers: 2,
            prefetch: 4,
            shuffle: false,
            shuffle_buffer: 1024,
            seed: 0,
            drop_last: false,
            repeat: false,
            rank: 0,
            world_size: 1,
            preprocess: Preprocess::default(),
            on_bad_record: OnBadRecord::Error,
        }
    }
}

impl LoaderConfig {
    /// Settings for training: shuffled, augmented, repeating, full batches only.
    pub fn train(batch_size: usize, image_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            seed,
            drop_last: true,
            repeat: true,
            preprocess: Preprocess {
                size: image_size,
                train: true,
                ..Preprocess::default()
            },
            ..LoaderConfig::default()
        }
    }

    /// Settings for evaluation: file order, centre crop, one pass.
    pub fn eval(batch_size: usize, image_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            preprocess: Preprocess {
                size: image_size,
                ..Preprocess::default()
            },
            ..LoaderConfig::default()
        }
    }
}

/// This rank's shards and records.
struct Layout {
    shards: Vec<usize>,
    records: u64,
}

/// One epoch's order: shards in reading order, and `order[t]` = stream position of the
/// record handed out t-th.
struct Plan {
    shards: Vec<usize>,
    order: Vec<u32>,
}

fn plan(layout: &Layout, cfg: &LoaderConfig, epoch: u64) -> Plan {
    let mut shards = layout.shards.clone();
    let n = layout.records as usize;
    let mut order: Vec<u32> = Vec::with_capacity(n);
    if !cfg.shuffle || n == 0 {
        order.extend(0..n as u32);
        return Plan { shards, order };
    }
    Rng::keyed(cfg.seed, Purpose::ShardOrder, epoch, 0).shuffle(&mut shards);
    // tf.data's shuffle: fill the buffer, then emit a random slot and refill it.
    let mut rng = Rng::keyed(cfg.seed, Purpose::ShuffleBuffer, epoch, 0);
    let cap = cfg.shuffle_buffer.max(1);
    let mut buf: Vec<u32> = (0..cap.min(n) as u32).collect();
    let mut next = buf.len() as u32;
    while !buf.is_empty() {
        let j = rng.below(buf.len());
        order.push(buf[j]);
        if (next as usize) < n {
            buf[j] = next;
            next += 1;
        } else {
            buf.swap_remove(j);
        }
    }
    Plan { shards, order }
}

/// A record on its way to a worker.
struct Item {
    global: u64,
    shard: usize,
    data: Result<Vec<u8>>,
}

struct Job {
    seq: u64,
    epoch: u64,
    next: Cursor,
    items: Vec<Item>,
}

struct Done {
    seq: u64,
    next: Cursor,
    result: Result<Batch>,
}

type SkipLog = Arc<Mutex<Vec<DataError>>>;

/// Iterator over batches; see the module docs.
pub struct Loader {
    results: Option<Receiver<Done>>,
    tickets: Option<SyncSender<()>>,
    threads: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Done>,
    next_seq: u64,
    cursor: Cursor,
    batches_per_epoch: u64,
    dataset: Arc<Dataset>,
    skipped: SkipLog,
}

impl Loader {
    /// Starts loading at `start` (use `Cursor::default()` for the beginning).
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig, start: Cursor) -> Result<Loader> {
        let fail = |m: &str| Err(DataError::Config(m.to_string()));
        if cfg.batch_size == 0 || cfg.workers == 0 || cfg.preprocess.size == 0 {
            return fail("batch_size, workers and preprocess.size must be positive");
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return fail("need rank < world_size");
        }
        let shards: Vec<usize> = (cfg.rank..dataset.shards().len())
            .step_by(cfg.world_size)
            .collect();
        let records: u64 = shards.iter().map(|&s| dataset.shards()[s].records).sum();
        if records == 0 || records > u64::from(u32::MAX) {
            return Err(DataError::Config(format!(
                "rank {} of {} has {records} records (need 1..2^32)",
                cfg.rank, cfg.world_size
            )));
        }
        let layout = Layout { shards, records };
        let bs = cfg.batch_size as u64;
        let batches_per_epoch = if cfg.drop_last {
            records / bs
        } else {
            records.div_ceil(bs)
        };
        if batches_per_epoch == 0 {
            return fail("fewer records than one batch, with drop_last");
        }
        if start.batch > batches_per_epoch {
            return Err(DataError::Config(format!(
                "cursor batch {} is past the epoch's {batches_per_epoch} batches",
                start.batch
            )));
        }
        let skipped = SkipLog::default();
        let prefetch = cfg.prefetch.max(cfg.workers);
        let (ticket_tx, ticket_rx) = sync_channel::<()>(prefetch);
        for _ in 0..prefetch {
            ticket_tx.send(()).expect("receiver alive");
        }
        let (job_tx, job_rx) = sync_channel::<Job>(cfg.workers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = sync_channel::<Done>(prefetch);
        let cfg = Arc::new(cfg);
        let mut threads = Vec::new();
        {
            let (ds, cfg) = (dataset.clone(), cfg.clone());
            threads.push(std::thread::spawn(move || {
                read_loop(
                    &ds,
                    &layout,
                    &cfg,
                    start,
                    batches_per_epoch,
                    &ticket_rx,
                    &job_tx,
                )
            }));
        }
        for _ in 0..cfg.workers {
            let (ds, cfg, jobs, done, log) = (
                dataset.clone(),
                cfg.clone(),
                job_rx.clone(),
                done_tx.clone(),
                skipped.clone(),
            );
            threads.push(std::thread::spawn(move || {
                work_loop(&ds, &cfg, &jobs, &done, &log)
            }));
        }
        Ok(Loader {
            results: Some(done_rx),
            tickets: Some(ticket_tx),
            threads,
            pending: BTreeMap::new(),
            next_seq: 0,
            cursor: start,
            batches_per_epoch,
            dataset,
            skipped,
        })
    }

    /// Where the next batch comes from; save it to resume later.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// Bad records skipped so far (with `OnBadRecord::Skip`), as messages naming file
    /// and record index, in file then index order.
    pub fn skipped(&self) -> Vec<String> {
        let log = self.skipped.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keyed: Vec<_> = (self.dataset.skipped_at_open().iter())
            .chain(log.iter())
            .map(|e| match e {
                DataError::Record { path, index, .. } => (path.clone(), *index, e.to_string()),
                other => (Default::default(), 0, other.to_string()),
            })
            .collect();
        keyed.sort();
        keyed.into_iter().map(|(_, _, m)| m).collect()
    }

    fn report_epoch_end(&self, epoch: u64) {
        let n = self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            + self.dataset.skipped_at_open().len();
        if n > 0 {
            tracing::warn!("end of epoch {epoch}: {n} bad records skipped so far");
        }
    }

    fn on_yield(&mut self, next: Cursor) {
        let finished = next.epoch != self.cursor.epoch || next.batch == self.batches_per_epoch;
        let epoch = self.cursor.epoch;
        self.cursor = next;
        if finished {
            self.report_epoch_end(epoch);
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        loop {
            if let Some(done) = self.pending.remove(&self.next_seq) {
                self.next_seq += 1;
                if let Some(t) = &self.tickets {
                    let _ = t.send(());
                }
                self.on_yield(done.next);
                return Some(done.result);
            }
            match self.results.as_ref()?.recv() {
                Ok(done) => {
                    self.pending.insert(done.seq, done);
                }
                Err(_) => {
                    // All threads ended. That is the normal end of a single pass, unless
                    // a thread died early.
                    self.results = None;
                    let panicked = self
                        .threads
                        .drain(..)
                        .filter_map(|t| t.join().err())
                        .count();
                    if panicked > 0 || self.cursor.batch < self.batches_per_epoch {
                        return Some(Err(DataError::Internal(format!(
                            "{panicked} loader threads panicked; stopped at {:?}",
                            self.cursor
                        ))));
                    }
                    return None;
                }
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing both ends unblocks the reader (tickets) and the workers (results).
        self.tickets = None;
        self.results = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Streams records in plan order and sends them to the workers batch by batch.
fn read_loop(
    ds: &Dataset,
    layout: &Layout,
    cfg: &LoaderConfig,
    start: Cursor,
    batches_per_epoch: u64,
    tickets: &Receiver<()>,
    jobs: &SyncSender<Job>,
) {
    let bs = cfg.batch_size as u64;
    let mut cursor = start;
    let mut seq = 0;
    loop {
        if cursor.batch >= batches_per_epoch {
            if !cfg.repeat {
                return;
            }
            cursor = Cursor {
                epoch: cursor.epoch + 1,
                batch: 0,
            };
        }
        let plan = plan(layout, cfg, cursor.epoch);
        let mut stream = Stream::new(ds, &plan, cursor.batch * bs);
        for b in cursor.batch..batches_per_epoch {
            if tickets.recv().is_err() {
                return;
            }
            let lo = b * bs;
            let hi = ((b + 1) * bs).min(layout.records);
            let items = (lo..hi)
                .map(|t| stream.take(plan.order[t as usize]))
                .collect();
            // The end of a repeating epoch is the start of the next one.
            let next = if b + 1 == batches_per_epoch && cfg.repeat {
                Cursor {
                    epoch: cursor.epoch + 1,
                    batch: 0,
                }
            } else {
                Cursor {
                    epoch: cursor.epoch,
                    batch: b + 1,
                }
            };
            let job = Job {
                seq,
                epoch: cursor.epoch,
                next,
                items,
            };
            seq += 1;
            if jobs.send(job).is_err() {
                return;
            }
        }
        cursor.batch = batches_per_epoch;
    }
}

/// Sequential reading of an epoch's records, holding those read ahead of their turn.
struct Stream<'a> {
    ds: &'a Dataset,
    shards: &'a [usize],
    /// Position (in hand-out order) of each stream record.
    emit_pos: Vec<u32>,
    /// Records before this hand-out position are never needed (resume).
    from: u64,
    shard_pos: usize,
    reader: Option<super::dataset::ShardReader>,
    in_shard: u64,
    seq: u32,
    held: HashMap<u32, Item>,
}

impl<'a> Stream<'a> {
    fn new(ds: &'a Dataset, plan: &'a Plan, from: u64) -> Self {
        let mut emit_pos = vec![0u32; plan.order.len()];
        for (t, &s) in plan.order.iter().enumerate() {
            emit_pos[s as usize] = t as u32;
        }
        Stream {
            ds,
            shards: &plan.shards,
            emit_pos,
            from,
            shard_pos: 0,
            reader: None,
            in_shard: 0,
            seq: 0,
            held: HashMap::new(),
        }
    }

    /// The record at stream position `s`, reading forward as needed.
    fn take(&mut self, s: u32) -> Item {
        loop {
            if let Some(item) = self.held.remove(&s) {
                return item;
            }
            self.advance();
        }
    }

    /// Reads (or skips, if already handed out before `from`) the next stream record.
    fn advance(&mut self) {
        let shard = loop {
            let shard = self.shards[self.shard_pos];
            if self.in_shard < self.ds.shards()[shard].records {
                break shard;
            }
            self.shard_pos += 1;
            self.in_shard = 0;
            self.reader = None;
        };
        let info = &self.ds.shards()[shard];
        let index = self.in_shard;
        let want = u64::from(self.emit_pos[self.seq as usize]) >= self.from;
        let data = match &mut self.reader {
            Some(r) => r.next(index, want),
            None => match self.ds.open_shard(shard) {
                Ok(r) => self.reader.insert(r).next(index, want),
                Err(e) => Err(e),
            },
        };
        if want {
            let item = Item {
                global: info.first_index + index,
                shard,
                data,
            };
            self.held.insert(self.seq, item);
        }
        self.in_shard += 1;
        self.seq += 1;
    }
}

/// Decodes and augments whole batches.
fn work_loop(
    ds: &Dataset,
    cfg: &LoaderConfig,
    jobs: &Mutex<Receiver<Job>>,
    done: &SyncSender<Done>,
    skipped: &SkipLog,
) {
    let mut img = Image::default();
    loop {
        let job = match jobs.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let (seq, next) = (job.seq, job.next);
        let result = make_batch(ds, cfg, job, &mut img, skipped);
        let out = Done { seq, next, result };
        if done.send(out).is_err() {
            return;
        }
    }
}

fn make_batch(
    ds: &Dataset,
    cfg: &LoaderConfig,
    job: Job,
    img: &mut Image,
    skipped: &SkipLog,
) -> Result<Batch> {
    let p = &cfg.preprocess;
    let len = p.image_len();
    let mut images = vec![0.0f32; job.items.len() * len];
    let mut labels = Vec::with_capacity(job.items.len());
    let mut indices = Vec::with_capacity(job.items.len());
    for item in job.items {
        let decoded = match item.data {
            Ok(raw) => ds.decode(item.shard, &raw, img).map_err(|reason| {
                let info = &ds.shards()[item.shard];
                DataError::record(&info.path, item.global - info.first_index, reason)
            }),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(label) => {
                let mut rng = Rng::keyed(cfg.seed, Purpose::Augment, job.epoch, item.global);
                let n = labels.len();
                p.apply(img, &mut rng, &mut images[n * len..(n + 1) * len]);
                labels.push(label);
                indices.push(item.global);
            }
            Err(e) => match cfg.on_bad_record {
                OnBadRecord::Error => return Err(e),
                OnBadRecord::Skip => {
                    ds.note_skipped(&e);
                    skipped
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(e)
                }
            },
        }
    }
    images.truncate(labels.len() * len);
    Ok(Batch {
        images,
        shape: [labels.len(), 3, p.size, p.size],
        labels,
        indices,
    })
}
