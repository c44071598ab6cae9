//! Which `tf.train.Example` features hold the image and its label (TF-Slim's ImageNet
//! layout by default), and turning an Example into a labelled encoded image.

use serde::{Deserialize, Serialize};

use super::error::BadRecord;
use super::example::{Example, Feature};

/// Feature keys and label convention. Defaults are TF-Slim's `build_imagenet_data.py`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleSchema {
    pub image_key: String,
    pub label_key: String,
    /// Subtracted from the stored label: Slim stores 1..=1000 with 0 = background, so 1.
    pub label_offset: i64,
    /// When set, labels outside `0..num_classes` (after the offset) are bad records.
    pub num_classes: Option<i64>,
    /// Optional declared size, checked against the decoded image when present.
    pub height_key: Option<String>,
    pub width_key: Option<String>,
    /// Optional metadata, returned when present.
    pub synset_key: Option<String>,
    pub filename_key: Option<String>,
}

impl Default for ExampleSchema {
    fn default() -> Self {
        ExampleSchema {
            image_key: "image/encoded".into(),
            label_key: "image/class/label".into(),
            label_offset: 1,
            num_classes: None,
            height_key: Some("image/height".into()),
            width_key: Some("image/width".into()),
            synset_key: Some("image/class/synset".into()),
            filename_key: Some("image/filename".into()),
        }
    }
}

/// An encoded image with its 0-based label, as read from one record.
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledImage {
    pub encoded: Vec<u8>,
    pub label: i64,
    /// Declared (height, width), when the schema names those features.
    pub declared_size: Option<(i64, i64)>,
    pub synset: Option<String>,
    pub filename: Option<String>,
}

fn take(ex: &mut Example, key: &str) -> Result<Feature, BadRecord> {
    ex.features
        .remove(key)
        .ok_or_else(|| BadRecord::MissingFeature(key.to_string()))
}

fn single_int(ex: &mut Example, key: &str) -> Result<i64, BadRecord> {
    match take(ex, key)? {
        Feature::Int64(v) if v.len() == 1 => Ok(v[0]),
        Feature::Int64(v) if v.is_empty() => Err(BadRecord::MissingFeature(key.to_string())),
        other => Err(bad_shape(key, &other, "one int64")),
    }
}

fn bad_shape(key: &str, got: &Feature, want: &str) -> BadRecord {
    let got = match got {
        Feature::Bytes(v) => format!("{} bytes values", v.len()),
        Feature::Float(v) => format!("{} float values", v.len()),
        Feature::Int64(v) => format!("{} int64 values", v.len()),
        Feature::Empty => "no value list".to_string(),
    };
    BadRecord::BadFeature {
        key: key.to_string(),
        reason: format!("expected {want}, found {got}"),
    }
}

impl ExampleSchema {
    /// Parses a serialized Example and extracts image bytes and the 0-based label.
    pub fn extract(&self, record: &[u8]) -> Result<LabeledImage, BadRecord> {
        let mut ex = Example::parse(record).map_err(BadRecord::Example)?;
        let encoded = match take(&mut ex, &self.image_key)? {
            Feature::Bytes(mut v) if v.len() == 1 => v.pop().expect("one value"),
            other => return Err(bad_shape(&self.image_key, &other, "one bytes value")),
        };
        let raw = single_int(&mut ex, &self.label_key)?;
        let label = raw.wrapping_sub(self.label_offset);
        if label < 0 || self.num_classes.is_some_and(|n| label >= n) {
            return Err(BadRecord::LabelOutOfRange {
                label,
                raw,
                offset: self.label_offset,
                num_classes: self.num_classes.unwrap_or(i64::MAX),
            });
        }
        let declared_size = match (&self.height_key, &self.width_key) {
            (Some(h), Some(w)) if ex.features.contains_key(h) && ex.features.contains_key(w) => {
                Some((single_int(&mut ex, h)?, single_int(&mut ex, w)?))
            }
            _ => None,
        };
        let mut text = |key: &Option<String>| match key.as_ref().map(|k| ex.features.remove(k)) {
            Some(Some(Feature::Bytes(v))) if v.len() == 1 => {
                Some(String::from_utf8_lossy(&v[0]).into_owned())
            }
            _ => None,
        };
        Ok(LabeledImage {
            encoded,
            label,
            declared_size,
            synset: text(&self.synset_key),
            filename: text(&self.filename_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: Option<i64>) -> Vec<u8> {
        let mut ex =
            Example::default().with("image/encoded", Feature::Bytes(vec![b"jpg".to_vec()]));
        if let Some(l) = label {
            ex = ex.with("image/class/label", Feature::Int64(vec![l]));
        }
        ex.encode()
    }

    #[test]
    fn slim_labels_are_shifted() {
        let s = ExampleSchema::default();
        let r = s.extract(&record(Some(1))).unwrap();
        assert_eq!(
            (r.label, r.encoded.as_slice(), r.declared_size),
            (0, &b"jpg"[..], None)
        );
    }

    #[test]
    fn missing_and_out_of_range_labels_are_errors() {
        let s = ExampleSchema {
            num_classes: Some(10),
            ..Default::default()
        };
        let e = s.extract(&record(None)).unwrap_err().to_string();
        assert!(e.contains("missing feature \"image/class/label\""), "{e}");
        assert!(s.extract(&record(Some(0))).is_err(), "background label");
        assert!(s.extract(&record(Some(11))).is_err());
        assert_eq!(s.extract(&record(Some(10))).unwrap().label, 9);
    }
}
