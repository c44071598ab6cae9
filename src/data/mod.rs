//! Training and evaluation data: TFRecord/`tf.train.Example` reading (TF-Slim ImageNet
//! layout), ImageFolder trees, JPEG/PNG decoding, preprocessing, and a deterministic,
//! resumable multi-threaded batch loader.

pub mod dataset;
pub mod error;
pub mod example;
pub mod folder;
pub mod image;
pub mod layout;
pub mod loader;
pub mod preprocess;
pub mod rng;
pub mod schema;
pub mod tfrecord;

pub use dataset::Dataset;
pub use error::{BadRecord, DataError, OnBadRecord};
pub use example::{Example, Feature};
pub use loader::{Batch, Cursor, Loader, LoaderConfig};
pub use preprocess::{EvalCrop, Normalization, Preprocess, Resize};
pub use schema::ExampleSchema;
pub use tfrecord::{Compression, RecordReader, RecordWriter};
